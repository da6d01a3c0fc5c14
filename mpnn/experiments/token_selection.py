"""The token-selection chapter: MNIST splits, the training recipe (all-token warm-up, then keep ratios in
turn with annealed Gumbel noise), the sweep over seeds and inference settings, the latency measurements its
timing claim calls, and the tables and figures it shows.

The mechanism (the ViT, learned selection, ToMe merging, FLOP counts, one-pass evaluation) is :mod:`mpnn.tokens`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import altair as alt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mpnn.data.mnist import load_mnist, to_tensor
from mpnn.infra import determinism
from mpnn.infra.clock import interleaved_samples, median
from mpnn.infra.train import History, fit, fusable
from mpnn.runtime import plots, stats, verdicts
from mpnn.runtime.timing import paired_speedup
from mpnn.tokens import TokenViT, ViTConfig, evaluate_settings, keep_count, parse_setting, token_schedule, vit_flops

SELECTION, RANDOM, MERGING = "selection (learned)", "selection (random)", "merging (ToMe)"
REDUCTION = "token reduction"          # the legend title of the figures that tell the methods apart


# ---------------------------------------------------------------- data and settings

@dataclass
class Splits:
    """Standardised images (N, 1, 28, 28) and labels for training and test; ``test_images``: raw uint8 digits."""

    X: torch.Tensor
    Y: torch.Tensor
    XT: torch.Tensor
    YT: torch.Tensor
    test_images: torch.Tensor


def load_splits(n_train: int, n_test: int, device) -> Splits:
    """The chapter's MNIST splits on ``device`` (:func:`mpnn.data.mnist.to_tensor`, standard scale)."""
    train_x, train_y = load_mnist("train")
    test_x, test_y = load_mnist("test")
    image = lambda images: to_tensor(images, scale="standard", shape="image", device=device)
    return Splits(image(train_x[:n_train]), train_y[:n_train].to(device), image(test_x[:n_test]),
                  test_y[:n_test].to(device), test_x[:n_test])


def inference_settings(rhos: Sequence[float], merge_rs: Sequence[int], rho_claim: float) -> list[tuple[str, dict]]:
    """(method, setting) pairs: learned selection at every rho, random selection at every rho < 1 (the
    control), ToMe at every r > 0."""
    if rho_claim not in rhos or 1.0 not in rhos or 0 not in merge_rs:
        raise ValueError("rhos must contain 1.0 and rho_claim, and merge_rs must contain 0")
    return ([(SELECTION, dict(rho=r)) for r in rhos] + [(RANDOM, dict(rho=r, selector="random")) for r in rhos if r < 1]
            + [(MERGING, dict(r=r)) for r in merge_rs if r > 0])


def relative_flops(config: ViTConfig, setting: dict) -> float:
    """FLOPs of ``setting`` relative to all tokens (:func:`mpnn.tokens.vit_flops`)."""
    rho, r, _ = parse_setting(setting)
    return vit_flops(config, rho=rho, r=r) / vit_flops(config)


def flops_table(config: ViTConfig, settings: Sequence[tuple[str, dict]]) -> pd.DataFrame:
    """Tokens entering each block and relative FLOPs of every setting (random selection costs as learned)."""
    return pd.DataFrame([{"method": m, "setting": str(kw),
                          "tokens per block": token_schedule(config, rho=kw.get("rho", 1.0), r=kw.get("r", 0)),
                          "relative FLOPs": relative_flops(config, kw)} for m, kw in settings if m != RANDOM])


# ---------------------------------------------------------------- training

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


# ---------------------------------------------------------------- the sweep over seeds

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


