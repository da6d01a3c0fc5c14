"""The multi-part execution engine: one MLP whose neurons live on several ranks.

The network is ``h_0 = x``, ``h_l = phi_l(h_{l-1} W_l^T + b_l)`` for ``l = 1..L`` (``phi`` = ReLU for
hidden layers, identity for the output), loss ``CE(h_L, y)`` averaged over the batch.

Rank ``r`` stores the rows ``W_l[S_l(r)]``, ``b_l[S_l(r)]`` of the neurons ``S_l(r)`` it owns
(:class:`~mpnn.deploy.plan.Plan`). Forward, layer by layer:

* local neurons:  ``a_l(r) = phi_l(h_{l-1} W_l[S_l(r)]^T + b_l[S_l(r)])``, shape ``(B, |S_l(r)|)``;
* remote neurons: every consumer ``c`` of layer ``l`` (an owner of layer ``l+1``, or the head rank
  for the output) receives ``a_l(p)`` from each producer ``p != c`` (``torch.distributed``
  ``isend``/``irecv``) and assembles the full ``h_l``, shape ``(B, n_l)``.

Backward, the same edges reversed. A consumer ``c`` holds ``g_l^c = dL/dh_l`` restricted to what its
own neurons of layer ``l+1`` contribute, ``g_l^c = delta_{l+1}(c) W_{l+1}[S_{l+1}(c)]``; the producer
``p`` of neuron set ``S_l(p)`` sums the slices from all consumers,
``dL/da_l(p) = sum_c g_l^c[:, S_l(p)]``, which equals the single-process ``delta_{l+1} W_{l+1}``
restricted to ``S_l(p)`` because the rows ``S_{l+1}(c)`` partition layer ``l+1``. Local autograd
then gives ``dL/dW_l[S_l(p)]``, ``dL/db_l[S_l(p)]`` and the next ``g_{l-1}^p``.

Bytes sent per forward: ``sum_l sum_p |S_l(p)| * B * s * |C_l \\ {p}|`` (``s`` bytes per element,
``C_l`` the consumers); the backward sends the same amount. :mod:`mpnn.deploy.cost` writes this out.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .plan import Plan

__all__ = ["init_params", "reference_model", "assemble", "PeerLost", "CommStats", "ShardedMLP"]


def init_params(sizes: list[int], seed: int, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Full parameters ``[(W_l (n_l, n_{l-1}), b_l (n_l,)), ...]``, ``U(-1/sqrt(n_{l-1}), +)`` like
    ``nn.Linear``, drawn from one seeded generator so that every rank builds the same network."""
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        k = 1.0 / math.sqrt(n_in)
        w = (torch.rand(n_out, n_in, generator=g, dtype=torch.float64) * 2 - 1) * k
        b = (torch.rand(n_out, generator=g, dtype=torch.float64) * 2 - 1) * k
        out.append((w.to(dtype), b.to(dtype)))
    return out


