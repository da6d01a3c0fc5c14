"""Compositional MNIST with a varying compositional share (the first experiment)."""
from __future__ import annotations

import time
from typing import Sequence

import pandas as pd
from tqdm.auto import tqdm

from mpnn import dynamics as D
from mpnn.data.cmnist import (
    CMNIST,
    compositional_share,
)
from mpnn.infra.determinism import spawn_seeds
from mpnn.runtime import plots, stats

from .cmnist_towers import PaperRun, evaluate_runs, pooled_inputs, train_tower_mlp


def compositional_sweep(train: CMNIST, test: CMNIST, scales: Sequence[float], *, seed: int, n_seeds: int,
                        train_size: int, test_size: int, epochs: int, lr: float, batch_size: int, hidden: int,
                        pool: int, out_std: float, device) -> tuple[pd.DataFrame, dict[str, float]]:
    """Dense and split MLP towers for every non-compositional target scale (every scale and seed of a
    model in one batched pass, paired by seed: same data order and initial weights across scales and
    the same order for both models). Rows ``{model, scale, share, run, comp_error, digit_acc}`` on the
    test images after ``epochs``, and seconds per model."""
    if not scales or min(scales) < 0:
        raise ValueError(f"need non-negative scales, got {scales}")
    sub = [spawn_seeds(s, 3) for s in spawn_seeds(seed, n_seeds)]
    cm_train, cm_test = train.subset(min(train_size, len(train))), test.subset(min(test_size, len(test)))
    x_tr, x_te = pooled_inputs(cm_train, cm_test, pool)
    per_run_scale = [float(v) for v in scales for _ in sub]
    rows, seconds = [], {}
    for j, kind in enumerate(tqdm(("dense", "split"), desc="CMNIST compositional share"), start=1):
        t0 = time.perf_counter()
        with D.single_thread(device):
            model, _ = train_tower_mlp(kind, x_tr, cm_train.digits, init_seeds=[s[j] for _ in scales for s in sub],
                                       order_seeds=[s[0] for _ in scales for s in sub], epochs=epochs, lr=lr,
                                       batch_size=batch_size, hidden=hidden, out_std=out_std,
                                       noncomp_scales=per_run_scale, device=device)
            m = evaluate_runs(model, x_te.to(model.W1), cm_test.digits)
        seconds[kind] = time.perf_counter() - t0
        rows += [{"model": kind, "scale": v, "share": compositional_share(v), "run": r % len(sub),
                  "comp_error": float(m["comp_error"][r]), "digit_acc": float(m["digit_acc"][r])}
                 for r, v in enumerate(per_run_scale)]
    return pd.DataFrame(rows), seconds


def sweep_differences(rows: pd.DataFrame) -> pd.DataFrame:
    """Per scale: split minus dense compositional test error, paired by seed (mean, 95% CI, n), and
    each model's mean error."""
    out = []
    for v, g in rows.groupby("scale"):
        d, s = (g[g.model == k].set_index("run").comp_error.sort_index() for k in ("dense", "split"))
        m, lo, hi = stats.mean_ci((s - d).tolist())
        out.append({"scale": v, "share": compositional_share(v), "mean": m, "low": lo, "high": hi, "n": len(d),
                    "dense": float(d.mean()), "split": float(s.mean())})
    return pd.DataFrame(out)


def figure_compositional_sweep(rows: pd.DataFrame, diffs: pd.DataFrame):
    """Each model's compositional test error and the paired split-minus-dense difference against
    the compositional share of the target (log axis)."""
    err = stats.summarise(rows, ["model", "share"], "comp_error")
    left = plots.line_ci(err, "share", color="model", log_x=True, zero=False, y_title="compositional test error",
                         x_title="compositional share of the target", width=240, height=200)
    right = plots.with_rules(plots.line_ci(diffs, "share", log_x=True, zero=False, y_title="split minus dense (paired)",
                                           x_title="compositional share of the target", width=240, height=200),
                             y={"no difference": 0.0})
    return (left | right).properties(title="CMNIST: where the split architecture's advantage appears")


def share_contrast(rows: pd.DataFrame, scale_a: float, scale_b: float) -> tuple[float, float, float]:
    """Per seed, (split - dense at ``scale_a``) minus (split - dense at ``scale_b``): mean and 95% CI.
    The runs share their seeds across scales, so this difference of differences is paired too."""
    def diff(v):
        g = rows[rows.scale == v]
        d, s = (g[g.model == k].set_index("run").comp_error.sort_index() for k in ("dense", "split"))
        return s - d
    if not {scale_a, scale_b} <= set(rows.scale):
        raise ValueError(f"scales {scale_a}, {scale_b} must both be in the sweep ({sorted(set(rows.scale))})")
    return stats.mean_ci((diff(scale_a) - diff(scale_b)).tolist())


def paper_share_rows(runs: dict[float, PaperRun]) -> pd.DataFrame:
    """Rows ``{model, scale, share, run, comp_error, digit_acc}`` at the last epoch on the test images
    of paper-scale runs per non-compositional scale (for :func:`sweep_differences`)."""
    rows = []
    for v, pr in runs.items():
        last = pr.rows[(pr.rows.split == "test") & (pr.rows.epoch == pr.rows.epoch.max())]
        rows += [{"model": r.model, "scale": float(v), "share": compositional_share(v), "run": int(r.run),
                  "comp_error": float(r.comp_error), "digit_acc": float(r.digit_acc)} for r in last.itertuples()]
    return pd.DataFrame(rows)
