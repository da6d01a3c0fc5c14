"""Training on the kept tokens at a fixed budget (the open question on training time): the three recipes, their
runs from the same initialisation per seed, the paired accuracy gaps, and the accuracy-during-training figure."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mpnn.infra import determinism
from mpnn.runtime import stats
from mpnn.tokens import TokenViT, ViTConfig, evaluate_settings, vit_flops

from .data import Splits
from .training import train


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
