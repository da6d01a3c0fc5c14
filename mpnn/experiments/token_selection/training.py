"""Training and the sweep: the training recipe (all-token warm-up, then keep ratios in turn with annealed Gumbel
noise), one model per seed evaluated at every inference setting, and the per-seed accuracies."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mpnn.infra import determinism
from mpnn.infra.train import History, fit, fusable
from mpnn.tokens import TokenViT, ViTConfig, evaluate_settings, keep_count, parse_setting, token_schedule

from .data import Splits, relative_flops


def warmup_cosine(total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor of step ``t``: linear warm-up over ``w = max(1, T // 20)`` steps times a cosine
    decay, ``min(1, (t + 1) / w) * (1 + cos(pi * min(t, T) / T)) / 2``."""
    warm = max(1, total_steps // 20)
    return lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(t, total_steps) / total_steps))


def selection_schedule(total_steps: int, train_rhos: Sequence[float], noise: tuple[float, float],
                       full_tokens_fraction: float) -> Callable[[int], tuple[float, float]]:
    """``step -> (rho, sigma)``: the first ``n_full = floor(full_tokens_fraction * T)`` steps keep every token
    (a scorer on untrained features has nothing to rank); then step ``t`` keeps ``train_rhos[t % len]`` and
    the Gumbel noise scale goes linearly from ``noise[0]`` to ``noise[1]``,
    ``sigma = noise[0] + (noise[1] - noise[0]) * (t - n_full) / max(1, T - n_full - 1)``."""
    if not 0 <= full_tokens_fraction < 1:
        raise ValueError(f"full_tokens_fraction must be in [0, 1), got {full_tokens_fraction}")
    if len(noise) != 2 or min(noise) < 0:
        raise ValueError(f"noise must be (start, end) Gumbel noise scales >= 0, got {noise}")
    n_full = int(full_tokens_fraction * total_steps)

    def at(step: int) -> tuple[float, float]:
        if step < n_full:
            return 1.0, noise[0]
        f = (step - n_full) / max(1, total_steps - n_full - 1)
        return float(train_rhos[step % len(train_rhos)]), noise[0] + (noise[1] - noise[0]) * f
    return at


def train(model: TokenViT, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int,
          lr: float, train_rhos: Sequence[float] = (1.0,), tau: float = 1.0,
          noise: tuple[float, float] = (1.0, 1.0), full_tokens_fraction: float = 0.0, seed: int = 0,
          how: str = "auto", on_step: Callable[[int], None] | None = None, progress: str | None = None) -> History:
    """Cross-entropy with fused AdamW (weight decay 0.05), :func:`warmup_cosine` learning rate, and the keep
    ratio and Gumbel noise of every step from :func:`selection_schedule` (one model serves every rho).
    ``how``: the training path of the selection ("auto" = the mask, "gather_st" = gathered kept tokens,
    :class:`mpnn.tokens.TokenViT`); ``on_step(step)`` runs before every step (checkpoint evaluations)."""
    for rho in train_rhos:
        keep_count(model.config.n_tokens, rho)  # validates
    total = epochs * math.ceil(len(images) / batch_size)
    plan = selection_schedule(total, train_rhos, noise, full_tokens_fraction)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, fused=fusable(model))

    def loss_fn(batch, step):
        if on_step is not None:
            on_step(step)
        rho, sigma = plan(step)
        return F.cross_entropy(model(batch[0], rho=rho, tau=tau, noise=sigma, how=how), batch[1])
    return fit(model, loss_fn, (images, labels), optimizer, epochs=epochs, batch_size=batch_size, seed=seed,
               schedule=warmup_cosine(total), progress=progress)


@dataclass
class SeedRuns:
    """One row per seed and setting (accuracy, relative FLOPs, ...) and the trained models."""

    sweep: pd.DataFrame
    models: list[TokenViT]


def run_seeds(data: Splits, config: ViTConfig, seeds: Sequence[int], settings: Sequence[tuple[str, dict]], *,
              epochs: int, batch_size: int, lr: float, train_rhos: Sequence[float], full_tokens_fraction: float,
              noise: tuple[float, float], device) -> SeedRuns:
    """For every seed: seed everything, :func:`train` once, evaluate every setting on the test images in one
    pass (:func:`mpnn.tokens.evaluate_settings`)."""
    records, models = [], []
    for s in tqdm(seeds, desc="seeds"):
        determinism.seed_everything(s)
        model = TokenViT(config).to(device)
        train(model, data.X, data.Y, epochs=epochs, batch_size=batch_size, lr=lr, train_rhos=train_rhos,
              full_tokens_fraction=full_tokens_fraction, noise=noise, seed=s)
        models.append(model)
        accs = evaluate_settings(model, data.XT, data.YT, [kw for _, kw in settings])
        for (method, kw), acc in zip(settings, accs):
            rho, r, _ = parse_setting(kw)
            records.append({"seed": s, "method": method, "rho": rho, "r": r, "accuracy": acc,
                            "relative FLOPs": relative_flops(config, kw),
                            "tokens in last block": token_schedule(config, rho=rho, r=r)[-1]})
    sweep = pd.DataFrame(records)
    sweep["predicted speed-up"] = 1 / sweep["relative FLOPs"]
    return SeedRuns(sweep, models)


def summary_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy, relative FLOPs and predicted speed-up over seeds per setting."""
    return sweep.groupby(["method", "rho", "r"], sort=False)[["accuracy", "relative FLOPs", "predicted speed-up"]].mean()


def per_seed(sweep: pd.DataFrame, method: str, **match) -> pd.Series:
    """Accuracy per seed of ``method`` at the setting ``match`` (e.g. ``rho=0.5``), indexed by seed."""
    d = sweep[sweep.method == method]
    for column, value in match.items():
        d = d[d[column] == value]
    return d.set_index("seed")["accuracy"]
