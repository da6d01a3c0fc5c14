"""Training and the threshold sweep: both exits trained jointly per seed, each seed's operating threshold
chosen on the validation images, and the numbers the seed-level claims are decided on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mpnn.early_exit import (
    EarlyExitConfig,
    EarlyExitNet,
    choose_threshold,
    exit_costs,
    exit_logits,
    exit_loss,
    full_cost,
    normalised_entropy,
    predicted_speedup,
    sweep_metrics,
)
from mpnn.infra import determinism
from mpnn.infra.train import History, fit, fusable
from mpnn.runtime import stats

from .data import Splits


def train(model: EarlyExitNet, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int,
          lr: float, exit_weights: Sequence[float], seed: int, progress: str | None = None) -> History:
    """Both exits trained jointly on :func:`mpnn.early_exit.exit_loss` (``sum_i w_i CE_i``) with fused Adam."""
    if len(exit_weights) != model.n_exits:
        raise ValueError(f"exit_weights needs one weight per exit ({model.n_exits}), got {list(exit_weights)}")
    weights = torch.tensor(exit_weights, dtype=images.dtype, device=images.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=fusable(model))
    loss_fn = lambda batch, step: exit_loss(model(batch[0]), batch[1], weights)
    return fit(model, loss_fn, (images, labels), optimizer, epochs=epochs, batch_size=batch_size, seed=seed,
               progress=progress)


@dataclass
class SeedRuns:
    """What the seeds leave: the sweep (one row per seed and threshold), one row per seed at its operating
    threshold, the trained models, and the last seed's exit-1 entropies on the test images."""

    sweep: pd.DataFrame
    per_seed: pd.DataFrame
    models: list[EarlyExitNet]
    last_entropy: torch.Tensor


def sweep_records(model: EarlyExitNet, test: dict, thresholds: Sequence[float], seed: int) -> list[dict]:
    """One row per threshold: test accuracy, exit-1 fraction, relative FLOPs and predicted speed-up."""
    frac = test["exit_fractions"].double()                             # (T, 2)
    speed_pred = predicted_speedup(model, frac)
    return [{"seed": seed, "threshold": t, "accuracy": test["accuracy"][i].item(),
             "exit 1 fraction": frac[i, 0].item(), "relative FLOPs": 1 / speed_pred[i].item(),
             "predicted speed-up": speed_pred[i].item()} for i, t in enumerate(thresholds)]


def evaluate_seed(model: EarlyExitNet, data: Splits, thresholds: Sequence[float], tolerance: float,
                  sensitivity_tolerance: float, seed: int):
    """Both exits' logits on validation and test images (one pass), the validation-chosen threshold ``T*``
    (:func:`mpnn.early_exit.choose_threshold`; also at ``sensitivity_tolerance``) and the test numbers there.

    Returns (sweep rows, the seed's row, exit-1 entropies of the test images). "exit 1 accuracy on leavers"
    is exit 1's accuracy on the samples whose entropy is below ``max(T*, thresholds[1])``."""
    n_val = len(data.XV)
    outs = exit_logits(model, torch.cat([data.XV, data.XT]))        # [(n_val + n_test, 10)] * 2
    val = sweep_metrics([o[:n_val] for o in outs], data.YV, thresholds)
    test_outs = [o[n_val:] for o in outs]
    test = sweep_metrics(test_outs, data.YT, thresholds)
    last_val = float(val["exit_accuracy"][-1])
    i_star = choose_threshold(val["accuracy"], last_val, tolerance)
    i_half = choose_threshold(val["accuracy"], last_val, sensitivity_tolerance)
    records = sweep_records(model, test, thresholds, seed)
    H1 = normalised_entropy(test_outs[0])
    leave = H1 < max(thresholds[i_star], thresholds[1])
    correct1 = (test_outs[0].argmax(-1) == data.YT).float()
    row = {"seed": seed, "exit 1 accuracy": test["exit_accuracy"][0].item(),
           "exit 2 accuracy": test["exit_accuracy"][1].item(), "T*": thresholds[i_star],
           "accuracy at T*": test["accuracy"][i_star].item(),
           "T* (tolerance margin/2)": thresholds[i_half],
           "accuracy at T* (margin/2)": test["accuracy"][i_half].item(),
           "relative FLOPs at T*": records[i_star]["relative FLOPs"],
           "exit 1 accuracy on leavers": correct1[leave].mean().item() if leave.any() else float("nan")}
    return records, row, H1


def run_seeds(data: Splits, config: EarlyExitConfig, seeds: Sequence[int], *, epochs: int, batch_size: int,
              lr: float, exit_weight: float, thresholds: Sequence[float], threshold_tolerance: float,
              accuracy_margin: float, device) -> SeedRuns:
    """For every seed: seed everything, train (:func:`train`, exit weights ``(exit_weight, 1)``), evaluate
    (:func:`evaluate_seed`, ``T*`` at ``threshold_tolerance`` and, as a sensitivity check, at half the margin)."""
    if sorted(thresholds) != list(thresholds):
        raise ValueError("thresholds must be sorted in increasing order")
    if not 0 <= threshold_tolerance < accuracy_margin:
        raise ValueError("threshold_tolerance must be in [0, accuracy_margin)")
    records, rows, models = [], [], []
    for s in tqdm(seeds, desc="seeds"):
        determinism.seed_everything(s)
        model = EarlyExitNet(config).to(device)
        history = train(model, data.X, data.Y, epochs=epochs, batch_size=batch_size, lr=lr,
                        exit_weights=(exit_weight, 1.0), seed=s)
        models.append(model)
        seed_records, row, H1 = evaluate_seed(model, data, thresholds, threshold_tolerance, accuracy_margin / 2, s)
        records += seed_records
        rows.append(row | {"final loss": float(np.mean(history.loss[-20:].double().numpy()))})
    per_seed = pd.DataFrame(rows)
    per_seed["drop at T*"] = per_seed["exit 2 accuracy"] - per_seed["accuracy at T*"]
    per_seed["drop at T* (margin/2)"] = per_seed["exit 2 accuracy"] - per_seed["accuracy at T* (margin/2)"]
    return SeedRuns(pd.DataFrame(records), per_seed, models, H1)


def seed_claims(per_seed: pd.DataFrame, model: EarlyExitNet) -> dict:
    """The numbers the three seed-level claims are decided on, each a 95% CI over seeds ``(mean, low, high)``.

    * ``flops``: FLOPs spent at ``T*`` relative to the plain network, bounded by what a sample leaving at
      exit 1 and at exit 2 costs (:func:`mpnn.early_exit.exit_costs`);
    * ``drop`` and ``drop_half``: exit 2's test accuracy minus the accuracy at ``T*`` (and at the ``T*`` chosen
      with half the margin as tolerance), a difference, so unbounded;
    * ``gap``: exit 1's accuracy on the samples that leave at ``T*`` minus on all samples (unbounded).
    """
    costs = (exit_costs(model) / full_cost(model)).tolist()
    gap = per_seed["exit 1 accuracy on leavers"] - per_seed["exit 1 accuracy"]
    return {"flops": stats.mean_ci(per_seed["relative FLOPs at T*"], bounds=(costs[0], costs[1])),
            "flops_bounds": tuple(costs),
            "drop": stats.mean_ci(per_seed["drop at T*"]), "drop_values": per_seed["drop at T*"].tolist(),
            "drop_half": stats.mean_ci(per_seed["drop at T* (margin/2)"]),
            "gap": stats.mean_ci(gap), "gap_values": gap.tolist(), "n": len(per_seed)}
