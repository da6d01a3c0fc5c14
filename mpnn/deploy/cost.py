"""Communication-volume and latency model of the multi-part engine, and its projection.

Volume (exact for :class:`~mpnn.deploy.engine.ShardedMLP`). With batch ``B``, ``s`` bytes per
element, ``S_l(p)`` the neurons of layer ``l`` owned by rank ``p`` and ``C_l`` the consumers of
layer ``l`` (owners of layer ``l+1``; the head for ``l = L``)::

    forward bytes  V_f = sum_l sum_p |S_l(p)| * B * s * |C_l \\ {p}|,      backward bytes V_b = V_f.

Closed forms for ``P`` ranks and widths ``n_1..n_L``:

* neuron-wise, every rank owns part of every layer:
  ``V_f = B s [ (P-1) sum_{l<L} n_l + (n_L - |S_L(head)|) ]``, i.e. grows linearly in ``P``;
* layer-wise, consecutive layers per rank: ``V_f = B s sum_{l in boundaries} n_l`` where the
  boundaries are the layers whose consumers live on another rank; at most ``P - 1`` of them
  plus the output, independent of how many neurons a layer has beyond its width.

Latency (a fitted alpha-beta model): one step costs::

    T = c * T_1 * f_crit + alpha * M_max + V_max / beta

where ``T_1`` is the single-process step time, ``f_crit`` the fraction of the FLOPs on the critical
path (``sum_l flops_l * max_p |S_l(p)| / n_l`` over the total for neuron-wise splits; 1 for layer-wise,
where layers run one after the other), ``M_max``/``V_max`` the messages/bytes sent by the busiest rank.
``c``, ``alpha`` and ``beta`` are fitted by least squares on the measurements (:func:`fit_latency`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .plan import Plan

__all__ = ["volume", "neuron_wise_forward_bytes", "layer_wise_forward_bytes", "critical_fraction",
           "LatencyFit", "fit_latency", "Hardware", "project", "exchange_rounds", "ConditionsFit",
           "fit_conditions"]


def volume(plan: Plan, batch: int, elem_bytes: int = 4) -> dict:
    """Per-rank bytes and messages sent in one forward and one backward (lists indexed by rank)."""
    P = plan.world_size
    out = {k: [0] * P for k in ("fwd_bytes", "bwd_bytes", "fwd_msgs", "bwd_msgs")}
    for l in range(1, plan.n_layers + 1):
        cons = plan.consumers(l)
        for p in plan.producers(l):
            nbytes = plan.local(l, p).numel() * batch * elem_bytes
            for c in cons:
                if c != p:
                    out["fwd_bytes"][p] += nbytes
                    out["fwd_msgs"][p] += 1
                    out["bwd_bytes"][c] += nbytes
                    out["bwd_msgs"][c] += 1
    return out


def neuron_wise_forward_bytes(sizes: list[int], P: int, batch: int, elem_bytes: int = 4,
                              head_share: int | None = None) -> int:
    """Closed form of the total forward volume of an even neuron-wise split (see module doc)."""
    n = sizes[1:]
    own_head = head_share if head_share is not None else -(-n[-1] // P)   # rank 0 gets the ceil share
    return batch * elem_bytes * ((P - 1) * sum(n[:-1]) + (n[-1] - own_head))


def layer_wise_forward_bytes(sizes: list[int], layer_ranks: list[int], batch: int, elem_bytes: int = 4,
                             head: int = 0) -> int:
    """Closed form of the total forward volume of a layer-wise split."""
    n = sizes[1:]
    nxt = list(layer_ranks[1:]) + [head]
    return batch * elem_bytes * sum(w for w, a, b in zip(n, layer_ranks, nxt) if a != b)


def critical_fraction(plan: Plan) -> float:
    """Share of the step's multiply-adds that lie on the critical path (see module doc)."""
    flops = [plan.sizes[l - 1] * plan.sizes[l] for l in range(1, plan.n_layers + 1)]
    if plan.strategy == "layer":
        return 1.0
    crit = sum(f * max(plan.local(l, p).numel() for p in range(plan.world_size)) / plan.sizes[l]
               for l, f in zip(range(1, plan.n_layers + 1), flops))
    return crit / sum(flops)


@dataclass
class LatencyFit:
    c: float           # multiplier of the critical-path compute
    alpha_s: float     # seconds per message
    beta_Bps: float    # bytes per second
    rel_err: np.ndarray  # |predicted - measured| / measured, per point

    def predict(self, t_single, f_crit, msgs, nbytes):
        return self.c * np.asarray(t_single) * np.asarray(f_crit) + self.alpha_s * np.asarray(msgs) \
            + np.asarray(nbytes) / self.beta_Bps


def fit_latency(t_step, t_single, f_crit, msgs, nbytes) -> LatencyFit:
    """Non-negative least squares fit of ``T = c T_1 f_crit + alpha M + V / beta`` (module doc)."""
    from scipy.optimize import nnls
    A = np.column_stack([np.asarray(t_single) * np.asarray(f_crit), msgs, nbytes]).astype(float)
    t = np.asarray(t_step, dtype=float)
    # Relative least squares: weight each point by 1/T so short and long steps count alike.
    coef, _ = nnls(A / t[:, None], np.ones_like(t))
    c, alpha, inv_beta = coef
    fit = LatencyFit(float(c), float(alpha), float(1 / inv_beta) if inv_beta > 0 else float("inf"), np.empty(0))
    fit.rel_err = np.abs(fit.predict(t_single, f_crit, msgs, nbytes) - t) / t
    return fit


