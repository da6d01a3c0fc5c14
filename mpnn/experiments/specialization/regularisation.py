"""Approximate modularity by regularisation (the third next check) and its explorer."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from mpnn import dynamics as D
from mpnn.runtime import plots, stats

from .linear import COUPLING_TITLE, PENALTY_NAMES, _gather, heldout_split, spanning_runs

PENALTIES = ("weight_decay", "dropout", "l1", "cross_l1")


def regularisation_sweep(data: D.CompositionalData, seeds: Sequence[int], strengths: dict[str, Sequence[float]], *,
                         n_train: int, hidden: int, lr: float, epochs: int, init_std: float, activation: str = "linear",
                         dropout_seed: int = 0, device="cpu") -> pd.DataFrame:
    """A dense network on the held-out-pattern task for every penalty of ``strengths`` (:data:`PENALTIES`)
    and strength, plus an unregularised baseline (``penalty = "none"``), all in one batched pass.

    One row per run: penalty, strength, seed index, spanning, final train/test compositional loss
    and the Jacobian block norms of ``Gamma_x -> Omega_y`` (coupling) and ``Omega_x -> Omega_y``.
    """
    bad = [p for p in strengths if p not in PENALTIES]
    if bad:
        raise ValueError(f"unknown penalty {bad}; choose from {PENALTIES}")
    cases = [("none", 0.0)] + [(p, float(v)) for p in PENALTIES if p in strengths for v in strengths[p]]
    n, k = len(seeds), len(cases)
    kw = {p: [v if c == p else 0.0 for c, v in cases for _ in seeds] for p in PENALTIES}
    tr, te = heldout_split(data.n_patterns, seeds, n_train)
    rep = lambda M, idx: _gather(M, idx).repeat(k, 1, 1)
    Xtr, Ytr, Xte, Yte = rep(data.X, tr), rep(data.Y, tr), rep(data.X, te), rep(data.Y, te)
    with D.single_thread(device):
        res = D.train_two_layer(Xtr, Ytr, D.architecture_masks("dense", data, hidden), list(seeds) * k,
                                activation=activation, lr=lr, epochs=epochs, init_std=init_std,
                                cross_block=data.blocks()["Gamma_x->Omega_y"], dropout_seed=dropout_seed,
                                evals={"train": (Xtr, Ytr), "test": (Xte, Yte)}, n2=data.n2,
                                record_every=max(1, epochs), device=device, **kw)
        norms = D.jacobian_block_norms(res, data.X, data).cpu()
    span = spanning_runs(tr).tolist()
    return pd.DataFrame([{"penalty": c, "strength": v, "run": i % n, "spanning": span[i % n],
                          "train_comp": float(res.losses["train"][-1, i, 0]),
                          "test_comp": float(res.losses["test"][-1, i, 0]),
                          "coupling": float(norms[i, 1]), "systematic": float(norms[i, 0])}
                         for i, (c, v) in enumerate((c, v) for c, v in cases for _ in seeds)])


def regularisation_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per penalty and strength, on the runs spanning Omega: mean and 95% CI of the held-out
    compositional loss, the training loss and the coupling block norm (one row each, long form)."""
    sp = rows[rows.spanning]
    parts = [stats.summarise(sp, ["penalty", "strength"], m).assign(metric=m) for m in ("test_comp", "train_comp", "coupling")]
    return pd.concat(parts, ignore_index=True)


def figure_regularisation(summary: pd.DataFrame):
    """Held-out compositional loss and coupling norm against the penalty strength, one panel per penalty."""
    reg = summary[summary.penalty != "none"].assign(penalty=lambda d: d.penalty.map(PENALTY_NAMES))
    panel = lambda m, t: plots.line_ci(reg[reg.metric == m], "strength", facet="penalty", columns=4, log_x=True,
                                       independent_y=False, x_title="penalty strength", y_title=t, width=120,
                                       height=130)
    return panel("test_comp", "held-out compositional loss") & panel("coupling", COUPLING_TITLE)


def penalty_extremes(summary: pd.DataFrame, penalty: str, metric: str) -> tuple[float, float]:
    """``(smallest lower CI end, largest upper CI end)`` of ``metric`` over the penalty's strengths."""
    s = summary[(summary.penalty == penalty) & (summary.metric == metric)]
    return float(s.low.min()), float(s.high.max())


def best_strength(summary: pd.DataFrame, penalty: str, metric: str = "test_comp") -> pd.Series:
    """The summary row (``metric``) of the penalty's strength with the lowest mean."""
    s = summary[(summary.penalty == penalty) & (summary.metric == metric)]
    return s.loc[s["mean"].idxmin()]


def regularisation_grid(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per penalty and strength level (level 0: the unregularised baseline, shared by all
    penalties): mean held-out compositional loss, training loss and coupling, and a label."""
    wide = summary.pivot_table(index=["penalty", "strength"], columns="metric", values="mean").reset_index()
    base = wide[wide.penalty == "none"]
    rows = []
    for p in [p for p in PENALTIES if p in set(wide.penalty)]:
        part = pd.concat([base.assign(penalty=p), wide[wide.penalty == p].sort_values("strength")], ignore_index=True)
        rows.append(part.assign(level=range(len(part))))
    grid = pd.concat(rows, ignore_index=True)
    return grid.assign(setting=[f"{p} {s:g}: held-out {t:.3g}, coupling {c:.3f}" for p, s, t, c in
                                zip(grid.penalty, grid.strength, grid.test_comp, grid.coupling)])


def figure_regularisation_explorer(grid: pd.DataFrame, penalty: str | None = None, level: int | None = None):
    """Held-out compositional loss against the coupling, one curve per penalty (strength rising along
    it), the selected setting highlighted: bound controls (site) or the given ``penalty``/``level``."""
    g = grid[["penalty", "level", "strength", "coupling", "test_comp", "train_comp", "setting"]]
    controls = {"penalty": {"kind": "dropdown", "value": penalty or "cross_l1"},
                "level": {"kind": "slider", "name": "strength level (0 = none)",
                          "value": int(g.level.max()) // 2 if level is None else int(level)}}
    if penalty is not None:                                    # live view: one setting, no bound controls needed
        g = g.assign(selected=(g.penalty == penalty) & (g.level == level))
        controls = {"selected": {"kind": "checkbox", "value": True}}
    return plots.operating_point(g, "coupling", "test_comp", controls, color="penalty", label="setting",
                                 x_title=COUPLING_TITLE, y_title="held-out compositional loss",
                                 title="Regularisation: coupling against held-out compositional loss", zero=True)
