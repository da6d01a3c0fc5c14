"""The early-exits chapter: MNIST splits, the joint training of both exits, the threshold sweep over
seeds, the wall-time measurements its timing claim calls, and the tables and figures it shows.

The mechanism (network, skipping inference, exit decisions, FLOP counts) is :mod:`mpnn.early_exit`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mpnn.data.mnist import load_mnist, to_tensor
from mpnn.early_exit import (
    EarlyExitConfig,
    EarlyExitNet,
    choose_threshold,
    compiled_stage1_wins,
    count_flops,
    early_exit_predict,
    exit_costs,
    exit_fractions,
    exit_logits,
    exit_loss,
    full_cost,
    fused_stage1,
    normalised_entropy,
    predicted_speedup,
    stage1_kernel,
    sweep_metrics,
)
from mpnn.infra import determinism, native
from mpnn.infra.clock import interleaved_samples, median
from mpnn.infra.train import History, fit, fusable
from mpnn.runtime import plots, stats, verdicts
from mpnn.runtime.timing import paired_speedup

MNIST_TRAIN = 60000


# ---------------------------------------------------------------- data

@dataclass
class Splits:
    """Standardised images (N, 1, 28, 28) and labels: training, validation (the last ``n_val`` training
    images, used only to pick the threshold) and test; ``test_images`` are the raw uint8 test digits."""

    X: torch.Tensor
    Y: torch.Tensor
    XV: torch.Tensor
    YV: torch.Tensor
    XT: torch.Tensor
    YT: torch.Tensor
    test_images: torch.Tensor


def load_splits(n_train: int, n_val: int, n_test: int, device) -> Splits:
    """The chapter's MNIST splits on ``device`` (:func:`mpnn.data.mnist.to_tensor`, standard scale)."""
    if not 0 < n_val < MNIST_TRAIN - 1 or n_train + n_val > MNIST_TRAIN:
        raise ValueError(f"need n_train + n_val <= {MNIST_TRAIN} training images, got {n_train} + {n_val}")
    train_x, train_y = load_mnist("train")
    test_x, test_y = load_mnist("test")
    image = lambda images: to_tensor(images, scale="standard", shape="image", device=device)
    return Splits(image(train_x[:n_train]), train_y[:n_train].to(device),
                  image(train_x[-n_val:]), train_y[-n_val:].to(device),
                  image(test_x[:n_test]), test_y[:n_test].to(device), test_x[:n_test])


def cost_table(model: EarlyExitNet) -> pd.DataFrame:
    """FLOPs a sample pays when it leaves at each exit, and the plain network's, absolute and relative."""
    costs, full = exit_costs(model), full_cost(model)
    return pd.DataFrame({"a sample leaving at": ["exit 1 (after block 1)", "exit 2 (end)", "plain network, no exits"],
                         "FLOPs": [int(costs[0]), int(costs[1]), int(full)],
                         "relative to the plain network": [costs[0].item() / full, costs[1].item() / full, 1.0]})


# ---------------------------------------------------------------- training and the threshold sweep

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


# ---------------------------------------------------------------- timing claim and measurements (timing cell)

MIN_SPEEDUP = 1.0      # the torch path's speed-up must lie above this: skipping is faster at all
MAX_EFFICIENCY = 0.8   # ... and its measured / predicted speed-up below this: the FLOPs overstate the gain
REFUTED_EFFICIENCY = 1.0   # above this the time saving is at least what the FLOPs predict


def timing_sentence(wall: dict) -> str:
    """The verdict paragraph's words on wall time, from this run's :func:`wall_time_claim` (another CPU
    may decide its parts differently, so the sentence is generated, never typed)."""
    over, kernel = wall["parts"]["overstated"], wall["parts"]["kernel"]
    first = {"supported": "with the always-run block as a torch matrix product the FLOP count overstates the "
                          "wall-time gain",
             "not supported": "with the always-run block as a torch matrix product the wall-time gain matches what "
                              "the FLOP count predicts",
             }.get(over, "whether the FLOP count overstates the wall-time gain with the always-run block as a torch "
                         "matrix product is not decided on this machine")
    second = {"supported": "a compiled kernel for that block turns more of it into time",
              "not supported": "a compiled kernel for that block turns less of it into time",
              "inconclusive": "a compiled kernel for that block is not measurably better at turning it into time",
              }.get(kernel, "the compiled kernel for that block could not be built on this machine")
    return f"{first}, and {second}"