@dataclass
class Hardware:
    """Stated assumptions of the projection (defaults: a GPU server on 100 Gb/s Ethernet)."""

    flops: float = 100e12          # sustained FLOP/s per server
    alpha_s: float = 10e-6         # per-message latency
    beta_Bps: float = 12.5e9       # per-server link bandwidth (100 Gb/s)
    memory_B: float = 80e9         # memory per server
    bytes_per_param: float = 16.0  # fp16 weights + fp32 master copy + Adam moments
    elem_bytes: int = 2            # fp16 activations on the wire


def project(width: int, layers: int, batch: int, P: np.ndarray, hw: Hardware = Hardware()) -> dict:
    """Step time (s) and memory per server (bytes) of an MLP of ``layers`` layers of ``width`` on
    ``P`` servers, neuron-wise vs layer-wise, from the model above with ``hw``'s constants.

    Compute: ``6 N B`` FLOPs per step (forward + backward), ``N = layers * width^2``; neuron-wise
    divides it by ``P`` (c = 1, perfect balance), layer-wise runs it serially (no micro-batching).
    Communication per rank per step, neuron-wise: ``2 layers ((P-1) alpha + B width s (P-1)/P / beta)``;
    layer-wise: ``2 (P-1) (alpha + B width s / beta)`` on the critical path.
    """
    P = np.asarray(P, dtype=float)
    N = layers * width ** 2
    compute = 6.0 * N * batch / hw.flops
    act = batch * width * hw.elem_bytes
    neuron = compute / P + 2 * layers * ((P - 1) * hw.alpha_s + act * (P - 1) / P / hw.beta_Bps)
    layer = compute + 2 * (P - 1) * (hw.alpha_s + act / hw.beta_Bps)
    return {"params": N, "single_s": compute, "neuron_wise_s": neuron, "layer_wise_s": layer,
            "neuron_comm_s": neuron - compute / P, "memory_per_server_B": N * hw.bytes_per_param / P,
            "min_servers": int(np.ceil(N * hw.bytes_per_param / hw.memory_B))}


# ---------------------------------------------------------------------- across network conditions

def exchange_rounds(plan: Plan) -> int:
    """Exchanges on a step's critical path that send something: one per layer whose activations
    go to another rank, forward and backward. An emulated one-way latency ``d`` per exchange
    (``ShardedMLP.send_delay_s`` of :mod:`mpnn.deploy.engine`) adds ``d * exchange_rounds(plan)`` to a step."""
    n = sum(1 for l in range(1, plan.n_layers + 1)
            if any(c != p for p in plan.producers(l) for c in plan.consumers(l)))
    return 2 * n


@dataclass
class ConditionsFit:
    """``T = c T_1 f_crit + alpha M + V / beta_0 + kappa 8 V / rate + gamma d R`` (see :func:`fit_conditions`)."""

    c: float
    alpha_s: float
    beta0_Bps: float
    kappa: float       # multiplier of the shaped link's time 8 V / rate (1: the link costs its nominal rate)
    gamma: float       # multiplier of the emulated latency d R (1: each exchange pays the delay once)
    rel_err: np.ndarray

    def predict(self, t_single, f_crit, msgs, nbytes, rate_bps, delay_s, rounds):
        link = np.where(np.isfinite(rate_bps), 8.0 * np.asarray(nbytes) / np.asarray(rate_bps, dtype=float), 0.0)
        inv_b0 = 0.0 if not np.isfinite(self.beta0_Bps) else 1.0 / self.beta0_Bps
        return (self.c * np.asarray(t_single) * np.asarray(f_crit) + self.alpha_s * np.asarray(msgs)
                + np.asarray(nbytes) * inv_b0 + self.kappa * link
                + self.gamma * np.asarray(delay_s) * np.asarray(rounds))


def fit_conditions(t_step, t_single, f_crit, msgs, nbytes, rate_bps, delay_s, rounds) -> ConditionsFit:
    """Relative non-negative least squares of :class:`ConditionsFit` over every (condition, plan):
    ``rate_bps`` = inf for an unshaped link, ``delay_s`` the emulated latency, ``rounds`` =
    :func:`exchange_rounds`, ``msgs``/``nbytes`` the busiest rank's messages and bytes per step."""
    from scipy.optimize import nnls
    rate = np.asarray(rate_bps, dtype=float)
    link = np.where(np.isfinite(rate), 8.0 * np.asarray(nbytes, dtype=float) / rate, 0.0)
    A = np.column_stack([np.asarray(t_single) * np.asarray(f_crit), msgs, nbytes, link,
                         np.asarray(delay_s) * np.asarray(rounds)]).astype(float)
    t = np.asarray(t_step, dtype=float)
    coef, _ = nnls(A / t[:, None], np.ones_like(t))
    c, alpha, inv_b0, kappa, gamma = (float(v) for v in coef)
    fit = ConditionsFit(c, alpha, 1 / inv_b0 if inv_b0 > 0 else float("inf"), kappa, gamma, np.empty(0))
    fit.rel_err = np.abs(fit.predict(t_single, f_crit, msgs, nbytes, rate, delay_s, rounds) - t) / t
    return fit

