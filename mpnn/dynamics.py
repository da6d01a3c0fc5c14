"""Learning dynamics of linear networks on compositional datasets (Jarvis, Klein, Rosman & Saxe 2023).

Dataset (one column per pattern, ``P = 2**pattern_bits`` patterns)::

    X = [Omega_x; Gamma_x]   Omega_x: n1 x P, the first n1 bits of every binary pattern, coded +-1
                             Gamma_x: k1 stacked copies of r * I_P   (one "name" per pattern)
    Y = [Omega_y; Gamma_y]   Omega_y: n2 rows of Omega_x drawn at random, Gamma_y: k2 copies of r * I_P

Omega is *compositional* (a low-rank structure shared by all patterns); Gamma is not (one private
direction per pattern). A two-layer linear network ``Y_hat = W2 W1 X`` is trained by full-batch
gradient descent on ``L = 1/2 sum_p ||y_p - W2 W1 x_p||^2``, i.e. ``W <- W - lr * dL/dW``.

With ``Sigma_yx = Y X^T / P = U S V^T`` and ``Sigma_x = X X^T / P`` sharing the right singular
vectors ``V`` (true for these datasets: in pattern space ``X^T X`` and ``Y^T Y`` are both diagonal
in the basis {rows of Omega_x, their complement}), the mode strength ``u_a = u_a^T W2 W1 v_a`` of a
balanced network obeys (Saxe, McClelland & Ganguli 2014, with ``tau = 1 / (P lr)``)::

    tau du/dt = 2 u (s - d u)      =>    u(t) = (s/d) / (1 + (s / (d u0) - 1) exp(-2 s t / tau))   (eq. 1)

where ``s`` is the singular value and ``d`` the input variance of the mode. The distinct values are
(``P = 2**n1``, see :func:`mode_spectrum`)::

    s = sqrt((P + k1 r^2)(P + k2 r^2)) / P,  d = (P + k1 r^2) / P   x n2        (Omega_y modes)
    s = sqrt((P + k1 r^2) k2 r^2) / P,       d = (P + k1 r^2) / P   x n1 - n2   (Omega_x -> Gamma_y)
    s = sqrt(k1 k2) r^2 / P,                 d = k1 r^2 / P         x P - n1    (Gamma_x -> Gamma_y)

The learned map splits into four blocks (rows: outputs, columns: inputs); the Gamma_x -> Omega_y
block is the *non-systematic* coupling: a compositional output read from a pattern's name.
Architectures are expressed as binary masks on the two weight matrices (:func:`architecture_masks`),
so every variant and every run trains in one batched pass (``torch.bmm`` over runs).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from mpnn.infra.determinism import cpu_threads

__all__ = [
    "CompositionalData", "Mode", "LinearTrajectory", "ARCHITECTURES", "BLOCKS",
    "binary_patterns", "make_dataset", "mode_spectrum", "aligned_modes", "sigmoid_trajectory",
    "architecture_masks", "init_weights", "LinearGroup", "train_linear_groups", "train_linear",
    "train_linear_loop", "block_norms", "converged_coupling",
    "mode_strengths", "predicted_strengths", "block_losses",
    "full_rank_probability", "single_thread",
]

ARCHITECTURES = ("dense", "split", "partitioned", "shallow")
BLOCKS = ("Omega_x->Omega_y", "Gamma_x->Omega_y", "Omega_x->Gamma_y", "Gamma_x->Gamma_y")


# ------------------------------------------------------------------------------------- datasets

def binary_patterns(bits: int) -> torch.Tensor:
    """All ``2**bits`` binary patterns coded +-1, one per column: (bits, 2**bits), float64.

    Column ``p`` is the binary expansion of ``p`` (most significant bit in row 0), 0 -> -1, 1 -> +1.
    """
    if bits < 0:
        raise ValueError(f"bits must be >= 0, got {bits}")
    p = torch.arange(2 ** bits)
    shifts = torch.arange(bits - 1, -1, -1)
    return ((p[None, :] >> shifts[:, None]) & 1).double() * 2 - 1


@dataclass(frozen=True)
class CompositionalData:
    """A dataset of the family: ``X`` (d_in, P), ``Y`` (d_out, P) and its parameters."""
    X: torch.Tensor
    Y: torch.Tensor
    n1: int
    n2: int
    k1: int
    k2: int
    r: float
    omega_rows: tuple[int, ...]      # rows of Omega_x copied into Omega_y

    @property
    def n_patterns(self) -> int:
        return self.X.shape[1]

    @property
    def d_in(self) -> int:
        return self.X.shape[0]

    @property
    def d_out(self) -> int:
        return self.Y.shape[0]

    def blocks(self) -> dict[str, tuple[slice, slice]]:
        """``{block name: (output rows, input columns)}`` of the learned map, in :data:`BLOCKS` order."""
        ox, gx = slice(0, self.n1), slice(self.n1, self.d_in)
        oy, gy = slice(0, self.n2), slice(self.n2, self.d_out)
        return dict(zip(BLOCKS, [(oy, ox), (oy, gx), (gy, ox), (gy, gx)]))


def make_dataset(n1: int = 3, n2: int = 1, k1: int = 3, k2: int = 1, r: float = 1.0, *,
                 pattern_bits: int | None = None, generator: torch.Generator | None = None,
                 ) -> CompositionalData:
    """Build ``X = [Omega_x; Gamma_x]``, ``Y = [Omega_y; Gamma_y]`` (module docstring).

    ``pattern_bits`` (default ``n1``) fixes the number of patterns ``P = 2**pattern_bits``; Omega_x
    uses the first ``n1`` bits, so ``n1 = 0`` with ``pattern_bits = 3`` is the purely
    non-compositional dataset on 8 patterns. ``generator`` draws the ``n2`` rows of Omega_y.
    """
    bits = n1 if pattern_bits is None else pattern_bits
    for name, v in (("n1", n1), ("n2", n2), ("k1", k1), ("k2", k2), ("pattern_bits", bits)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if n2 > n1:
        raise ValueError(f"n2 ({n2}) cannot exceed n1 ({n1}): Omega_y copies n2 rows of Omega_x")
    if n1 > bits:
        raise ValueError(f"n1 ({n1}) cannot exceed pattern_bits ({bits})")
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    P = 2 ** bits
    omega_x = binary_patterns(bits)[:n1]                                    # (n1, P)
    eye = r * torch.eye(P, dtype=torch.float64)
    X = torch.cat([omega_x] + [eye] * k1, 0)                                # (n1 + k1 P, P)
    rows = torch.randperm(n1, generator=generator)[:n2].sort().values if n2 else torch.empty(0, dtype=torch.long)
    Y = torch.cat([omega_x[rows]] + [eye] * k2, 0)                          # (n2 + k2 P, P)
    if X.shape[0] == 0 or Y.shape[0] == 0:
        raise ValueError(f"empty input or output: n1={n1}, k1={k1}, n2={n2}, k2={k2}")
    return CompositionalData(X, Y, n1, n2, k1, k2, float(r), tuple(int(i) for i in rows))


# ------------------------------------------------------------------------- closed-form spectrum

@dataclass(frozen=True)
class Mode:
    """One distinct singular value ``s`` of Sigma_yx, its input variance ``d``, multiplicity."""
    name: str
    s: float
    d: float
    multiplicity: int

    @property
    def target(self) -> float:
        """Fixed point ``s / d`` of eq. 1: the strength of the mode in the converged map."""
        return self.s / self.d


def mode_spectrum(n1: int, n2: int, k1: int, k2: int, r: float, pattern_bits: int | None = None) -> list[Mode]:
    """The distinct non-zero singular values of ``Sigma_yx = Y X^T / P`` (``P = 2**pattern_bits``), closed form."""
    P = 2 ** (n1 if pattern_bits is None else pattern_bits)
    a, b = P + k1 * r ** 2, P + k2 * r ** 2
    cand = [("Omega_y", math.sqrt(a * b) / P, a / P, n2),
            ("Omega_x->Gamma_y", math.sqrt(a * k2 * r ** 2) / P, a / P, n1 - n2),
            ("Gamma_x->Gamma_y", math.sqrt(k1 * k2) * r ** 2 / P, k1 * r ** 2 / P, P - n1)]
    return [Mode(n, s, d, m) for n, s, d, m in cand if m > 0 and s > 0]


def aligned_modes(data: CompositionalData, tol: float = 1e-9) -> list[tuple[Mode, torch.Tensor, torch.Tensor]]:
    """Numerical SVD of Sigma_yx grouped by distinct singular value: ``[(mode, U_a, V_a)]``.

    ``U_a`` (d_out, m), ``V_a`` (d_in, m) span the mode's output / input subspaces; ``d`` is the
    Rayleigh quotient of Sigma_x on ``V_a`` (exactly an eigenvalue here, checked by the tests).
    """
    P = data.n_patterns
    syx = data.Y @ data.X.T / P
    sx = data.X @ data.X.T / P
    U, S, Vh = torch.linalg.svd(syx, full_matrices=False)
    keep = S > tol * max(1.0, float(S[0]))
    U, S, V = U[:, keep], S[keep], Vh[keep].T
    groups, start = [], 0
    for i in range(1, len(S) + 1):
        if i == len(S) or abs(float(S[i] - S[start])) > 1e-7 * float(S[0]):
            Va = V[:, start:i]
            d = float(torch.diagonal(Va.T @ sx @ Va).mean())
            groups.append((Mode(f"s={float(S[start]):.4f}", float(S[start]), d, i - start), U[:, start:i], Va))
            start = i
    return groups


def sigmoid_trajectory(t: torch.Tensor, s: float, d: float, u0: torch.Tensor | float, rate: float) -> torch.Tensor:
    """Eq. 1: ``u(t) = (s/d) / (1 + (s/(d u0) - 1) exp(-rate t))``; ``rate = 2 s / tau`` (per epoch)."""
    u0 = torch.as_tensor(u0, dtype=torch.float64)
    K = s / d
    t = torch.as_tensor(t, dtype=torch.float64)
    return K / (1 + (K / u0[..., None] - 1) * torch.exp(-rate * t))


# ------------------------------------------------------------------------------------- networks

def architecture_masks(arch: str, data: CompositionalData, hidden: int = 50
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Binary masks ``(M1, M2)`` of ``W1`` (H, d_in) and ``W2`` (d_out, H) for each architecture.

    * ``dense``: one hidden layer of ``hidden`` units, all connections;
    * ``split``: two modules of ``hidden`` units, both seeing the whole input; module 1 feeds only
      Omega_y, module 2 only Gamma_y (only the output is partitioned);
    * ``partitioned``: as ``split`` but module 1 sees only Omega_x, so Gamma_x -> Omega_y is cut;
    * ``shallow``: a single layer ``W`` (d_out, d_in): returns ``(ones, None)``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    if hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}")
    d_in, d_out, n1, n2 = data.d_in, data.d_out, data.n1, data.n2
    f64 = torch.float64
    if arch == "shallow":
        return torch.ones(d_out, d_in, dtype=f64), None
    if arch == "dense":
        return torch.ones(hidden, d_in, dtype=f64), torch.ones(d_out, hidden, dtype=f64)
    m1 = torch.ones(2 * hidden, d_in, dtype=f64)
    m2 = torch.zeros(d_out, 2 * hidden, dtype=f64)
    m2[:n2, :hidden] = 1                                   # module 1 -> Omega_y
    m2[n2:, hidden:] = 1                                   # module 2 -> Gamma_y
    if arch == "partitioned":
        m1[:hidden, n1:] = 0                               # module 1 sees Omega_x only
    return m1, m2


def init_weights(seeds: Sequence[int], masks: tuple[torch.Tensor, torch.Tensor | None], init_std: float,
                 ) -> list[torch.Tensor]:
    """Independent N(0, init_std^2) weights per run, one ``torch.Generator`` per seed, masked.

    Returns ``[W1]`` (R, d_out, d_in) for a shallow net or ``[W1 (R, H, d_in), W2 (R, d_out, H)]``.
    """
    if init_std <= 0:
        raise ValueError(f"init_std must be > 0, got {init_std}")
    layers = [m for m in masks if m is not None]
    per_run = []
    for seed in seeds:       # one generator per run: runs are independent (the original reused one seed)
        g = torch.Generator().manual_seed(int(seed))
        per_run.append([torch.randn(m.shape, generator=g, dtype=torch.float64) for m in layers])
    return [torch.stack([w[i] for w in per_run]) * init_std * m for i, m in enumerate(layers)]


@dataclass
class LinearTrajectory:
    """Training record: the map ``W(t)`` (T+1, R, d_out, d_in) and the weights at t = 0 and t = T."""
    maps: torch.Tensor
    initial: list[torch.Tensor]
    final: list[torch.Tensor]
    lr: float


@contextlib.contextmanager
def single_thread(device: torch.device | str = "cpu"):
    """Run torch on one CPU thread inside the block (no-op for CUDA).

    The matrices here are tiny (e.g. 9 x 50 x 27 per run): splitting them over threads costs more
    than it saves, and on an oversubscribed CPU it can be many times slower (see the benchmark).
    """
    with cpu_threads(1, device):
        yield


def _as_batch(M: torch.Tensor, R: int) -> torch.Tensor:
    return M.expand(R, *M.shape[-2:]) if M.dim() == 2 else M


@dataclass(frozen=True)
class LinearGroup:
    """One batch of runs for :func:`train_linear_groups`: data ``X`` (d_in, P) or (R, d_in, P), ``Y``
    likewise, the architecture ``masks``, one seed per run and the group's learning rate."""
    X: torch.Tensor
    Y: torch.Tensor
    masks: tuple[torch.Tensor, torch.Tensor | None]
    seeds: Sequence[int]
    lr: float