def drop_within_margin(drop: pd.Series, margin: float) -> tuple[str, str]:
    """Verdict on "the accuracy drop is small" and its measurement: ``supported`` when the 95% CI of the
    per-seed drop (a difference of accuracies, unbounded interval) lies below ``margin``, ``not supported`` when
    it lies above it, ``inconclusive`` otherwise (the text then says how many seeds would decide it at the
    measured spread, :func:`mpnn.runtime.stats.seeds_to_decide`)."""
    m, lo, hi = stats.mean_ci(drop)
    verdict = verdicts.from_interval(lo, hi, below=margin)
    text = (f"drop {100*m:.2f} pp (95% CI {100*lo:.2f} to {100*hi:.2f}, {len(drop)} seeds; per seed "
            f"{100*drop.min():.2f} to {100*drop.max():.2f})")
    if verdict == "inconclusive":
        n = stats.seeds_to_decide(drop, margin) if len(drop) > 1 else None
        text += (f"; at this spread about {n} seeds would decide the {100*margin:.1f} pp margin" if n else
                 "; the mean sits on the margin")
    return verdict, text


# ---------------------------------------------------------------- timing claim and measurements (timing cell)

def timed_settings(settings: Sequence[tuple[str, dict]]) -> list[dict]:
    """The settings whose latency is measured: every reduced setting except the random control."""
    return [kw for m, kw in settings if m != RANDOM and (kw.get("rho", 1.0) < 1 or kw.get("r", 0) > 0)]


def latency_claim(model: TokenViT, x: torch.Tensor, rho: float = 1.0, r: int = 0, repeats: int = 31,
                  min_speedup: float = 1.05) -> dict:
    """Timing claim: keeping ``rho`` of the tokens (or merging ``r`` per block, ToMe) lowers the latency.

    ``repeats`` rounds of the all-token model and the reduced one on ``x``, interleaved
    (:func:`mpnn.infra.clock.interleaved_samples`), on one CPU thread. The speed-up is the median of the
    per-round ratios with its distribution-free 95% CI (:func:`mpnn.runtime.timing.median_ci`); the efficiency
    is speed-up / FLOP-predicted speed-up. ``verdict`` on "the reduced model is faster": supported when the
    speed-up CI lies above ``min_speedup`` (a saving beyond timing noise), not supported when it lies below 1
    (no saving), inconclusive otherwise.
    """
    model.eval()
    predicted = vit_flops(model.config) / vit_flops(model.config, rho=rho, r=r)
    with determinism.cpu_threads(1, x.device), torch.no_grad():
        t = interleaved_samples({"all": lambda: model(x), "fewer": lambda: model(x, rho=rho, r=r)}, repeats=repeats)
    sp, lo, hi = paired_speedup(t["all"], t["fewer"])
    eff, eff_lo, eff_hi = sp / predicted, lo / predicted, hi / predicted
    verdict = verdicts.from_interval(lo, hi, above=min_speedup, refuted_below=1.0)
    n = model.config.n_tokens
    what = f"ToMe r={r}" if r else f"rho={rho:g} ({keep_count(n, rho)} of {n} tokens)"
    measured = (f"{what} on {len(x)} images: measured speed-up {sp:.2f}x (95% CI "
                f"{lo:.2f}-{hi:.2f}, median of {repeats} interleaved rounds, 1 thread) against {predicted:.2f}x "
                f"predicted by FLOPs: {eff:.2f} (95% CI {eff_lo:.2f}-{eff_hi:.2f}) of the prediction")
    return {"verdict": verdict, "measured": measured, "speedup": sp, "speedup_low": lo, "speedup_high": hi,
            "predicted": predicted, "efficiency": eff, "efficiency_low": eff_lo, "efficiency_high": eff_hi,
            "all_ms": 1e3 * median(t["all"]), "fewer_ms": 1e3 * median(t["fewer"]),
            "ratios": [a / b for a, b in zip(t["all"], t["fewer"])], "min_speedup": min_speedup, "repeats": repeats}


