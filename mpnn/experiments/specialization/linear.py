"""The linear network: the dataset's spectrum, four architectures (eq. 1), the blocks of the learned map, held-out patterns and the closed-form explorer."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.stats
import torch
from tqdm.auto import tqdm

from mpnn import dynamics as D
from mpnn.runtime import plots, stats

ARCHS = ("dense", "split", "partitioned", "shallow")


HELDOUT_ARCHS = ("dense", "partitioned")


HELDOUT_SETTINGS = ((0, 0, 1, 1, 2.0), (3, 0, 1, 1, 2.0), (3, 2, 0, 0, 0.0), (3, 2, 1, 0, 2.0), (3, 2, 1, 1, 2.0))


HELDOUT_BITS = 3                # every held-out setting lives on the 8 patterns of 3 bits


METRICS = ("comp_error", "noncomp_error", "digit_acc", "number_acc_comp", "number_acc_noncomp")


COMP_CHANCE = 0.90              # compositional error of predicting the mean target (0.1 per digit slot)


ACCURACIES = ("digit_acc", "number_acc_comp", "number_acc_noncomp")    # bounded in [0, 1]


METRIC_NAMES = {"comp_error": "compositional error", "noncomp_error": "non-compositional error"}


PENALTY_NAMES = {"weight_decay": "weight decay", "dropout": "dropout", "l1": "L1, all weights",
                 "cross_l1": "L1, cross block"}


COUPLING_TITLE = "coupling: norm of Gamma_x -> Omega_y"


def band(values, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t 95% CI over ``axis`` for every other index at once (``stats.mean_ci`` per row)."""
    v = np.asarray(values, dtype=float)
    n = v.shape[axis]
    m = v.mean(axis)
    half = scipy.stats.t.ppf(0.975, n - 1) * v.std(axis, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(m)
    return m, m - half, m + half


def spectrum_table(closed: Sequence[D.Mode], modes) -> pd.DataFrame:
    """The closed-form spectrum (:func:`D.mode_spectrum`) next to the numerical SVD (:func:`D.aligned_modes`)."""
    return pd.DataFrame([{"mode": c.name, "s (closed form)": c.s, "s (numerical SVD)": m.s,
                          "input variance d": c.d, "multiplicity": c.multiplicity, "fixed point s/d": c.target}
                         for c, (m, _, _) in zip(sorted(closed, key=lambda c: -c.s), modes)])


def train_architectures(data: D.CompositionalData, seeds: Sequence[int], *, hidden: int, lr: float,
                        lr_shallow: float, epochs: int, init_std: float, device
                        ) -> tuple[dict[str, D.LinearTrajectory], dict[str, float]]:
    """Every architecture of :data:`ARCHS` in its own batched pass (one thread), and its wall time in s."""
    trajectories, seconds = {}, {}
    for arch in tqdm(ARCHS, desc="linear networks"):
        t0 = time.perf_counter()
        with D.single_thread(device):             # tiny matrices: one thread is fastest (see the benchmark)
            trajectories[arch] = D.train_linear(data.X, data.Y, D.architecture_masks(arch, data, hidden), seeds,
                                                lr=lr_shallow if arch == "shallow" else lr, epochs=epochs,
                                                init_std=init_std, device=device)
        seconds[arch] = time.perf_counter() - t0
    return trajectories, seconds


@dataclass
class ModeFit:
    """Learned mode strengths and eq. 1 (discrete-step and gradient-flow rate), per mode (T+1, R, m);
    ``deviation``: per mode, max over epochs, runs and copies of ``|learned - eq. 1| / (s/d)``."""
    learned: list[torch.Tensor]
    closed: list[torch.Tensor]
    flow: list[torch.Tensor]
    deviation: list[float]
    deviation_flow: list[float]


def _max_deviation(modes, learned, predicted) -> list[float]:
    return [float(((l - p).abs() / m.target).amax()) for (m, _, _), l, p in zip(modes, learned, predicted)]


def fit_modes(modes, trajectory: D.LinearTrajectory, epochs: int, lr: float, n_patterns: int) -> ModeFit:
    """Compare the learned singular values of ``trajectory`` with eq. 1 started from its own initial weights."""
    learned = D.mode_strengths(trajectory.maps.cpu(), modes)
    closed = D.predicted_strengths(modes, trajectory.initial, epochs, lr, n_patterns)
    flow = D.predicted_strengths(modes, trajectory.initial, epochs, lr, n_patterns, discrete=False)
    return ModeFit(learned, closed, flow, _max_deviation(modes, learned, closed), _max_deviation(modes, learned, flow))


def singular_value_table(modes, fit: ModeFit) -> pd.DataFrame:
    """One row per distinct mode: s, fixed point, final learned strength and both deviations."""
    return pd.DataFrame({"mode s": [m.s for m, _, _ in modes], "fixed point s/d": [m.target for m, _, _ in modes],
                         "final learned (mean)": [float(l[-1].mean()) for l in fit.learned],
                         "max |sim - closed form| / (s/d), discrete rate": fit.deviation,
                         "same, gradient-flow rate": fit.deviation_flow})


def singular_value_bands(modes, fit: ModeFit, epochs: int, points: int = 150) -> pd.DataFrame:
    """Mean and 95% CI over runs of each curve (simulated, closed form, gradient flow), per mode and epoch."""
    rows = []
    ts = np.arange(0, epochs + 1, max(1, epochs // points))
    for (m, _, _), *curves in zip(modes, fit.learned, fit.closed, fit.flow):
        for name, v in zip(("simulated", "closed form", "gradient flow"), curves):
            mean_, lo_, hi_ = band(v.mean(-1).numpy()[ts])               # (epochs, runs): mean over the mode's copies
            rows += [{"epoch": int(t), "mode": f"s={m.s:.3f}", "curve": name, "mean": a, "low": b, "high": c}
                     for t, a, b, c in zip(ts, mean_, lo_, hi_)]
    return pd.DataFrame(rows)


def figure_singular_values(bands: pd.DataFrame, n_runs: int):
    """Learned mode strengths against eq. 1, one panel per distinct mode (:func:`singular_value_bands`)."""
    facet = "mode (singular value s)"
    return plots.line_ci(bands.rename(columns={"mode": facet}), "epoch", color="curve", facet=facet, columns=2,
                         independent_y=True, y_title="mode strength u", width=220, height=170,
                         title=f"Dense network: learned singular values vs closed form ({n_runs} runs, mean and 95% CI)")


def block_norm_curves(norms: dict[str, torch.Tensor], epochs: int, points: int = 100) -> pd.DataFrame:
    """Mean and 95% CI over runs of the four block norms (:func:`D.block_norms`), per architecture and epoch."""
    ts = np.arange(0, epochs + 1, max(1, epochs // points))
    rows = []
    for arch, n in norms.items():
        mean_, lo_, hi_ = band(n.numpy()[ts], axis=1)                    # (epochs, 4)
        rows += [{"epoch": int(t), "architecture": arch, "block": name, "mean": mean_[i, b], "low": lo_[i, b],
                  "high": hi_[i, b]} for i, t in enumerate(ts) for b, name in enumerate(D.BLOCKS)]
    return pd.DataFrame(rows)


def figure_block_norms(curves: pd.DataFrame):
    """The four block norms over training (:func:`block_norm_curves`), one panel per architecture."""
    return plots.line_ci(curves.rename(columns={"block": "block of the map"}), "epoch", color="block of the map",
                         facet="architecture", columns=2, y_title="Frobenius norm",
                         width=220, height=150)


def final_norm_table(norms: dict[str, torch.Tensor]) -> pd.DataFrame:
    """The four block norms at the last epoch, mean and 95% CI over runs, per architecture."""
    return pd.DataFrame([{"architecture": a, **{b: stats.fmt_ci(n[-1, :, i].tolist(), 4)
                                                for i, b in enumerate(D.BLOCKS)}} for a, n in norms.items()])


def heldout_split(P: int, seeds: Sequence[int], n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per run, ``n_train`` training and ``P - n_train`` test patterns from a child of the run's seed."""
    if not 1 <= n_train < P:
        raise ValueError(f"n_train must be between 1 and {P - 1} (patterns left to test), got {n_train}")
    # the training patterns come from a child of the run's seed, independent of its initial weights
    perm_seeds = [int(np.random.SeedSequence([int(s), 1]).generate_state(1)[0]) for s in seeds]
    perms = torch.stack([torch.randperm(P, generator=torch.Generator().manual_seed(ps))
                         for ps in perm_seeds])                               # (R, P)
    return perms[:, :n_train], perms[:, n_train:]


def _gather(M: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Columns ``idx`` (R, n) of ``M`` (rows, P) for every run: (R, rows, n)."""
    return M.T[idx].transpose(1, 2)


def heldout_experiments(cases: Sequence[tuple[D.CompositionalData, str]], seeds: Sequence[int], *, n_train: int = 3,
                        hidden: int = 50, lr: float = 0.02, epochs: int = 500, init_std: float = 1e-3,
                        device="cpu") -> list[dict[str, torch.Tensor]]:
    """:func:`heldout_experiment` for several ``(dataset, architecture)`` cases, all trained in one
    batched pass (:func:`D.train_linear_groups`); results identical in value to one call per case."""
    groups, splits = [], []
    for data, arch in cases:
        tr, te = heldout_split(data.n_patterns, seeds, n_train)
        splits.append((tr, te))
        groups.append(D.LinearGroup(_gather(data.X, tr), _gather(data.Y, tr), D.architecture_masks(arch, data, hidden),
                                    seeds, lr))
    trajs = D.train_linear_groups(groups, epochs=epochs, init_std=init_std, device=device)
    out = []
    for (data, _), (tr, te), traj in zip(cases, splits, trajs):
        maps = traj.maps.cpu()
        out.append({"train": D.block_losses(maps, _gather(data.X, tr), _gather(data.Y, tr), data.n2),
                    "test": D.block_losses(maps, _gather(data.X, te), _gather(data.Y, te), data.n2),
                    "train_idx": tr, "maps_final": maps[-1]})
    return out


def heldout_experiment(data: D.CompositionalData, arch: str, seeds: Sequence[int], *, n_train: int = 3,
                       hidden: int = 50, lr: float = 0.02, epochs: int = 500, init_std: float = 1e-3,
                       device="cpu") -> dict[str, torch.Tensor]:
    """Train on ``n_train`` random patterns per run, test on the rest; all runs in one batched pass.

    Each run draws its own training patterns and initial weights from its own seed. Returns losses
    (T+1, R, 2) (Omega_y, Gamma_y) for ``train`` and ``test`` and the drawn ``train_idx`` (R, n_train).
    """
    return heldout_experiments([(data, arch)], seeds, n_train=n_train, hidden=hidden, lr=lr, epochs=epochs,
                               init_std=init_std, device=device)[0]


def run_heldout(seeds: Sequence[int], *, dataset_seed: int, n_train: int, hidden: int, lr: float, epochs: int,
                init_std: float, device, settings=HELDOUT_SETTINGS) -> dict[tuple, dict[str, torch.Tensor]]:
    """:func:`heldout_experiment` for every setting ``(n1, n2, k1, k2, r)`` and both held-out architectures.

    One batched pass per case on one thread: a single zero-padded pass for all cases
    (:func:`heldout_experiments`) gives the same values but was measured three times slower.
    """
    heldout = {}
    for st in tqdm(settings, desc="held-out settings"):
        data = D.make_dataset(*st, pattern_bits=HELDOUT_BITS, generator=torch.Generator().manual_seed(dataset_seed))
        for arch in HELDOUT_ARCHS:
            with D.single_thread(device):
                heldout[st, arch] = heldout_experiment(data, arch, seeds, n_train=n_train, hidden=hidden, lr=lr,
                                                       epochs=epochs, init_std=init_std, device=device)
    return heldout


def distinct_training_sets(train_idx: torch.Tensor) -> int:
    """How many different sets of training patterns the runs drew (order ignored)."""
    return len({tuple(sorted(ix)) for ix in train_idx.tolist()})


def spanning_runs(train_idx: torch.Tensor, bits: int = HELDOUT_BITS) -> torch.Tensor:
    """(R,) bool: do the run's training patterns span Omega (full-rank ``Omega_x`` on them)?"""
    omega = D.binary_patterns(bits).T                                        # (P, bits)
    return torch.linalg.matrix_rank(omega[train_idx]) == bits


def _setting_name(st) -> str:
    return str(tuple(int(x) for x in st))


def heldout_bands(heldout: dict, epochs: int, points: int = 50) -> pd.DataFrame:
    """Mean and 95% CI over runs of the train/test losses per setting, architecture and output part.

    A part the setting has no output for (``n2 = 0``: no Omega_y; ``k2 = 0``: no Gamma_y) is left out.
    ``panel`` names setting and part, ``curve`` architecture and split (the builders' facet and colour).
    """
    rows = []
    ts = np.arange(0, epochs + 1, max(1, epochs // points))
    for (st, arch), res in heldout.items():
        for split in ("train", "test"):
            for j, part in enumerate(("compositional", "non-compositional")):
                if (part == "compositional" and st[1] == 0) or (part == "non-compositional" and st[3] == 0):
                    continue
                mean_, lo_, hi_ = band(res[split][..., j].numpy()[ts])
                rows += [{"setting": _setting_name(st), "architecture": arch, "split": split, "output": part,
                          "panel": f"{_setting_name(st)} {part}", "curve": f"{arch}, {split}",
                          "epoch": int(t), "mean": a, "low": b, "high": c}
                         for t, a, b, c in zip(ts, mean_, lo_, hi_)]
    return pd.DataFrame(rows)


def figure_heldout_losses(bands: pd.DataFrame):
    """Train and test losses of both architectures over training (:func:`heldout_bands`), one panel
    per setting and output part."""
    names = {"panel": "setting (n1, n2, k1, k2, r) and output", "curve": "architecture, patterns"}
    return plots.line_ci(bands.rename(columns=names), "epoch", color=names["curve"], facet=names["panel"], columns=2,
                         independent_y=True, y_title="loss", width=220, height=140,
                         title="Held-out patterns: loss per setting and output, mean and 95% CI")


def heldout_table(heldout: dict, full: torch.Tensor, settings=HELDOUT_SETTINGS) -> pd.DataFrame:
    """Final held-out compositional loss per setting with an Omega_y (``n2 > 0``) and architecture,
    over all runs and over the runs whose training patterns span Omega (``full``)."""
    table = []
    for st in settings:
        if st[1] == 0:
            continue
        for arch in HELDOUT_ARCHS:
            test_c = heldout[st, arch]["test"][-1, :, 0]
            table.append({"setting": _setting_name(st), "architecture": arch,
                          "test compositional loss, all runs": stats.fmt_ci(test_c.tolist(), 4),
                          "runs spanning Omega": int(full.sum()),
                          "same, on runs spanning Omega": stats.fmt_ci(test_c[full].tolist(), 4) if full.sum() > 1 else "n/a"})
    return pd.DataFrame(table)


def full_rank_table(bits: Sequence[int] = (3, 4)) -> pd.DataFrame:
    """:func:`D.full_rank_probability` for every number of patterns j, one column per n1."""
    rows = [{"n1": n1, "patterns j": j, "P(full rank)": D.full_rank_probability(n1, j)}
            for n1 in bits for j in range(1, 2 ** n1 + 1)]
    return pd.DataFrame(rows).pivot(index="patterns j", columns="n1", values="P(full rank)")


def closed_form_curves(n1: int, n2: int, k1: int, k2: int, r: float, *, lr: float = 0.02, epochs: int = 300,
                       u0: float = 1e-6, every: int = 3) -> pd.DataFrame:
    """Eq. 1 for each distinct mode of the dataset, from the initial strength ``u0`` (discrete-step rate)."""
    if n2 > n1:
        raise ValueError(f"n2 ({n2}) must not exceed n1 ({n1}): Omega_y copies n2 rows of Omega_x")
    P = 2 ** n1
    t = torch.arange(epochs + 1, dtype=torch.float64)
    rows = []
    for m in D.mode_spectrum(n1, n2, k1, k2, r):
        u = D.sigmoid_trajectory(t, m.s, m.d, torch.tensor([u0]), 2 * math.log1p(lr * P * m.s))[0]
        rows += [{"epoch": int(i), "u": float(v), "mode": f"{m.name} (s={m.s:.3f}, x{m.multiplicity})"}
                 for i, v in zip(t[::every], u[::every])]
    return pd.DataFrame(rows)


def figure_closed_form(n1: int, n2: int, k1: int, k2: int, r: float, *, lr: float = 0.02, epochs: int = 300):
    """The explorer's view: eq. 1 per mode, its fixed points s/d as rules, and the converged coupling."""
    curves = closed_form_curves(n1, n2, k1, k2, r, lr=lr, epochs=epochs)
    coupling = D.converged_coupling(n2, k1, r, 2 ** n1)
    chart = plots.line_ci(curves, "epoch", color="mode", y="u", low="u", high="u", y_title="mode strength",
                          width=420, height=260,
                          title=f"n1={n1} n2={n2} k1={k1} k2={k2} r={r}: dense ||Gamma_x->Omega_y|| at convergence "
                                f"= {coupling:.3f}")
    return plots.with_rules(chart, y={f"s/d = {m.target:.3f}": m.target for m in D.mode_spectrum(n1, n2, k1, k2, r)})