def wall_time_claim(model: EarlyExitNet, x: torch.Tensor, threshold: float, repeats: int = 31,
                    max_efficiency: float = MAX_EFFICIENCY, min_speedup: float = MIN_SPEEDUP) -> dict:
    """Timing claims: whether a FLOP saving becomes a time saving depends on how the always-run part runs.

    At ``threshold`` the plain network and the skipping inference are timed with block 1 (and exit 1) as
    the torch path (one GEMM over 6x6 windows per chunk, :func:`mpnn.early_exit.fused_stage1` under
    :func:`mpnn.infra.native.disabled`) and as the compiled per-image loop (:mod:`mpnn.early_exit.stage1_kernel`, forced with
    :func:`mpnn.infra.native.forced` whatever the book's measured choice of path is on this machine), all four
    interleaved (:func:`mpnn.infra.clock.interleaved_samples`), one CPU thread. Each path's speed-up is
    the median of its per-round ratios with a distribution-free 95% CI (:func:`mpnn.runtime.timing.median_ci`);
    efficiency = measured / FLOP-predicted speed-up. Three parts, each a verdict on its interval
    (:func:`mpnn.runtime.verdicts.from_interval`):

    * ``faster``: the torch path's speed-up CI lies above ``min_speedup`` (below it: not supported);
    * ``overstated``: the torch path's efficiency CI lies below ``max_efficiency`` (above
      :data:`REFUTED_EFFICIENCY`: not supported);
    * ``kernel``: the compiled path's speed-up CI lies above the torch path's (wholly below the torch
      path's lower end: not supported). Where the kernel cannot serve (no C++ compiler, another layout) it
      is not measured and this part is "not testable here".

    ``verdict`` (what a replay compares) combines the parts; ``measured`` has one text per part in ``said``.
    """
    model.eval()
    compiled = stage1_kernel.usable(x, model.stages[0][0], model.exits[0][-1])

    def torch_path(fn):
        def call():
            with native.disabled():
                return fn()
        return call

    def compiled_path(fn):     # the kernel on purpose, whatever the measured choice of the book's path is
        def call():
            with native.forced("early_exit.stage1", "compiled"):
                return fn()
        return call

    with determinism.cpu_threads(1, x.device), torch.no_grad():
        q = exit_fractions(model, x, threshold)
        predicted = float(predicted_speedup(model, q))
        fns = {("torch", "plain"): torch_path(lambda: model.forward_full(x)),
               ("torch", "early_exit"): torch_path(lambda: early_exit_predict(model, x, threshold))}
        if compiled:
            fns.update({("compiled", "plain"): compiled_path(lambda: model.forward_full(x)),
                        ("compiled", "early_exit"): compiled_path(lambda: early_exit_predict(model, x, threshold))})
        t = interleaved_samples(fns, repeats=repeats)
    paths = {}
    for path in ("torch", "compiled") if compiled else ("torch",):
        sp, lo, hi = paired_speedup(t[(path, "plain")], t[(path, "early_exit")])
        paths[path] = {"speedup": sp, "speedup_low": lo, "speedup_high": hi, "efficiency": sp / predicted,
                       "efficiency_low": lo / predicted, "efficiency_high": hi / predicted,
                       "plain_ms": 1e3 * median(t[(path, "plain")]), "early_exit_ms": 1e3 * median(t[(path, "early_exit")]),
                       "ratios": [a / b for a, b in zip(t[(path, "plain")], t[(path, "early_exit")])]}
    tp = paths["torch"]
    parts = {"faster": verdicts.from_interval(tp["speedup_low"], tp["speedup_high"], above=min_speedup),
             "overstated": verdicts.from_interval(tp["efficiency_low"], tp["efficiency_high"], below=max_efficiency,
                                                  refuted_above=REFUTED_EFFICIENCY)}
    if compiled:
        cp = paths["compiled"]
        parts["kernel"] = verdicts.from_interval(cp["speedup_low"], cp["speedup_high"], above=tp["speedup_high"],
                                                 refuted_below=tp["speedup_low"])
    else:
        parts["kernel"] = verdicts.UNDECIDED

    setting = (f"T={threshold:g} on {len(x)} images ({float(q[0]):.1%} leave at exit 1), FLOPs predict "
               f"{predicted:.2f}x; median of {repeats} interleaved rounds, 1 thread")

    def speed(r):
        return f"{r['speedup']:.2f}x (95% CI {r['speedup_low']:.2f}-{r['speedup_high']:.2f})"

    def efficiency(r):
        return f"{r['efficiency']:.2f} (95% CI {r['efficiency_low']:.2f}-{r['efficiency_high']:.2f})"

    said = {"faster": f"{setting}: with block 1 as a torch GEMM the speed-up over the plain network is {speed(tp)}",
            "overstated": f"{setting}: with block 1 as a torch GEMM measured / predicted speed-up = {efficiency(tp)}",
            "kernel": (f"{setting}: with block 1 as the compiled kernel {speed(paths['compiled'])}, "
                       f"{efficiency(paths['compiled'])} of the prediction; as a torch GEMM {speed(tp)}"
                       if compiled else "the compiled kernel cannot serve here (no C++ compiler or another layout)")}
    measured = "; ".join(f"{k}: {v}" for k, v in parts.items()) + ". " + " | ".join(said.values())
    return {"verdict": verdicts.combine({k: v for k, v in parts.items() if v != verdicts.UNDECIDED}),
            "parts": parts, "said": said, "measured": measured, "predicted": predicted,
            "exit1_fraction": float(q[0]), "paths": paths, "min_speedup": min_speedup,
            "max_efficiency": max_efficiency, "repeats": repeats}