def _pad(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``t`` at the end of every axis to ``shape``."""
    out = t.new_zeros(tuple(shape))
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def train_linear_groups(groups: Sequence[LinearGroup], *, epochs: int = 300, init_std: float = 2e-4,
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                        ) -> list[LinearTrajectory]:
    """Train several groups (architectures, datasets, learning rates) in one batched pass.

    Each group's weights are drawn exactly as :func:`train_linear` draws them, then every tensor is
    zero-padded to the largest ``(H, d_in, d_out, P)`` of all groups and the runs are stacked. A padded
    hidden unit, input, output or pattern is zero with a zero mask, so it contributes exact zeros to
    every product and stays zero: each run follows its own group's dynamics. The learning rate is
    a per-run tensor. All groups must have the same depth (all shallow or all two-layer).
    One step, with ``E = Y - W2 W1 X``::

        W1 += lr * M1 * (W2^T E X^T)        W2 += lr * M2 * (E (W1 X)^T)

    (``W += lr * M * (E X^T)`` for a shallow net). Masked entries start at zero and stay exactly zero.
    Returns one :class:`LinearTrajectory` per group, in the group's own shapes.
    """
    if epochs < 0 or any(g.lr <= 0 for g in groups) or not groups:
        raise ValueError(f"need groups, epochs >= 0 and lr > 0, got epochs={epochs}, "
                         f"lr={[g.lr for g in groups]}")
    depths = {sum(m is not None for m in g.masks) for g in groups}
    if len(depths) != 1:
        raise ValueError("all groups must have the same depth (all shallow or all two-layer)")
    dev = torch.device(device)
    sizes = [len(g.seeds) for g in groups]
    xs = [_as_batch(g.X.to(dtype), n) for g, n in zip(groups, sizes)]           # (R_g, d_in, P)
    ys = [_as_batch(g.Y.to(dtype), n) for g, n in zip(groups, sizes)]
    d_in = max(x.shape[1] for x in xs)
    d_out = max(y.shape[1] for y in ys)
    P = max(x.shape[2] for x in xs)
    init = [init_weights(g.seeds, g.masks, init_std) for g in groups]
    masks = [[m for m in g.masks if m is not None] for g in groups]
    if depths == {1}:
        shapes = [(d_out, d_in)]
    else:
        H = max(ms[0].shape[0] for ms in masks)
        shapes = [(H, d_in), (d_out, H)]
    cat = lambda ts, shape: torch.cat([_pad(t, (t.shape[0], *shape)) for t in ts]).to(dev)
    ws = [cat([w[k] for w in init], shp) for k, shp in enumerate(shapes)]
    ms = [cat([_as_batch(m[k].to(dtype), n) for m, n in zip(masks, sizes)], shp) for k, shp in enumerate(shapes)]
    Xb = cat(xs, (d_in, P))
    Yb = cat(ys, (d_out, P))
    lr = torch.cat([torch.full((n, 1, 1), float(g.lr), dtype=dtype) for g, n in zip(groups, sizes)]).to(dev)
    initial = [w.clone() for w in ws]

    def full_map(ws):
        return ws[0] if len(ws) == 1 else torch.bmm(ws[1], ws[0])   # (R, d_out, d_in)

    R = Xb.shape[0]
    maps = torch.empty(epochs + 1, R, d_out, d_in, device=dev, dtype=dtype)
    maps[0] = full_map(ws)
    XXt = torch.bmm(Xb, Xb.transpose(1, 2))                    # (R, d_in, d_in)
    YXt = torch.bmm(Yb, Xb.transpose(1, 2))                    # (R, d_out, d_in)
    lm = [lr * m for m in ms]                                  # learning rate times mask, once
    for t in range(epochs):
        if len(ws) == 1:
            G = YXt - torch.bmm(ws[0], XXt)                    # E X^T, (R, d_out, d_in)
            ws[0] = ws[0] + lm[0] * G
        else:
            W1, W2 = ws
            G = YXt - torch.bmm(maps[t], XXt)                  # E X^T, (R, d_out, d_in); maps[t] = W2 W1
            gW1 = torch.bmm(W2.transpose(1, 2), G)             # W2^T E X^T, (R, H, d_in)
            gW2 = torch.bmm(G, W1.transpose(1, 2))             # E X^T W1^T, (R, d_out, H)
            ws = [W1 + lm[0] * gW1, W2 + lm[1] * gW2]
        maps[t + 1] = full_map(ws)
    out, start = [], 0
    for g, n, x, y, w0 in zip(groups, sizes, xs, ys, init):
        rs = slice(start, start + n)
        start += n
        crop = lambda w, ref, rs=rs: w[(rs, *(slice(0, k) for k in ref.shape[1:]))]  # noqa: E731
        out.append(LinearTrajectory(maps[:, rs, :y.shape[1], :x.shape[1]], [crop(w, r) for w, r in zip(initial, w0)],
                                    [crop(w, r) for w, r in zip(ws, w0)], g.lr))
    return out


def train_linear(X: torch.Tensor, Y: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor | None],
                 seeds: Sequence[int], *, lr: float = 0.02, epochs: int = 300, init_std: float = 2e-4,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                 ) -> LinearTrajectory:
    """Full-batch gradient descent on ``1/2 sum_p ||y_p - W2 W1 x_p||^2`` for all runs in one pass.

    ``X`` (d_in, P) or per-run (R, d_in, P_train); ``Y`` likewise. The update is that of
    :func:`train_linear_groups` (this is its one-group case).
    """
    if epochs < 0 or lr <= 0:
        raise ValueError(f"need epochs >= 0 and lr > 0, got epochs={epochs}, lr={lr}")
    return train_linear_groups([LinearGroup(X, Y, masks, seeds, lr)], epochs=epochs, init_std=init_std,
                               device=device, dtype=dtype)[0]


def train_linear_loop(X, Y, masks, seeds, *, lr=0.02, epochs=300, init_std=2e-4, device="cpu",
                      dtype=torch.float64) -> LinearTrajectory:
    """Reference: the same training one run at a time (used by the tests and the benchmark)."""
    runs = [train_linear(X if X.dim() == 2 else X[i:i + 1], Y if Y.dim() == 2 else Y[i:i + 1], masks,
                         [s], lr=lr, epochs=epochs, init_std=init_std, device=device, dtype=dtype)
            for i, s in enumerate(seeds)]
    cat = lambda xs, dim: torch.cat(xs, dim)
    return LinearTrajectory(cat([r.maps for r in runs], 1),
                            [cat([r.initial[k] for r in runs], 0) for k in range(len(runs[0].initial))],
                            [cat([r.final[k] for r in runs], 0) for k in range(len(runs[0].final))], lr)


# ------------------------------------------------------------------------------------- analysis

def block_norms(maps: torch.Tensor, data: CompositionalData) -> torch.Tensor:
    """Frobenius norms of the four blocks of ``maps`` (..., d_out, d_in) -> (..., 4), :data:`BLOCKS` order."""
    return torch.stack([maps[..., rows, cols].pow(2).sum((-2, -1)).sqrt()
                        for rows, cols in data.blocks().values()], -1)


def converged_coupling(n2: int, k1: int, r: float, n_patterns: int) -> float:
    """``||Gamma_x -> Omega_y||`` of the converged dense (or split) network, from a small initialisation.

    Gradient descent from near zero converges to the minimum-norm interpolating map, whose Omega_y
    rows are ``omega^T X^T / (P + k1 r^2)``: the block has norm ``r sqrt(n2 k1 P) / (P + k1 r^2)``.
    """
    P = n_patterns
    return r * math.sqrt(n2 * k1 * P) / (P + k1 * r ** 2)


def mode_strengths(maps: torch.Tensor, modes) -> list[torch.Tensor]:
    """Learned singular values per distinct mode: singular values of ``U_a^T W V_a``, (..., m_a) each."""
    return [torch.linalg.svdvals(Ua.T.to(maps) @ maps @ Va.to(maps)) for _, Ua, Va in modes]


def predicted_strengths(modes, initial: list[torch.Tensor], epochs: int, lr: float, n_patterns: int,
                        *, discrete: bool = True) -> list[torch.Tensor]:
    """Eq. 1 for every mode and run, started from the network's own initial weights.

    Early in training (``W ~ 0``) ``A = W1 V_a`` and ``B^T = W2^T U_a`` obey ``dA = s B^T, dB^T = s A``,
    so ``A + B^T`` grows and ``A - B^T`` decays: the balanced initial strengths are the eigenvalues
    of ``(A0 + B0^T)^T (A0 + B0^T) / 4``, (R, m_a). The rate is ``2 s / tau = 2 lr P s`` per epoch
    (gradient flow) or, with ``discrete=True``, ``2 log(1 + lr P s)``, the exact early growth factor
    of a gradient-descent step. Returns per mode a tensor (epochs + 1, R, m_a), descending order.
    """
    W1, W2 = initial
    t = torch.arange(epochs + 1, dtype=torch.float64)
    out = []
    for mode, Ua, Va in modes:
        A = W1.double().cpu() @ Va                                             # (R, H, m)
        Bt = W2.double().cpu().transpose(1, 2) @ Ua                            # (R, H, m)
        S = A + Bt
        u0 = torch.linalg.eigvalsh(S.transpose(1, 2) @ S).flip(-1) / 4        # (R, m) descending
        step = lr * n_patterns * mode.s
        rate = 2 * math.log1p(step) if discrete else 2 * step
        out.append(sigmoid_trajectory(t, mode.s, mode.d, u0, rate).permute(2, 0, 1))  # (T+1, R, m)
    return out


def block_losses(maps: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, n2: int) -> torch.Tensor:
    """Mean over patterns of the summed squared error on Omega_y rows and on Gamma_y rows.

    ``maps`` (T, R, d_out, d_in); ``X``/``Y`` (d_in, P) or per run (R, d_in, P) -> (T, R, 2).
    """
    pred = maps @ X                                                            # (T, R, d_out, P)
    err = (pred - Y).pow(2)
    comp = err[..., :n2, :].sum(-2).mean(-1)
    non = err[..., n2:, :].sum(-2).mean(-1)
    return torch.stack([comp, non], -1)


def full_rank_probability(n1: int, j: int) -> float:
    """Exact probability that ``j`` distinct patterns drawn uniformly from the ``2**n1`` +-1 patterns
    give a full-rank (rank ``n1``) covariance ``Omega Omega^T / j``: enumerates all subsets at once."""
    P = 2 ** n1
    if not 1 <= j <= P:
        raise ValueError(f"j must be between 1 and 2**n1 = {P}, got {j}")
    if math.comb(P, j) > 2_000_000:
        raise ValueError(f"C({P}, {j}) subsets is too many to enumerate; use n1 <= 4")
    pats = binary_patterns(n1).T                                               # (P, n1)
    subsets = torch.tensor(list(itertools.combinations(range(P), j)))          # (C, j)
    omega = pats[subsets]                                                      # (C, j, n1)
    cov = omega.transpose(1, 2) @ omega / j                                    # (C, n1, n1)
    return float((torch.linalg.matrix_rank(cov) == n1).double().mean())


# ------------------------------------------------- nonlinear hidden layer and soft modularity
#
# The same two-layer network with an elementwise nonlinearity ``f`` on the hidden layer,
# ``Y_hat = W2 f(W1 X)``, trained by full-batch gradient descent on
# ``L = 1/2 sum_p ||y_p - y_hat_p||^2 + penalties``. Every run has its own activation, mask and
# penalty strengths, so a whole sweep (architectures x activations x strengths x seeds) is one
# batched pass. The penalties (all zero by default):
#
# * ``weight_decay`` ``wd/2 (||W1||^2 + ||W2||^2)``;
# * ``l1`` ``l1 (|W1|_1 + |W2|_1)``, applied as a proximal (soft-threshold) step after each update;
# * ``cross_l1`` ``c |(W2 W1)[cross]|_1`` on the block ``cross = (rows, cols)`` of the product
#   (for a linear net, the Gamma_x -> Omega_y block of the map): a soft partition that names the block;
# * ``dropout`` inverted dropout of hidden units with probability ``p`` (a fresh mask per step and
#   pattern; evaluation without dropout).

ACTIVATIONS = ("linear", "relu", "tanh")


def _act(h: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(h)`` and ``f'(h)`` for per-run activation codes (R, 1, 1): 0 linear, 1 relu, 2 tanh."""
    th = torch.tanh(h)
    relu = code == 1
    tanh = code == 2
    a = torch.where(relu, h.clamp_min(0), torch.where(tanh, th, h))
    da = torch.where(relu, (h > 0).to(h), torch.where(tanh, 1 - th * th, torch.ones_like(h)))
    return a, da


def _per_run(value, R: int, name: str, dtype=torch.float64) -> torch.Tensor:
    """A scalar or one value per run -> (R, 1, 1)."""
    t = torch.as_tensor(value, dtype=dtype).flatten()
    if t.numel() == 1:
        t = t.expand(R)
    if t.numel() != R:
        raise ValueError(f"{name}: need one value or one per run ({R}), got {t.numel()}")
    return t.reshape(R, 1, 1).clone()


def activation_codes(activation, R: int) -> torch.Tensor:
    """Names of :data:`ACTIVATIONS` (one, or one per run) -> integer codes (R, 1, 1)."""
    names = [activation] * R if isinstance(activation, str) else list(activation)
    bad = [a for a in names if a not in ACTIVATIONS]
    if bad or len(names) != R:
        raise ValueError(f"activation must be one of {ACTIVATIONS} (one, or one per run: {R}), got {activation!r}")
    return torch.tensor([ACTIVATIONS.index(a) for a in names]).reshape(R, 1, 1)


def stack_masks(masks: Sequence[tuple[torch.Tensor, torch.Tensor]], counts: Sequence[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run masks (R, H, d_in), (R, d_out, H) from several two-layer architectures, ``counts[i]``
    runs of ``masks[i]`` each, zero-padded to the widest hidden layer (a padded unit stays zero)."""
    if len(masks) != len(counts) or any(m[1] is None for m in masks):
        raise ValueError("need one count per architecture, and two-layer architectures only (not 'shallow')")
    H = max(m[0].shape[0] for m in masks)
    m1 = torch.cat([_pad(m[0], (H, m[0].shape[1])).expand(n, -1, -1) for m, n in zip(masks, counts)])
    m2 = torch.cat([_pad(m[1], (m[1].shape[0], H)).expand(n, -1, -1) for m, n in zip(masks, counts)])
    return m1.contiguous(), m2.contiguous()


@dataclass
class TwoLayerRun:
    """Final weights ``W1`` (R, H, d_in), ``W2`` (R, d_out, H), activation codes (R, 1, 1), the
    recorded epochs and per evaluation set the losses (len(epochs), R, 2) of :func:`block_losses`."""
    W1: torch.Tensor
    W2: torch.Tensor
    codes: torch.Tensor
    epochs: list[int]
    losses: dict[str, torch.Tensor]

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``W2 f(W1 X)`` for every run: ``X`` (d_in, P) or (R, d_in, P) -> (R, d_out, P)."""
        return two_layer_forward(self.W1, self.W2, self.codes, X)


def two_layer_forward(W1, W2, codes, X) -> torch.Tensor:
    """``W2 f(W1 X)``: ``X`` (d_in, P) or (R, d_in, P) -> (R, d_out, P)."""
    Xb = _as_batch(X.to(W1), W1.shape[0])
    return torch.bmm(W2, _act(torch.bmm(W1, Xb), codes)[0])


def train_two_layer(X: torch.Tensor, Y: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor], seeds: Sequence[int],
                    *, activation="linear", lr: float = 0.02, epochs: int = 300, init_std: float = 2e-4,
                    weight_decay=0.0, l1=0.0, cross_l1=0.0, dropout=0.0,
                    cross_block: tuple[slice, slice] | None = None, dropout_seed: int = 0,
                    evals: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, n2: int = 0,
                    record_every: int = 10, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float64) -> TwoLayerRun:
    """Full-batch gradient descent on ``W2 f(W1 X)`` for all runs in one pass (section comment above).

    ``X``/``Y`` shared (d, P) or per run (R, d, P); ``masks`` 2-D (shared) or per run (R, ...)
    (:func:`stack_masks`); ``activation`` and every penalty one value or one per run. Initial weights
    as :func:`init_weights` draws them (so a linear run without penalties is :func:`train_linear`'s run
    exactly). ``evals`` maps a name to ``(X, Y)``; their losses (Omega_y rows ``:n2``, Gamma_y rows)
    are recorded at epoch 0, every ``record_every`` epochs and at the end.
    """
    R = len(seeds)
    if epochs < 0 or lr <= 0 or R == 0 or record_every < 1:
        raise ValueError(f"need seeds, epochs >= 0, lr > 0 and record_every >= 1; got {R}, {epochs}, {lr}, {record_every}")
    if any(m is None for m in masks):
        raise ValueError("train_two_layer needs a two-layer architecture; train 'shallow' with train_linear")
    dev = torch.device(device)
    codes = activation_codes(activation, R).to(dev)
    wd, l1_, cl1, p = (_per_run(v, R, n, dtype).to(dev) for v, n in
                       ((weight_decay, "weight_decay"), (l1, "l1"), (cross_l1, "cross_l1"), (dropout, "dropout")))
    if (wd < 0).any() or (l1_ < 0).any() or (cl1 < 0).any() or (p < 0).any() or (p >= 1).any():
        raise ValueError("penalties must be >= 0 and dropout in [0, 1)")
    if (cl1 > 0).any() and cross_block is None:
        raise ValueError("cross_l1 > 0 needs cross_block=(output rows, input columns), e.g. data.blocks()['Gamma_x->Omega_y']")
    m1, m2 = (m.to(dev, dtype) for m in masks)
    if m1.dim() == 2:
        W1, W2 = (w.to(dev) for w in init_weights(seeds, (m1.cpu(), m2.cpu()), init_std))
    else:
        if m1.shape[0] != R or m2.shape[0] != R:
            raise ValueError(f"per-run masks must have {R} runs, got {m1.shape[0]} and {m2.shape[0]}")
        per = [init_weights([s], (m1[i].cpu(), m2[i].cpu()), init_std) for i, s in enumerate(seeds)]
        W1 = torch.cat([w[0] for w in per]).to(dev)
        W2 = torch.cat([w[1] for w in per]).to(dev)
    m1, m2 = _as_batch(m1, R), _as_batch(m2, R)
    Xb, Yb = _as_batch(X.to(dev, dtype), R), _as_batch(Y.to(dev, dtype), R)
    evals = {k: (x.to(dev, dtype), y.to(dev, dtype)) for k, (x, y) in (evals or {}).items()}
    keep = 1 - p
    use_dropout = bool((p > 0).any())
    gen = torch.Generator(device=dev).manual_seed(int(dropout_seed))
    recorded, losses = [], {k: [] for k in evals}

    def record(t):
        recorded.append(t)
        for k, (x, y) in evals.items():
            losses[k].append(output_losses(two_layer_forward(W1, W2, codes, x), _as_batch(y, R), n2))

    record(0)
    for t in range(1, epochs + 1):
        Hp = torch.bmm(W1, Xb)                                   # (R, H, P)
        A, dA = _act(Hp, codes)
        if use_dropout:
            drop = (torch.rand(Hp.shape, generator=gen, device=dev, dtype=dtype) < keep).to(dtype) / keep
            A, dA = A * drop, dA * drop
        E = Yb - torch.bmm(W2, A)                                # (R, d_out, P)
        gW2 = torch.bmm(E, A.transpose(1, 2)) - wd * W2          # minus the gradient
        gW1 = torch.bmm(torch.bmm(W2.transpose(1, 2), E) * dA, Xb.transpose(1, 2)) - wd * W1
        if cross_block is not None and bool((cl1 > 0).any()):
            rows, cols = cross_block
            S = torch.sign(torch.bmm(W2[:, rows], W1[:, :, cols]))            # sign of the cross block
            gW2[:, rows] -= cl1 * torch.bmm(S, W1[:, :, cols].transpose(1, 2))
            gW1[:, :, cols] -= cl1 * torch.bmm(W2[:, rows].transpose(1, 2), S)
        W1 = W1 + lr * m1 * gW1
        W2 = W2 + lr * m2 * gW2
        if bool((l1_ > 0).any()):                                # proximal step: soft threshold by lr * l1
            W1 = torch.sign(W1) * (W1.abs() - lr * l1_).clamp_min(0)
            W2 = torch.sign(W2) * (W2.abs() - lr * l1_).clamp_min(0)
        if t % record_every == 0 or t == epochs:
            record(t)
    return TwoLayerRun(W1, W2, codes, recorded, {k: torch.stack(v) for k, v in losses.items()})


def output_losses(pred: torch.Tensor, Y: torch.Tensor, n2: int) -> torch.Tensor:
    """:func:`block_losses` from predictions: mean over patterns of the summed squared error on the
    Omega_y rows ``:n2`` and on the Gamma_y rows, ``pred``/``Y`` (..., d_out, P) -> (..., 2)."""
    err = (pred - Y).pow(2)
    return torch.stack([err[..., :n2, :].sum(-2).mean(-1), err[..., n2:, :].sum(-2).mean(-1)], -1)


def jacobian_block_norms(run: TwoLayerRun, X: torch.Tensor, data: CompositionalData) -> torch.Tensor:
    """Root mean square over the patterns of ``X`` of the four block norms of the input-output
    Jacobian ``J_p = W2 diag(f'(W1 x_p)) W1``: (R, 4), :data:`BLOCKS` order. For a linear network
    ``J_p = W2 W1`` and this is :func:`block_norms` of the map."""
    Xb = _as_batch(X.to(run.W1), run.W1.shape[0])
    _, dA = _act(torch.bmm(run.W1, Xb), run.codes)                        # (R, H, P)
    J = torch.einsum("roh,rhp,rhi->rpoi", run.W2, dA, run.W1)             # (R, P, d_out, d_in)
    return block_norms(J, data).pow(2).mean(1).sqrt()