def reference_model(params) -> torch.nn.Sequential:
    """The same network as one ``nn.Sequential`` in one process (the equivalence reference)."""
    layers = []
    for i, (w, b) in enumerate(params):
        lin = torch.nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        layers.append(lin)
        if i < len(params) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def assemble(plan: Plan, per_rank: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Full ``[(W_l, b_l)]`` from each rank's rows ``{"L{l}.weight": W_l[S_l(r)], "L{l}.bias": b_l[S_l(r)]}``
    (``per_rank[r]``, as :meth:`ShardedMLP.shard_state` returns them). The inverse of the split:
    ``W_l[S_l(r)] = per_rank[r]["L{l}.weight"]``. A row that no dict supplies stays NaN, so a
    missing rank shows up in every comparison instead of passing as leftover memory."""
    out = []
    for l in range(1, plan.n_layers + 1):
        some = [d[f"L{l}.weight"] for d in per_rank if f"L{l}.weight" in d]
        if not some:
            raise ValueError(f"no rank supplies rows of layer {l}: pass every rank's state, "
                             f"indexed by rank ({plan.world_size} for this plan)")
        w = torch.full((plan.sizes[l], plan.sizes[l - 1]), float("nan"), dtype=some[0].dtype)
        b = torch.full((plan.sizes[l],), float("nan"), dtype=some[0].dtype)
        for r, d in enumerate(per_rank):
            if f"L{l}.weight" in d:
                ids = plan.local(l, r)
                w[ids], b[ids] = d[f"L{l}.weight"], d[f"L{l}.bias"]
        out.append((w, b))
    return out


class PeerLost(RuntimeError):
    """A transfer with another rank failed or timed out: that rank died, hung or was cut off."""


@dataclass
class CommStats:
    """Traffic this rank sent, and the time it spent waiting on transfers, per phase."""

    bytes_sent: dict = field(default_factory=lambda: {"forward": 0, "backward": 0})
    messages: dict = field(default_factory=lambda: {"forward": 0, "backward": 0})
    comm_s: dict = field(default_factory=lambda: {"forward": 0.0, "backward": 0.0})

    def reset(self) -> None:
        for d in (self.bytes_sent, self.messages):
            for k in d:
                d[k] = 0
        for k in self.comm_s:
            self.comm_s[k] = 0.0

    def as_dict(self) -> dict:
        return {"bytes_sent": dict(self.bytes_sent), "messages": dict(self.messages), "comm_s": dict(self.comm_s)}


class ShardedMLP:
    """Rank ``rank``'s part of a partitioned MLP; call the same methods on every rank in lockstep.

    ``params``: full parameters (every rank slices its rows), or ``None`` with ``shards`` =
    ``{"L{l}.weight": (|S_l|, n_{l-1}), "L{l}.bias": (|S_l|,)}`` for the local rows only (a checkpoint).
    With ``world_size == 1`` no process group is needed (the single-process case).
    """

    def __init__(self, plan: Plan, rank: int, *, params=None, shards: dict | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 timeout_s: float = 60.0, send_delay_s: float = 0.0):
        self.plan, self.rank = plan, int(rank)
        # emulated one-way link latency (s): every exchange holds its outgoing messages this long before
        # handing them to torch.distributed (:mod:`mpnn.deploy.netns` sets it per network condition)
        self.send_delay_s = float(send_delay_s)
        self.device, self.dtype = torch.device(device), dtype
        self.timeout = timedelta(seconds=timeout_s)
        self.stats = CommStats()
        self.W: dict[int, torch.Tensor] = {}
        self.b: dict[int, torch.Tensor] = {}
        for l in range(1, plan.n_layers + 1):
            ids = plan.local(l, self.rank)
            if not ids.numel():
                continue
            if shards is not None:
                w, b = shards[f"L{l}.weight"], shards[f"L{l}.bias"]
                if w.shape != (ids.numel(), plan.sizes[l - 1]):
                    raise ValueError(f"shard L{l}.weight has shape {tuple(w.shape)}, the plan expects "
                                     f"{(ids.numel(), plan.sizes[l - 1])}: the checkpoint was written with another plan")
            else:
                w, b = params[l - 1][0][ids], params[l - 1][1][ids]
            self.W[l] = w.detach().to(self.device, dtype).clone().requires_grad_(True)
            self.b[l] = b.detach().to(self.device, dtype).clone().requires_grad_(True)
        self._ctx: list = []
        self.last_logits: torch.Tensor | None = None

    # ------------------------------------------------------------------ state
    def shard_state(self) -> dict[str, torch.Tensor]:
        """Local rows, keyed ``L{l}.weight`` / ``L{l}.bias``."""
        out = {}
        for l in self.W:
            out[f"L{l}.weight"], out[f"L{l}.bias"] = self.W[l].detach(), self.b[l].detach()
        return out

    def grads(self) -> dict[str, torch.Tensor]:
        out = {}
        for l in self.W:
            out[f"L{l}.weight"], out[f"L{l}.bias"] = self.W[l].grad, self.b[l].grad
        return out

    def zero_grad(self) -> None:
        for t in (*self.W.values(), *self.b.values()):
            t.grad = None

    @torch.no_grad()
    def sgd_step(self, lr: float) -> None:
        """``theta <- theta - lr * dL/dtheta`` on the local rows (plain SGD)."""
        for t in (*self.W.values(), *self.b.values()):
            t.sub_(lr * t.grad)

    # ------------------------------------------------------------------ transport
    def _exchange(self, sends, recvs, phase: str, tag: int) -> dict[int, torch.Tensor]:
        """Post every ``irecv`` and ``isend`` of one layer, then wait for all of them."""
        if not sends and not recvs:
            return {}
        t0 = time.perf_counter()
        reqs, out = [], {}
        try:                                 # a peer that died shows up when posting or when waiting
            for src, shape in recvs:
                buf = torch.empty(shape, dtype=self.dtype, device=self.device)
                out[src] = buf
                reqs.append(dist.irecv(buf, src=src, tag=tag))
            if sends and self.send_delay_s > 0:      # emulated latency; 0 = off
                time.sleep(self.send_delay_s)
            for dst, t in sends:
                t = t.detach().contiguous()
                reqs.append(dist.isend(t, dst=dst, tag=tag))
                self.stats.bytes_sent[phase] += t.numel() * t.element_size()
                self.stats.messages[phase] += 1
            for r in reqs:
                r.wait(self.timeout)
        except RuntimeError as exc:
            peers = sorted({src for src, _ in recvs} | {dst for dst, _ in sends})
            raise PeerLost(f"rank {self.rank} lost contact with rank(s) {peers} during the {phase} "
                           f"exchange of layer {tag % 1000} ({str(exc).splitlines()[0][:160]})") from exc
        self.stats.comm_s[phase] += time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ passes
    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x`` (B, n_0), identical on every rank. Returns the logits (B, n_L) on the head, else None."""
        plan, r = self.plan, self.rank
        h = x.to(self.device, self.dtype)
        B = h.shape[0]
        self._ctx = []
        for l in range(1, plan.n_layers + 1):
            ids = plan.local(l, r)
            hin = a = None
            if ids.numel():                                   # h is the full h_{l-1} here
                hin = h.detach().requires_grad_(l > 1)        # leaf: its .grad is g_{l-1}^r
                z = torch.addmm(self.b[l], hin, self.W[l].t())  # (B, |S_l(r)|)
                a = torch.relu(z) if l < plan.n_layers else z
            consumers = plan.consumers(l)
            sends = [(c, a) for c in consumers if c != r] if ids.numel() else []
            recvs = ([(p, (B, plan.local(l, p).numel())) for p in plan.producers(l) if p != r]
                     if r in consumers else [])
            got = self._exchange(sends, recvs, "forward", tag=l)
            if r in consumers:
                h = torch.empty(B, plan.sizes[l], dtype=self.dtype, device=self.device)
                if ids.numel():
                    h[:, ids] = a.detach()
                for p, t in got.items():
                    h[:, plan.local(l, p)] = t
            else:
                h = None
            self._ctx.append((hin, a))
        return h if r == plan.head else None

    def backward(self, grad_logits: torch.Tensor | None) -> None:
        """``grad_logits`` = dL/dh_L (B, n_L) on the head (None elsewhere); accumulates local grads."""
        plan, r = self.plan, self.rank
        g = grad_logits if r == plan.head else None           # g_L^r on the consumers of layer L
        for l in range(plan.n_layers, 0, -1):
            hin, a = self._ctx[l - 1]
            ids = plan.local(l, r)
            consumers = plan.consumers(l)
            sends = ([(p, g[:, plan.local(l, p)]) for p in plan.producers(l) if p != r]
                     if r in consumers else [])
            recvs = [(c, (a.shape[0], ids.numel())) for c in consumers if c != r] if ids.numel() else []
            got = self._exchange(sends, recvs, "backward", tag=1000 + l)
            g_prev = None
            if ids.numel():
                parts = [g[:, ids] if c == r else got[c] for c in consumers]   # consumer-rank order
                ga = parts[0].clone()
                for t in parts[1:]:
                    ga += t
                torch.autograd.backward(a, ga)
                g_prev = hin.grad if l > 1 else None          # (B, n_{l-1})
            g = g_prev
        self._ctx = []

    def loss_and_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Forward, mean cross-entropy on the head, backward. Returns the loss on the head."""
        logits = self.forward(x)
        loss = grad = None
        self.last_logits = None if logits is None else logits.detach()
        if self.rank == self.plan.head:
            logits.requires_grad_(True)
            loss = F.cross_entropy(logits, y.to(self.device))
            (grad,) = torch.autograd.grad(loss, logits)
        self.backward(grad)
        return None if loss is None else loss.detach()

    def train_step(self, x, y, lr: float) -> torch.Tensor | None:
        self.zero_grad()
        loss = self.loss_and_backward(x, y)
        self.sgd_step(lr)
        return loss