def speedup_sweep(model: EarlyExitNet, x: torch.Tensor, thresholds: Sequence[float], repeats: int = 5) -> pd.DataFrame:
    """Measured and FLOP-predicted speed-up at every threshold on ``x``, one CPU thread.

    Every round times the plain network and the skipping inference at each threshold (order alternating);
    each threshold's speed-up is the median of its per-round ratios to the plain network, with a 95% CI.
    """
    model.eval()
    with determinism.cpu_threads(1, x.device), torch.no_grad():
        fns = {"plain": lambda: model.forward_full(x)}
        for i, t in enumerate(thresholds):
            fns[i] = (lambda t=t: early_exit_predict(model, x, t))
        times = interleaved_samples(fns, repeats=repeats)
        rows = []
        for i, t in enumerate(thresholds):
            q = exit_fractions(model, x, t)
            sp, lo, hi = paired_speedup(times["plain"], times[i])
            rows.append({"threshold": t, "exit 1 fraction": float(q[0]),
                         "predicted speed-up": float(predicted_speedup(model, q)), "measured speed-up": sp,
                         "low": lo, "high": hi, "plain time (ms)": 1e3 * median(times["plain"]),
                         "early-exit time (ms)": 1e3 * median(times[i])})
    return pd.DataFrame(rows)


def rows_reaching_block2(speed: pd.DataFrame, batch: int) -> list[int]:
    """Rows that reach block 2 at every threshold of :func:`speedup_sweep`'s table, on a batch of ``batch``."""
    return [int(round((1 - q) * batch)) for q in speed["exit 1 fraction"]]


def time_breakdown(model: EarlyExitNet, x: torch.Tensor, rows_left: Sequence[int], repeats: int = 5) -> dict:
    """Median wall time (s) of each part of the network on ``x`` (one thread), and of block 2 + exit-2 head
    on the first ``n`` rows for every ``n`` in ``rows_left`` (``{"parts": {...}, "block2_rows": {n: s},
    "block1_compiled": bool}``).

    Block 1 is the fused kernel both inference paths run (:func:`mpnn.early_exit.fused_stage1`, on the path
    the book takes on this machine: ``block1_compiled`` says whether that is the compiled loop); the exit-1
    head, the entropy and the gather are timed alone as modules (in ``early_exit_predict`` they run fused
    with block 1, chunk by chunk, :func:`mpnn.early_exit.fused_exit1`)."""
    model.eval()
    with determinism.cpu_threads(1, x.device), torch.no_grad():
        h1, logits1 = fused_stage1(model, x)  # channels-last, as the inference paths hand it to block 2
        keep = torch.rand(len(x), generator=torch.Generator().manual_seed(0)).to(x.device) < 0.5
        parts = interleaved_samples({
            "block 1": lambda: fused_stage1(model, x, with_exit=False),
            "exit-1 head": lambda: model.exits[0](h1),
            "entropy + gather half the rows": lambda: (normalised_entropy(logits1), h1[keep]),
            "block 2 + exit-2 head": lambda: model.exits[1](model.stages[1](h1)),
        }, repeats=repeats)
        rows = sorted({int(n) for n in rows_left if int(n) > 0})
        block2 = interleaved_samples({n: (lambda n=n: model.exits[1](model.stages[1](h1[:n]))) for n in rows},
                                     repeats=repeats) if rows else {}
        block1_compiled = compiled_stage1_wins(model, x)
    return {"parts": {k: median(v) for k, v in parts.items()}, "block2_rows": {n: median(v) for n, v in block2.items()},
            "block1_compiled": block1_compiled}