def latency_sweep(model: TokenViT, x: torch.Tensor, settings: Sequence[dict], repeats: int = 5) -> pd.DataFrame:
    """Measured and FLOP-predicted speed-up of every setting against all tokens on ``x``, one CPU thread
    (each round times all of them, order alternating; median of the per-round ratios with a 95% CI)."""
    parsed = [parse_setting(kw) for kw in settings]
    model.eval()
    with determinism.cpu_threads(1, x.device), torch.no_grad():
        fns = {"all": lambda: model(x)}
        for j, (rho, r, sel) in enumerate(parsed):
            fns[j] = (lambda rho=rho, r=r, sel=sel: model(x, rho=rho, r=r, selector=sel))
        t = interleaved_samples(fns, repeats=repeats)
    rows = []
    for j, (rho, r, sel) in enumerate(parsed):
        sp, lo, hi = paired_speedup(t["all"], t[j])
        rows.append({"rho": rho, "r": r, "selector": sel, "measured speed-up": sp, "low": lo, "high": hi,
                     "predicted speed-up": vit_flops(model.config) / vit_flops(model.config, rho=rho, r=r),
                     "latency (ms)": 1e3 * median(t[j]), "all-token latency (ms)": 1e3 * median(t["all"])})
    return pd.DataFrame(rows)




def speedup_table(speed: pd.DataFrame) -> pd.DataFrame:
    """:func:`latency_sweep`'s table with the method of every row and measured / predicted speed-up."""
    speed = speed.assign(method=np.where(speed["r"] > 0, MERGING, SELECTION))
    speed["measured / predicted"] = speed["measured speed-up"] / speed["predicted speed-up"]
    return speed


# ---------------------------------------------------------------- tables and figures

