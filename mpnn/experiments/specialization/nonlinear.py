"""Nonlinear hidden layers (the first next check)."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from mpnn import dynamics as D
from mpnn.runtime import plots, stats

from .linear import HELDOUT_ARCHS, _gather, heldout_split, spanning_runs

NONLINEAR_ARCHS = ("dense", "split", "partitioned")     # 'shallow' has no hidden layer to make nonlinear


ACTIVATIONS = D.ACTIVATIONS


def _stacked_runs(archs: Sequence[str], acts: Sequence[str], seeds: Sequence[int], data: D.CompositionalData,
                  hidden: int) -> tuple[tuple[torch.Tensor, torch.Tensor], list[str], list[tuple[str, str]]]:
    """Masks, activation names and ``(activation, architecture)`` labels of every run, in the order
    architecture, activation, seed: all cases stacked for one :func:`D.train_two_layer` pass."""
    masks = D.stack_masks([D.architecture_masks(a, data, hidden) for a in archs], [len(acts) * len(seeds)] * len(archs))
    labels = [(act, arch) for arch in archs for act in acts for _ in seeds]
    return masks, [a for a, _ in labels], labels


def _split_by_case(values: torch.Tensor, labels: list[tuple[str, str]]) -> dict[tuple[str, str], torch.Tensor]:
    """Group the run axis (first) of ``values`` by ``(activation, architecture)`` label."""
    out: dict[tuple[str, str], list[int]] = {}
    for i, lab in enumerate(labels):
        out.setdefault(lab, []).append(i)
    return {lab: values[idx] for lab, idx in out.items()}


def nonlinear_block_norms(data: D.CompositionalData, seeds: Sequence[int], *, hidden: int, lr: float, epochs: int,
                          init_std: float, acts: Sequence[str] = ACTIVATIONS, device="cpu"
                          ) -> dict[tuple[str, str], torch.Tensor]:
    """The three two-layer architectures with each hidden activation, all seeds, one batched pass
    on all patterns; per ``(activation, architecture)`` the Jacobian block norms (R, 4) at the end."""
    masks, codes, labels = _stacked_runs(NONLINEAR_ARCHS, acts, seeds, data, hidden)
    all_seeds = list(seeds) * (len(NONLINEAR_ARCHS) * len(acts))
    with D.single_thread(device):
        res = D.train_two_layer(data.X, data.Y, masks, all_seeds, activation=codes, lr=lr, epochs=epochs,
                                init_std=init_std, record_every=max(1, epochs), device=device)
        norms = D.jacobian_block_norms(res, data.X, data).cpu()
    return _split_by_case(norms, labels)


def nonlinear_norm_frame(norms: dict[tuple[str, str], torch.Tensor]) -> pd.DataFrame:
    """Mean and 95% CI over runs of every block norm per activation and architecture (long form)."""
    rows = []
    for (act, arch), n in norms.items():
        for b, block in enumerate(D.BLOCKS):
            m, lo, hi = stats.mean_ci(n[:, b].tolist())
            rows.append({"activation": act, "architecture": arch, "block": block, "mean": m, "low": lo, "high": hi})
    return pd.DataFrame(rows)


def figure_nonlinear_norms(frame: pd.DataFrame):
    """Heat map of the mean Jacobian block norm, one panel per hidden activation."""
    frame = frame.rename(columns={"mean": "block norm", "activation": "hidden activation"})
    return plots.heatmap(frame, "block", "architecture", "block norm", facet="hidden activation", columns=3,
                         width=150, height=110, fmt=".3f",
                         title="Block norms of the input-output Jacobian (RMS over patterns, mean over runs)")


def heldout_nonlinear(data: D.CompositionalData, seeds: Sequence[int], *, n_train: int, hidden: int, lr: float,
                      epochs: int, init_std: float, archs: Sequence[str] = HELDOUT_ARCHS,
                      acts: Sequence[str] = ACTIVATIONS, device="cpu") -> pd.DataFrame:
    """The held-out-pattern experiment (same training patterns per seed as the linear one,
    :func:`heldout_split`) for each architecture and activation, one batched pass. One row per run:
    final train/test compositional loss, whether its training patterns span Omega."""
    tr, te = heldout_split(data.n_patterns, seeds, n_train)
    k = len(archs) * len(acts)
    rep = lambda M, idx: _gather(M, idx).repeat(k, 1, 1)
    masks, codes, labels = _stacked_runs(archs, acts, seeds, data, hidden)
    Xtr, Ytr, Xte, Yte = rep(data.X, tr), rep(data.Y, tr), rep(data.X, te), rep(data.Y, te)
    with D.single_thread(device):
        res = D.train_two_layer(Xtr, Ytr, masks, list(seeds) * k, activation=codes, lr=lr, epochs=epochs,
                                init_std=init_std, evals={"train": (Xtr, Ytr), "test": (Xte, Yte)}, n2=data.n2,
                                record_every=max(1, epochs), device=device)
    span = spanning_runs(tr).tolist() * k
    return pd.DataFrame([{"activation": act, "architecture": arch, "run": i % len(seeds), "spanning": span[i],
                          "train_comp": float(res.losses["train"][-1, i, 0]),
                          "test_comp": float(res.losses["test"][-1, i, 0])} for i, (act, arch) in enumerate(labels)])


def heldout_nonlinear_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Held-out compositional loss on the runs whose training set spans Omega: mean and 95% CI."""
    s = stats.summarise(rows[rows.spanning], ["activation", "architecture"], "test_comp")
    return s.assign(case=s.activation + ", " + s.architecture)


def figure_heldout_nonlinear(summary: pd.DataFrame):
    """Held-out compositional loss per activation and architecture (bars, 95% CI)."""
    return plots.bar_ci(summary.rename(columns={"case": "activation, architecture"}), "activation, architecture",
                        color="architecture", y_title="held-out compositional loss",
                        title="Held-out patterns, setting (3,2,1,1,2), runs spanning Omega", width=380, height=220)