# ---------------------------------------------------------------- tables for the figures

def _summary(sweep: pd.DataFrame, column: str, bounds: tuple[float, float] | None = None) -> pd.DataFrame:
    return stats.summarise(sweep, "threshold", column, bounds=bounds)


def pareto_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per threshold: mean test accuracy with its 95% CI over seeds (``low``, ``high``, inside [0, 1]), mean relative FLOPs
    and mean exit-1 fraction."""
    acc = _summary(sweep, "accuracy", (0, 1))[["threshold", "mean", "low", "high"]].rename(columns={"mean": "accuracy"})
    for column in ("relative FLOPs", "exit 1 fraction"):
        acc = acc.merge(_summary(sweep, column)[["threshold", "mean"]].rename(columns={"mean": column}), on="threshold")
    return acc


def exit_fraction_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Fraction of test samples leaving at each exit per threshold (mean, 95% CI), long form (``exit``)."""
    frac = _summary(sweep, "exit 1 fraction", (0, 1))
    exit2 = frac.assign(mean=1 - frac["mean"], low=1 - frac["high"], high=1 - frac["low"])
    return pd.concat([frac.assign(exit="exit 1"), exit2.assign(exit="exit 2")])


def speedup_table(speed: pd.DataFrame) -> pd.DataFrame:
    """Predicted (FLOPs) and measured (wall time, 95% CI) speed-up per threshold, long form (``kind``)."""
    predicted = speed[["threshold", "predicted speed-up"]].rename(columns={"predicted speed-up": "mean"})
    measured = speed[["threshold", "measured speed-up", "low", "high"]].rename(columns={"measured speed-up": "mean"})
    return pd.concat([predicted.assign(low=predicted["mean"], high=predicted["mean"], kind="predicted (FLOPs)"),
                      measured.assign(kind="measured (wall time)")])


def figure_pareto(pareto: pd.DataFrame) -> alt.LayerChart:
    """:func:`pareto_table` drawn: test accuracy (mean, 95% CI over seeds) against relative FLOPs, one point
    per threshold."""
    return plots.accuracy_vs_compute(pareto, "relative FLOPs", y="accuracy",
                                     x_title="FLOPs relative to the plain network", y_title="test accuracy",
                                     width=440, height=280,
                                     title="Early exits: accuracy against FLOPs (mean, 95% CI over seeds)")


def figure_exit_fractions(sweep: pd.DataFrame) -> alt.TopLevelMixin:
    """Fraction of test samples leaving at each exit against the threshold (mean, 95% CI over seeds)."""
    return plots.line_ci(exit_fraction_table(sweep).rename(columns={"exit": "leaves at"}), "threshold", "leaves at",
                         title="Fraction of test samples leaving at each exit", y_title="fraction of test samples",
                         x_title="entropy threshold T")


def figure_speedup(speed: pd.DataFrame) -> alt.LayerChart:
    """Predicted (FLOPs) and measured (wall time, 95% CI) speed-up against the threshold, a rule at no speed-up."""
    chart = plots.line_ci(speedup_table(speed).rename(columns={"kind": "speed-up"}), "threshold", "speed-up",
                          y_title="speed-up over the plain network (x)", x_title="entropy threshold T",
                          title="Speed-up over the plain network (first seed's model)")
    return plots.with_rules(chart, y={"no speed-up": 1.0})