def selection_accuracy(sweep: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (mean, 95% CI over seeds) of learned and random selection per keep ratio."""
    return stats.summarise(sweep[sweep.method.str.startswith("selection")], ["method", "rho"], "accuracy")


def pareto_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (mean, 95% CI over seeds) against relative FLOPs, learned selection and merging."""
    return stats.summarise(sweep[sweep.method != RANDOM], ["method", "relative FLOPs"], "accuracy")


def figure_selection_accuracy(sweep: pd.DataFrame) -> alt.TopLevelMixin:
    """Test accuracy (mean, 95% CI over seeds) of learned and random selection against the keep ratio."""
    return plots.line_ci(selection_accuracy(sweep).rename(columns={"method": "tokens kept by"}), "rho",
                         "tokens kept by", y_title="test accuracy", x_title="keep ratio ρ (share of tokens kept)",
                         title="Token selection: test accuracy against keep ratio (mean, 95% CI)")


def figure_pareto(sweep: pd.DataFrame) -> alt.LayerChart:
    """Test accuracy (mean, 95% CI over seeds) against relative FLOPs, learned selection and merging."""
    return plots.accuracy_vs_compute(pareto_table(sweep).rename(columns={"method": REDUCTION}), "relative FLOPs",
                                     color=REDUCTION, y_title="test accuracy", x_title="FLOPs relative to all tokens",
                                     width=420, height=280,
                                     title="Selection vs merging: accuracy against FLOPs (mean, 95% CI)")


def figure_measured_vs_predicted(speed: pd.DataFrame) -> alt.LayerChart:
    """Measured speed-up (95% CI) against the FLOP-predicted one per setting, with the diagonal (equal)."""
    diagonal = alt.Chart(pd.DataFrame({"x": [1, speed["predicted speed-up"].max()]})).mark_line(
        strokeDash=[4, 4], color="grey").encode(x="x:Q", y="x:Q")
    points = alt.Chart(speed).encode(x=alt.X("predicted speed-up:Q", title="predicted speed-up (FLOPs)"),
                                     color=alt.Color("method:N", title=REDUCTION))
    bars = points.mark_errorbar().encode(y=alt.Y("low:Q", title="measured speed-up"), y2="high:Q")
    marks = points.mark_point(filled=True).encode(y="measured speed-up:Q", tooltip=[
        "method", "rho", "r", "predicted speed-up", alt.Tooltip("measured speed-up:Q", format=".2f")])
    return (diagonal + bars + marks).properties(title="Measured vs FLOP-predicted speed-up (dashed: equal)",
                                                width=400, height=280)


def patch_map(values: torch.Tensor, patch: int) -> torch.Tensor:
    """One value per patch (B, G*G) -> a (B, 28, 28) image holding each patch's value on its pixels."""
    g = 28 // patch
    return values.reshape(-1, g, g).repeat_interleave(patch, 1).repeat_interleave(patch, 2)


def kept_mask(kept: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Indices of the kept patches (B, k) -> 0/1 per patch (B, n_tokens), on the CPU."""
    return torch.zeros(len(kept), n_tokens).scatter_(1, kept.cpu(), 1.0)


@torch.no_grad()
def kept_patch_rows(model: TokenViT, x: torch.Tensor, digits: torch.Tensor, rhos: Sequence[float]) -> torch.Tensor:
    """The digits (uint8) in a first row, then one row per keep ratio with the dropped patches faded
    (kept patches: full ink on a grey tint, clipped at full ink). (len(digits) * (1 + len(rhos)), 28, 28) in [0, 1]
    (:func:`mpnn.runtime.plots.image_grid` reads values above 1 as 0-255 pixels: unclipped, the tint on full ink
    turned the whole figure white)."""
    c = model.config
    images = digits.float() / 255
    rows = [images]
    for rho in rhos:
        _, info = model(x, rho=rho, return_info=True)
        keep = patch_map(kept_mask(info.kept, c.n_tokens), c.patch)
        rows.append((images * (0.15 + 0.85 * keep) + 0.12 * keep).clamp(max=1.0))
    return torch.cat(rows)


@torch.no_grad()
def merged_size_map(model: TokenViT, x: torch.Tensor, r: int) -> torch.Tensor:
    """Per pixel, the size of the merged token its patch ends up in after the last block (ToMe with ``r``),
    divided by the largest: (B, 28, 28) in [0, 1]."""
    _, info = model(x, r=r, return_info=True)
    src = info.source.cpu()                                   # (B, tokens, N)
    size_of_patch = (src * src.sum(-1, keepdim=True)).sum(1)  # size of the token each patch belongs to
    return patch_map(size_of_patch / size_of_patch.max(), model.config.patch)


@torch.no_grad()
def keep_frequency(model: TokenViT, x: torch.Tensor, rho: float, batch_size: int = 1000) -> pd.DataFrame:
    """How often each patch position (row, column of the grid) is kept at ``rho`` over the images ``x``."""
    n = model.config.n_tokens
    counts = torch.zeros(n)
    for xb in x.split(batch_size):
        _, info = model(xb, rho=rho, return_info=True)
        counts += kept_mask(info.kept, n).sum(0)
    g = 28 // model.config.patch
    return pd.DataFrame({"row": np.repeat(np.arange(g), g), "column": np.tile(np.arange(g), g),
                         "kept": (counts / len(x)).numpy()})


def figure_keep_frequency(freq: pd.DataFrame, rho: float) -> alt.TopLevelMixin:
    """:func:`keep_frequency`'s share of images keeping each patch position, as a map of the patch grid."""
    shown = freq.rename(columns={"row": "patch row", "column": "patch column", "kept": "share of images keeping it"})
    return plots.heatmap(shown, "patch column", "patch row", "share of images keeping it", width=260, height=260,
                         annotate=False, title=f"How often each patch is kept (keep ratio ρ = {rho:g})")


# ---------------------------------------------------------------- explorer

def setting_table(sweep: pd.DataFrame, speed: pd.DataFrame) -> pd.DataFrame:
    """Per setting: the means over seeds and the measured speed-up (first seed's model; none for random)."""
    table = sweep.groupby(["method", "rho", "r"]).mean(numeric_only=True).reset_index()
    return table.merge(speed[["method", "rho", "r", "measured speed-up"]], on=["method", "rho", "r"], how="left")


def _setting_line(row: pd.Series, name: str) -> str:
    sp = row["measured speed-up"]
    sp = "" if pd.isna(sp) else f", measured speed-up {sp:.2f}x"
    return (f"{name}: accuracy {row['accuracy']:.4f}, FLOPs {row['relative FLOPs']:.3f} "
            f"(predicted {row['predicted speed-up']:.2f}x){sp}")


def setting_summary(table: pd.DataFrame, rho: float, r: int) -> str:
    """HTML lines of :func:`setting_table` for both selections at ``rho`` and ToMe at ``r`` (the explorer's view)."""
    lines = []
    for method in (SELECTION, RANDOM):
        match = table[(table.method == method) & (table.rho == rho)]
        if len(match):
            lines.append(_setting_line(match.iloc[0], f"{method}, rho={rho}"))
    match = table[(table.method == MERGING) & (table.r == r)]
    if len(match):
        lines.append(_setting_line(match.iloc[0], f"ToMe, r={r}"))
    return "<br>".join(lines)


def setting_means(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`setting_table` averaged per method and relative FLOPs (the explorer's static view)."""
    return table.groupby(["method", "relative FLOPs"]).mean(numeric_only=True).reset_index()


def figure_setting_static(table: pd.DataFrame) -> alt.LayerChart:
    """The explorer's static view: accuracy against FLOPs of every setting (means over seeds), per method."""
    return plots.accuracy_vs_compute(setting_means(table).rename(columns={"method": REDUCTION}), "relative FLOPs",
                                     y="accuracy", low=None, high=None, color=REDUCTION,
                                     x_title="FLOPs relative to all tokens", y_title="test accuracy (mean over seeds)",
                                     width=420, height=260, title="Every setting: accuracy against FLOPs")


def setting_grid(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`setting_table` with one label per setting (``setting``) and its summary line (``summary``),
    sorted by method and FLOPs: the site explorer's grid."""
    grid = table.sort_values(["method", "relative FLOPs"]).reset_index(drop=True)
    grid["setting"] = [f"ToMe, r={int(r.r)}" if r.method == MERGING else f"{r.method}, rho={r.rho:g}"
                       for r in grid.itertuples()]
    grid["summary"] = [_setting_line(row, row["setting"]) for _, row in grid.iterrows()]
    return grid[["setting", "method", "rho", "r", "accuracy", "relative FLOPs", "summary"]]


def figure_setting_site(table: pd.DataFrame):
    """The token explorer for the static site: a setting dropdown moves the highlighted point along the
    accuracy/FLOPs curves of learned selection, random selection and ToMe."""
    grid = setting_grid(table)
    default = grid[(grid.method == SELECTION) & (grid.rho == 0.5)]
    first = default["setting"].iloc[0] if len(default) else grid["setting"].iloc[0]
    return plots.operating_point(grid.rename(columns={"method": REDUCTION}), "relative FLOPs", "accuracy",
                                 {"setting": {"kind": "dropdown", "name": "setting", "value": first}},
                                 color=REDUCTION, label="summary", x_title="FLOPs relative to all tokens",
                                 y_title="test accuracy (mean over seeds)", width=440, height=260,
                                 title="Accuracy against FLOPs: the chosen setting")


# ---------------------------------------------------------------- training on the kept tokens at a fixed budget

ALL_TOKENS, SAME_FLOPS, SAME_STEPS = "all tokens", "kept tokens, same FLOPs", "kept tokens, same steps"


@dataclass(frozen=True)
class Arm:
    """One training recipe of the budget comparison: keep ratio while training (1 = all tokens; below 1 the
    kept tokens are gathered, ``how="gather_st"``), epochs, and the keep ratio it is evaluated at."""

    name: str
    rho: float
    epochs: int
    eval_rho: float


def budget_arms(budget_epochs: int, selected_epochs: int, rho: float) -> list[Arm]:
    """All-token training for ``budget_epochs`` (the budget); training on ``keep_count(N, rho)`` gathered tokens
    for ``selected_epochs`` (about the same FLOPs) and for ``budget_epochs`` (the same steps, fewer FLOPs)."""
    if not 0 < rho < 1 or min(budget_epochs, selected_epochs) < 1:
        raise ValueError(f"need 0 < budget_rho < 1 and epochs >= 1, got rho={rho}, epochs {budget_epochs}, "
                         f"{selected_epochs}")
    return [Arm(ALL_TOKENS, 1.0, budget_epochs, 1.0), Arm(SAME_FLOPS, rho, selected_epochs, rho),
            Arm(SAME_STEPS, rho, budget_epochs, rho)]


def training_flops(config: ViTConfig, rho: float = 1.0) -> float:
    """Training FLOPs per image of one step: 3 x :func:`mpnn.tokens.vit_flops` (the backward pass costs two
    multiply-adds per forward one: gradients of the inputs and of the weights)."""
    return 3 * vit_flops(config, rho=rho)


def images_seen(step: int, n: int, batch_size: int) -> int:
    """Images processed by the first ``step`` steps of epochs over ``n`` images in batches (the last one short)."""
    spe = math.ceil(n / batch_size)
    return (step // spe) * n + min((step % spe) * batch_size, n)


@dataclass
class BudgetRuns:
    """``curve``: accuracy on the checkpoint images during training, per seed, arm and step (with cumulative
    training FLOPs and the run's own training seconds, evaluations excluded); ``final``: per seed and arm, the
    test accuracy at the arm's keep ratio and with all tokens, the total FLOPs and training seconds."""

    curve: pd.DataFrame
    final: pd.DataFrame


def run_budget(data: Splits, config: ViTConfig, seeds: Sequence[int], arms: Sequence[Arm], *, n_train: int,
               batch_size: int, lr: float, noise: tuple[float, float], checkpoints: int, eval_n: int) -> BudgetRuns:
    """Every seed trains every arm from the same initialisation (:func:`train` on the first ``n_train`` images,
    its own cosine schedule over its own steps), evaluated on the first ``eval_n`` test images at ``checkpoints``
    evenly spaced steps (step 0 included) and at the end on all test images."""
    curve, final = [], []
    for s in tqdm(seeds, desc="budget seeds"):
        for arm in arms:
            c, f = _train_arm(data, config, arm, s, n_train=n_train, batch_size=batch_size, lr=lr, noise=noise,
                              checkpoints=checkpoints, eval_n=eval_n)
            curve += c
            final.append(f)
    curve, final = pd.DataFrame(curve), pd.DataFrame(final)
    budget = final[final.arm == ALL_TOKENS]["training FLOPs"].max()
    for d in (curve, final):
        d["budget fraction"] = d["training FLOPs"] / budget
    return BudgetRuns(curve, final)


def _train_arm(data, config, arm, seed, *, n_train, batch_size, lr, noise, checkpoints, eval_n):
    determinism.seed_everything(seed)
    model = TokenViT(config).to(data.X.device)
    total = arm.epochs * math.ceil(n_train / batch_size)
    marks = {round(total * q / checkpoints) for q in range(checkpoints)}
    flops = training_flops(config, arm.rho)
    rows, clock = [], {"eval": 0.0, "start": time.perf_counter()}

    def point(step):
        t0 = time.perf_counter()
        acc = evaluate_settings(model, data.XT[:eval_n], data.YT[:eval_n], [dict(rho=arm.eval_rho)])[0]
        model.train()
        rows.append({"seed": seed, "arm": arm.name, "step": step, "accuracy": acc,
                     "training FLOPs": flops * images_seen(step, n_train, batch_size),
                     "seconds": t0 - clock["start"] - clock["eval"]})
        clock["eval"] += time.perf_counter() - t0

    train(model, data.X[:n_train], data.Y[:n_train], epochs=arm.epochs, batch_size=batch_size, lr=lr,
          train_rhos=(arm.rho,), noise=noise, seed=seed, how="gather_st",
          on_step=lambda step: point(step) if step in marks else None)
    point(total)
    acc, acc_all = evaluate_settings(model, data.XT, data.YT, [dict(rho=arm.eval_rho), dict(rho=1.0)])
    return rows, {"seed": seed, "arm": arm.name, "rho": arm.rho, "epochs": arm.epochs, "steps": total,
                  "accuracy": acc, "accuracy, all tokens at inference": acc_all,
                  "training FLOPs": rows[-1]["training FLOPs"], "seconds": rows[-1]["seconds"]}


def paired_gap(final: pd.DataFrame, arm: str, column: str = "accuracy") -> pd.Series:
    """Per seed: ``column`` of ``arm`` minus the all-token arm's accuracy."""
    base = final[final.arm == ALL_TOKENS].set_index("seed")["accuracy"]
    return final[final.arm == arm].set_index("seed")[column] - base


def budget_table(final: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean and 95% CI of the test accuracy, mean FLOPs (fraction of the budget) and training seconds."""
    acc = stats.summarise(final, "arm", "accuracy").set_index("arm")
    acc_all = stats.summarise(final, "arm", "accuracy, all tokens at inference").set_index("arm")
    means = final.groupby("arm")[["steps", "budget fraction", "seconds"]].mean()
    out = acc[["mean", "low", "high", "n"]].join(acc_all[["mean"]].rename(columns={"mean": "all tokens at inference"}))
    return out.join(means).loc[[a for a in (ALL_TOKENS, SAME_FLOPS, SAME_STEPS) if a in out.index]]


def with_step_seconds(curve: pd.DataFrame, step_seconds: dict[str, float]) -> pd.DataFrame:
    """Adds "step seconds": step x the measured median training-step time of the arm's path
    (``step_seconds["all"]`` for the all-token arm, ``["kept"]`` for the others; the timing cell's measurement,
    one thread, interleaved), a wall-time axis that does not depend on how loaded the machine was while training."""
    per = np.where(curve["arm"] == ALL_TOKENS, step_seconds["all"], step_seconds["kept"])
    return curve.assign(**{"step seconds": curve["step"] * per})


def budget_curve(curve: pd.DataFrame, x: str) -> pd.DataFrame:
    """Mean and 95% CI over seeds of the checkpoint accuracy per arm and step, at the mean of ``x``."""
    summary = stats.summarise(curve, ["arm", "step"], "accuracy")
    return summary.merge(curve.groupby(["arm", "step"])[x].mean().reset_index(), on=["arm", "step"])


def figure_budget_curves(curve: pd.DataFrame) -> alt.HConcatChart:
    """Checkpoint accuracy (mean, 95% CI) against training FLOPs (fraction of the budget) and against seconds."""
    def panel(x, title):
        d = budget_curve(curve, x)
        base = alt.Chart(d).encode(x=alt.X(f"{x}:Q", title=title),
                                   color=alt.Color("arm:N", title="training", legend=alt.Legend(orient="bottom")))
        band = base.mark_area(opacity=0.2).encode(y=alt.Y("low:Q", title="test accuracy (checkpoint images)",
                                                          scale=alt.Scale(zero=False)), y2="high:Q")
        line = base.mark_line(point=True).encode(y="mean:Q", tooltip=["arm", "step", x, alt.Tooltip("mean:Q", format=".4f")])
        return (band + line).properties(width=250, height=240)
    return alt.hconcat(panel("budget fraction", "training FLOPs (share of the all-token budget)"),
                       panel("step seconds", "training seconds (steps x measured step time)")).properties(
        title="Accuracy during training: all tokens vs the kept tokens (mean, 95% CI)")


def train_step_time(model: TokenViT, x: torch.Tensor, y: torch.Tensor, rho: float, repeats: int = 31) -> dict:
    """Timing of one training step (forward, backward, fused AdamW step) on all tokens against one on the
    ``keep_count(N, rho)`` gathered tokens (``how="gather_st"``), on copies of ``model`` and the batch ``x, y``,
    ``repeats`` interleaved rounds on one CPU thread; speed-up = median of the per-round ratios (95% CI,
    :func:`mpnn.runtime.timing.paired_speedup`), efficiency = speed-up / FLOP-predicted speed-up."""
    import copy
    predicted = training_flops(model.config) / training_flops(model.config, rho)
    fns = {}
    for name, kw in (("all", {}), ("kept", dict(rho=rho, how="gather_st"))):
        m = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.05, fused=fusable(m))
        fns[name] = training_step_fn(m, opt, x, y, kw)
    with determinism.cpu_threads(1, x.device):
        t = interleaved_samples(fns, repeats=repeats)
    sp, lo, hi = paired_speedup(t["all"], t["kept"])
    c = model.config
    measured = (f"{c.n_tokens} tokens of width {c.dim}, rho={rho:g} ({keep_count(c.n_tokens, rho)} kept), batch "
                f"{len(x)}: training step {1e3 * median(t['all']):.1f} ms -> {1e3 * median(t['kept']):.1f} ms, "
                f"speed-up {sp:.2f}x (95% CI {lo:.2f}-{hi:.2f}, median of {repeats} interleaved rounds, 1 thread) "
                f"against {predicted:.2f}x predicted by FLOPs: {sp / predicted:.2f} of it")
    return {"measured": measured, "speedup": sp, "speedup_low": lo, "speedup_high": hi, "predicted": predicted,
            "efficiency": sp / predicted, "efficiency_low": lo / predicted, "efficiency_high": hi / predicted,
            "all_s": median(t["all"]), "kept_s": median(t["kept"]), "repeats": repeats}


def train_step_claim(model: TokenViT, large_model: TokenViT, x: torch.Tensor, y: torch.Tensor, rho: float,
                     repeats: int = 41, large_repeats: int = 15, min_speedup: float = 1.05) -> dict:
    """Timing claim: training on the kept tokens takes less time per step, for the chapter's model and for the
    full profile's larger one (:func:`train_step_time` for each). Each part is supported when its speed-up CI
    lies above ``min_speedup``, not supported when it lies below 1, inconclusive otherwise; the verdict is
    :func:`mpnn.runtime.verdicts.combine` of the two (``mixed``: one part holds)."""
    small = train_step_time(model, x, y, rho, repeats)
    large = train_step_time(large_model, x, y, rho, large_repeats)
    parts = {name: verdicts.from_interval(r["speedup_low"], r["speedup_high"], above=min_speedup, refuted_below=1.0)
             for name, r in (("chapter's model", small), ("larger model", large))}
    measured = "; ".join(f"{name}, {parts[name]}: {r['measured']}"
                         for name, r in (("chapter's model", small), ("larger model", large)))
    return {"verdict": verdicts.combine(parts), "parts": parts, "measured": measured, "small": small, "large": large,
            "min_speedup": min_speedup}


def timing_sentences(selection: dict, merging: dict, step: dict) -> dict[str, str]:
    """The verdict paragraph's words on time, from this run's timing claims (:func:`latency_claim` for
    learned selection and for ToMe, :func:`train_step_claim`): the same code may decide differently on
    another CPU, so these sentences are generated, never typed."""
    v = selection["verdict"]
    if v == "supported":
        sel = "Keeping fewer tokens lowers the measured latency at inference" + (
            ", though by less than the FLOPs predict" if selection["efficiency_high"] < 1 else "")
    elif v == "not supported":
        sel = "Keeping fewer tokens does not lower the measured latency at inference on this machine"
    else:
        sel = ("Whether keeping fewer tokens lowers the measured latency at inference is not decided on this "
               "machine")
    v = merging["verdict"]
    if v == "not supported":
        merge = ("on this machine it is slower than keeping every token: its bookkeeping costs more than the "
                 "tokens it removes, which a FLOP count leaves out")
    elif v == "inconclusive":
        merge = ("on this machine it is not measurably faster than keeping every token, although the FLOPs "
                 "predict a saving: its bookkeeping eats what the removed tokens save, which a FLOP count "
                 "leaves out")
    else:
        merge = "on this machine it is faster than keeping every token, by less than the FLOPs predict" if (
            merging["efficiency_high"] < 1) else "on this machine it is faster than keeping every token"
    small, large = step["parts"]["chapter's model"], step["parts"]["larger model"]
    if small == large == "supported":
        train = "a training step on fewer tokens is shorter, for the chapter's model and for the larger one"
    elif large == "supported":
        train = ("a training step on fewer tokens is only shorter once the model is large enough for its matrix "
                 "products to set the step time")
    elif small == "supported":
        train = "a training step on fewer tokens is shorter for the chapter's model but not measurably for the larger one"
    else:
        train = "a training step on fewer tokens is not measurably shorter on this machine, for either model size"
    return {"ts_selection_latency": sel, "ts_merging_latency": merge, "ts_training_step": train}


def training_step_fn(model, opt, x, y, kw):
    """One training step of ``model`` on ``(x, y)``: cross-entropy of ``model(x, **kw)``, backward, ``opt`` step."""
    def step():
        loss = F.cross_entropy(model(x, **kw), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step