def part_flops(model: EarlyExitNet) -> list[int]:
    """FLOPs per sample of the parts :func:`time_breakdown` times (the entropy and gather count 0)."""
    p = next(model.parameters())
    x = torch.zeros(1, 1, 28, 28, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        h1 = model.stages[0](x)
        block2 = count_flops(model.stages[1], h1) + count_flops(model.exits[1], model.stages[1](h1))
    return [count_flops(model.stages[0], x), count_flops(model.exits[0], h1), 0, block2]


def breakdown_table(parts: dict, model: EarlyExitNet, batch: int) -> pd.DataFrame:
    """Each timed part's median time, FLOPs, share of the time and of the FLOPs, and FLOP rate on ``batch`` rows."""
    t = parts["parts"]
    table = pd.DataFrame({"part": list(t), "time (ms)": [1e3 * v for v in t.values()],
                          "MFLOPs / sample": [f / 1e6 for f in part_flops(model)]})
    table["share of time"] = table["time (ms)"] / table["time (ms)"].sum()
    table["share of FLOPs"] = table["MFLOPs / sample"] / table["MFLOPs / sample"].sum()
    table["GFLOP/s"] = table["MFLOPs / sample"] * batch / table["time (ms)"]
    return table


def time_model_table(parts: dict, speed: pd.DataFrame, rows: Sequence[int]) -> pd.DataFrame:
    """A time model from the measured parts against the measured and FLOP-predicted speed-up per threshold.

    The plain network pays block 1 + block 2; early exit pays block 1, the exit-1 head and the entropy for
    every sample, and block 2 either scaled by ``1 - q`` (what a FLOP count assumes) or timed on exactly
    the rows left at that threshold."""
    t = parts["parts"]
    block2_rows = dict(parts["block2_rows"]) | {0: 0.0}
    block2 = t["block 2 + exit-2 head"]
    fixed = t["block 1"] + t["exit-1 head"] + t["entropy + gather half the rows"]
    plain = t["block 1"] + block2
    table = speed[["threshold", "exit 1 fraction"]].rename(columns={"exit 1 fraction": "q"})
    table["rows left"] = list(rows)
    table["block 2 time on those rows / on all rows"] = [block2_rows[n] / block2 for n in rows]
    table["speed-up, block 2 time x (1 - q)"] = plain / (fixed + (1 - table["q"]) * block2)
    table["speed-up, block 2 timed on the rows left"] = plain / (fixed + table["rows left"].map(block2_rows))
    table["measured speed-up"] = speed["measured speed-up"].values
    table["predicted speed-up (FLOPs)"] = speed["predicted speed-up"].values
    return table


def figure_time_breakdown(breakdown: pd.DataFrame) -> alt.Chart:
    """Two stacked bars: each part's share of the FLOPs and of the wall time."""
    long = breakdown.melt(id_vars="part", value_vars=["share of time", "share of FLOPs"], var_name="measure",
                          value_name="share").replace({"measure": {"share of time": "wall time",
                                                                   "share of FLOPs": "FLOPs"}})
    parts = list(breakdown["part"])
    long["position"] = long["part"].map(parts.index)            # stacked in the network's order
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("measure:N", title=None),
        x=alt.X("share:Q", stack="normalize", title="share of the network's FLOPs / of its wall time"),
        color=alt.Color("part:N", title="part of the network", sort=parts,
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=0)),
        order=alt.Order("position:Q"),
        tooltip=["part", alt.Tooltip("share:Q", format=".3f")]).properties(
        title="Share of FLOPs vs share of wall time per part", width=440, height=90)


def easiest_and_hardest(entropy: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (on the CPU) of the ``k`` test digits with the lowest and the ``k`` with the highest entropy."""
    order = entropy.argsort()
    return order[:k].cpu(), order.flip(0)[:k].cpu()


# ---------------------------------------------------------------- explorer

def threshold_table(sweep: pd.DataFrame, speed: pd.DataFrame) -> pd.DataFrame:
    """Per threshold: the sweep's means over seeds and the measured speed-up (first seed's model)."""
    table = sweep.groupby("threshold").mean(numeric_only=True).reset_index().drop(columns="seed")
    table["measured speed-up"] = speed["measured speed-up"].values
    return table


def threshold_summary(table: pd.DataFrame, threshold: float) -> str:
    """One HTML line of :func:`threshold_table` at ``threshold`` (the explorer's view)."""
    match = table[table["threshold"] == threshold]
    if match.empty:
        raise KeyError(f"threshold {threshold} was not swept; choose one of {table['threshold'].tolist()}")
    row = match.iloc[0]
    return (f"<b>T = {threshold}</b>: accuracy {row['accuracy']:.4f}, "
            f"exit 1 takes {row['exit 1 fraction']:.1%}, relative FLOPs {row['relative FLOPs']:.3f}, "
            f"predicted speed-up {row['predicted speed-up']:.2f}x, measured {row['measured speed-up']:.2f}x")


def threshold_long(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`threshold_table` in long form (``quantity``, ``value``), one panel per quantity in the static view."""
    return table.melt(id_vars="threshold", value_vars=["accuracy", "exit 1 fraction", "relative FLOPs",
                                                       "measured speed-up"], var_name="quantity")


def figure_threshold_static(table: pd.DataFrame) -> alt.FacetChart:
    """The explorer's static view: one panel per quantity of :func:`threshold_long` against the threshold."""
    panel = alt.Chart(threshold_long(table)).mark_line(point=True).encode(
        x=alt.X("threshold:Q", title="entropy threshold T"),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        tooltip=["quantity", "threshold", alt.Tooltip("value:Q", format=".4f")]).properties(width=240, height=140)
    return panel.facet(facet=alt.Facet("quantity:N", title=None, sort=None), columns=2).resolve_scale(
        y="independent").properties(
        title="Accuracy, exit-1 fraction, FLOPs and measured speed-up against the threshold")


def threshold_grid(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`threshold_table` with a ``setting`` column (the row in words) for the site explorer."""
    grid = table.copy()
    grid["setting"] = [f"T = {r['threshold']}: accuracy {r['accuracy']:.4f}, exit 1 takes {r['exit 1 fraction']:.0%}, "
                       f"{r['relative FLOPs']:.3f} of the FLOPs, measured {r['measured speed-up']:.2f}x"
                       for _, r in grid.iterrows()]
    return grid


def figure_threshold_explorer(table: pd.DataFrame):
    """The site explorer: the threshold slider moves the operating point along the accuracy/FLOPs curve."""
    grid = threshold_grid(table)
    return plots.operating_point(grid, "relative FLOPs", "accuracy",
                                 {"threshold": {"kind": "slider", "name": "entropy threshold T"}},
                                 label="setting", x_title="FLOPs relative to the plain network",
                                 y_title="test accuracy (mean over seeds)", width=520,
                                 title="Operating point at the chosen threshold")


# ---------------------------------------------------------------- the findings, written from the run

def _ci(m: float, lo: float, hi: float, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    return f"{scale*m:.{digits}f}{unit} (95% CI {scale*lo:.{digits}f} to {scale*hi:.{digits}f}{unit})"


def rate_sentence(breakdown: pd.DataFrame, compiled: bool) -> str:
    """Which block ran at the higher FLOP rate in :func:`breakdown_table`, in words."""
    rate = dict(zip(breakdown["part"], breakdown["GFLOP/s"]))
    b1, b2 = rate["block 1"], rate["block 2 + exit-2 head"]
    how = "the compiled kernel" if compiled else "the torch path"
    if b1 < b2:
        return (f"block 1 (as {how}) ran at {b1:.0f} GFLOP/s of useful FLOPs against {b2:.0f} for block 2: the part "
                f"that early exits remove was the more efficient one, {b2 / b1:.1f} times block 1's rate")
    return (f"block 1 (as {how}) ran at {b1:.0f} GFLOP/s of useful FLOPs against {b2:.0f} for block 2: the "
            f"always-run part was at least as efficient as the part that is skipped")


def findings(numbers: dict, per_seed: pd.DataFrame, costs: pd.DataFrame, wall: dict, speed: pd.DataFrame,
             breakdown: pd.DataFrame, *, margin: float, flops_claim: float, seconds_per_seed: float,
             block1_compiled: bool) -> str:
    """The chapter's "What we found", every number and every comparison word from this run.

    ``numbers`` is :func:`seed_claims`'s, ``costs`` :func:`cost_table`'s, ``wall`` :func:`wall_time_claim`'s,
    ``speed`` :func:`speedup_sweep`'s and ``breakdown`` :func:`breakdown_table`'s; ``block1_compiled``: the
    path block 1 took in the breakdown (:func:`time_breakdown`)."""
    n = numbers["n"]
    t_stars = sorted(set(per_seed["T*"]))
    t_text = f"{t_stars[0]:g}" if len(t_stars) == 1 else f"{t_stars[0]:g} to {t_stars[-1]:g}"
    q_star = float(per_seed["relative FLOPs at T*"].mean())
    c1 = float(costs["relative to the plain network"].iloc[0])
    leave = 1 - (q_star - c1) / (float(costs["relative to the plain network"].iloc[1]) - c1)
    m, lo, hi = numbers["flops"]
    flops_word = ("below" if hi < flops_claim else "not below" if lo > flops_claim else "straddling")
    dm, dlo, dhi = numbers["drop"]
    hm, hlo, hhi = numbers["drop_half"]
    drop_word = ("lies below the" if dhi < margin else "lies above the" if dlo > margin else "straddles the")
    half_word = ("also below it" if hhi < margin else "above it" if hlo > margin else "straddling it")
    gm, glo, ghi = numbers["gap"]
    gap_word = ("more" if glo > 0 else "less" if ghi < 0 else "not clearly more")
    lines = [
        f"* The first exit sits after a block that costs {c1:.2f} of the plain network's FLOPs. At the "
        f"validation-chosen threshold ($T^*$ = {t_text} over the {n} seeds) about {leave:.0%} of the MNIST test "
        f"digits leave there, and the network spends {_ci(m, lo, hi, digits=3)} of the plain network's FLOPs, "
        f"{flops_word} the criterion's {flops_claim:g}.",
        f"* The accuracy cost is {_ci(dm, dlo, dhi, 100, unit=' pp')} below exit 2 ({n} seeds): the interval "
        f"{drop_word} {100 * margin:.1f} pp margin. Choosing $T^*$ with half the margin as tolerance instead of a "
        f"quarter gives {_ci(hm, hlo, hhi, 100, unit=' pp')}, {half_word}.",
        f"* The exit's entropy ranks difficulty: exit 1 is {_ci(gm, glo, ghi, 100, unit=' pp')} {gap_word} "
        f"accurate on the samples it lets go than on all samples.",
    ]
    tp = wall["paths"]["torch"]
    text = (f"* Wall time (one thread, {wall['repeats']} interleaved rounds, the first seed's model at its $T^*$, "
            f"{wall['exit1_fraction']:.0%} leaving at exit 1): the FLOPs predict {wall['predicted']:.2f}x. With block 1 "
            f"and exit 1 as a torch GEMM over 6x6 input windows the skipping inference reached a speed-up of "
            f"{_ci(tp['speedup'], tp['speedup_low'], tp['speedup_high'], unit='x')} over the plain network, "
            f"{tp['efficiency']:.2f} of the prediction")
    if "compiled" in wall["paths"]:
        cp = wall["paths"]["compiled"]
        ratio = cp["speedup"] / tp["speedup"]
        word = ("more" if cp["speedup_low"] > tp["speedup_high"] else "less" if cp["speedup_high"] < tp["speedup_low"]
                else "about as much (the two intervals overlap)")
        text += (f"; with the same part as one compiled C++ loop per image (`mpnn.early_exit.stage1_kernel`) it reached "
                 f"{_ci(cp['speedup'], cp['speedup_low'], cp['speedup_high'], unit='x')}, {cp['efficiency']:.2f} of "
                 f"the prediction: {ratio:.2f} times the torch path's speed-up, so the kernel turned {word} of the "
                 f"same FLOP saving into time on this machine.")
    else:
        text += "; the compiled kernel could not serve on this machine, so only the torch path was measured."
    lines.append(text)
    lines.append(f"* Where the time goes (the same batch, each part timed alone): "
                 f"{rate_sentence(breakdown, block1_compiled)}.")
    at0 = speed[speed["threshold"] == 0.0]
    if len(at0):
        r = at0.iloc[0]
        s0, lo0, hi0 = (float(r[k]) for k in ("measured speed-up", "low", "high"))
        if hi0 < 1:
            word = "slower, as it must be: it pays for the exit head and the entropy and gets nothing back"
        elif lo0 > 1:
            word = ("faster although it does strictly more work (the exit head and the entropy on top of the plain "
                    "network): a difference between the two code paths or the machine's load, not a gain of the exits")
        else:
            word = ("not measurably different from it, although it does strictly more work (the exit head and the "
                    "entropy on top of the plain network)")
        lines.append(f"* At $T=0$ no sample leaves early and the early-exit network runs at "
                     f"{_ci(s0, lo0, hi0, unit='x')} the plain network's speed: {word}.")
    lines.append(f"* Training and evaluating one seed took about {seconds_per_seed:.0f} s on this machine.")
    return "\n".join(lines)
