"""The Neuron Distributor: which rank owns each neuron of a multi-layer perceptron.

The multi-part deployment document (arXiv 2506.01387) splits one network's neurons into *local* and *remote* ones per
server, with metadata telling each server where its remote neurons live. Here a network is an MLP
with widths ``sizes = [n_0, n_1, ..., n_L]``; the inputs ``n_0`` are data (every rank reads them from
the shared store), the neurons are the units of layers ``1..L``. A :class:`Plan` stores, for every
layer ``l``, an owner vector ``owner[l]`` of shape ``(n_l,)`` with values in ``0..world_size-1``.

Neuron IDs are global: neuron ``j`` of layer ``l`` has ID ``offset[l] + j`` where
``offset[1] = 0`` and ``offset[l+1] = offset[l] + n_l``.

Dependencies of a dense layer: neuron ``j`` of layer ``l+1`` reads every neuron of layer ``l``.
So the *consumers* of layer ``l``'s activations are the owners of layer ``l+1`` (and, for the
output layer ``L``, the ``head`` rank that evaluates the loss). Rank ``r`` needs, as remote neurons,
every neuron of layer ``l`` it does not own whenever it owns some neuron of layer ``l+1``;
it sends its local slice of layer ``l`` to every other consumer. Gradients flow back the same
edges. :meth:`Plan.metadata` writes this out per rank.

Strategies (all produce the same :class:`Plan` type):

* :func:`by_count`      -- ``counts[l][r]`` neurons of layer ``l`` to rank ``r``, contiguous blocks;
* :func:`by_percentage` -- rank ``r`` gets ``percent[r]`` % of every layer (largest remainder);
* :func:`by_ids`        -- explicit global neuron IDs per rank;
* :func:`by_layer`      -- whole layers per rank (a pipeline split).

Invalid plans (a neuron owned twice or by nobody, unknown ranks, sizes that do not add up, idle
ranks) raise :class:`PlanError` before any process starts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

__all__ = ["PlanError", "Plan", "by_count", "by_percentage", "by_ids", "by_layer", "neuron_wise",
           "layer_wise", "STRATEGIES", "make_plan"]


class PlanError(ValueError):
    """An invalid partition plan; the message names the problem and how to fix it."""


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise PlanError(f"sizes must list the input width and at least one layer, got {sizes}")
    bad = [s for s in sizes if s < 1]
    if bad:
        raise PlanError(f"every width in sizes must be >= 1, got {sizes}")
    return sizes


def _ranges(owner: torch.Tensor) -> list[list[int]]:
    """Run-length form ``[[rank, start, stop), ...]`` of an owner vector, for readable metadata."""
    out: list[list[int]] = []
    for j, r in enumerate(owner.tolist()):
        if out and out[-1][0] == r and out[-1][2] == j:
            out[-1][2] = j + 1
        else:
            out.append([r, j, j + 1])
    return out


@dataclass
class Plan:
    """Ownership of every neuron. ``owner[l-1]`` is the owner vector of layer ``l`` (``l = 1..L``)."""

    sizes: list[int]
    world_size: int
    owner: list[torch.Tensor]
    strategy: str = "custom"
    head: int = 0
    _local: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.sizes = _check_sizes(self.sizes)
        self.world_size = int(self.world_size)
        if self.world_size < 1:
            raise PlanError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= int(self.head) < self.world_size:
            raise PlanError(f"head rank {self.head} is not a rank of a {self.world_size}-rank group")
        self.head = int(self.head)
        n_layers = len(self.sizes) - 1
        if len(self.owner) != n_layers:
            raise PlanError(f"the plan lists owners for {len(self.owner)} layers but sizes {self.sizes} "
                            f"has {n_layers}: give one owner vector per non-input layer")
        owner = []
        for l, (o, n) in enumerate(zip(self.owner, self.sizes[1:]), start=1):
            o = torch.as_tensor(o, dtype=torch.long).flatten()
            if o.numel() != n:
                raise PlanError(f"layer {l} has {n} neurons but its owner vector has {o.numel()} entries")
            bad = ((o < 0) | (o >= self.world_size)).nonzero().flatten()
            if bad.numel():
                ids = (bad + self.offset(l)).tolist()[:8]
                raise PlanError(f"neurons {ids} of layer {l} are assigned to unknown ranks "
                                f"{o[bad].unique().tolist()}; ranks must be 0..{self.world_size - 1}")
            owner.append(o)
        self.owner = owner
        counts = torch.stack([torch.bincount(o, minlength=self.world_size) for o in owner]).sum(0)
        idle = (counts == 0).nonzero().flatten().tolist()
        if idle:
            raise PlanError(f"ranks {idle} own no neuron; use fewer ranks or give them neurons")

    # ------------------------------------------------------------------ ids and lookups
    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def n_neurons(self) -> int:
        return sum(self.sizes[1:])

    def offset(self, l: int) -> int:
        """Global ID of neuron 0 of layer ``l`` (1-based layers)."""
        return sum(self.sizes[1:l])

    def local(self, l: int, rank: int) -> torch.Tensor:
        """Indices (within layer ``l``) of the neurons of layer ``l`` owned by ``rank``, ascending."""
        key = (l, rank)
        if key not in self._local:
            self._local[key] = (self.owner[l - 1] == rank).nonzero().flatten()
        return self._local[key]

    def producers(self, l: int) -> list[int]:
        """Ranks owning at least one neuron of layer ``l``."""
        return sorted(set(self.owner[l - 1].tolist()))

    def consumers(self, l: int) -> list[int]:
        """Ranks that read the full activation of layer ``l``: owners of layer ``l+1``, or the head."""
        return [self.head] if l == self.n_layers else self.producers(l + 1)

    def neurons_per_rank(self) -> list[int]:
        return torch.stack([torch.bincount(o, minlength=self.world_size) for o in self.owner]).sum(0).tolist()

    def params_per_rank(self) -> list[int]:
        """Parameters (weights + biases) stored by each rank: a neuron of layer l owns n_{l-1} + 1."""
        out = [0] * self.world_size
        for l in range(1, self.n_layers + 1):
            c = torch.bincount(self.owner[l - 1], minlength=self.world_size)
            for r in range(self.world_size):
                out[r] += int(c[r]) * (self.sizes[l - 1] + 1)
        return out

    # ------------------------------------------------------------------ metadata
    def metadata(self, rank: int) -> dict:
        """What ``rank`` must know: its local neurons, the remote neurons it reads and from whom,
        and to whom it sends its own activations (gradients travel the same edges backwards)."""
        if not 0 <= rank < self.world_size:
            raise PlanError(f"rank {rank} is not in a {self.world_size}-rank plan")
        local, remote, send_to = {}, {}, {}
        for l in range(1, self.n_layers + 1):
            ids = self.local(l, rank)
            if ids.numel():
                local[l] = self._id_ranges(l, ids)
                send_to[l] = [c for c in self.consumers(l) if c != rank]
            if rank in self.consumers(l):
                remote[l] = {p: self._id_ranges(l, self.local(l, p)) for p in self.producers(l) if p != rank}
        return {"rank": rank, "local": local, "remote": remote, "send_to": send_to}

    def _id_ranges(self, l: int, idx: torch.Tensor) -> list[list[int]]:
        """Global-ID ranges ``[start, stop)`` covering the layer-``l`` indices ``idx``."""
        out: list[list[int]] = []
        off = self.offset(l)
        for j in idx.tolist():
            if out and out[-1][1] == off + j:
                out[-1][1] += 1
            else:
                out.append([off + j, off + j + 1])
        return out

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "sizes": self.sizes, "world_size": self.world_size,
                "head": self.head,
                "owner": [[list(r) for r in _ranges(o)] for o in self.owner]}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        missing = {"sizes", "world_size", "owner"} - set(d)
        if missing:
            raise PlanError(f"plan metadata lacks {sorted(missing)}")
        owner = []
        for l, rng in enumerate(d["owner"], start=1):
            n = int(d["sizes"][l])
            o = torch.full((n,), -1, dtype=torch.long)
            for r, a, b in rng:
                if not 0 <= a < b <= n:
                    raise PlanError(f"range [{a}, {b}) of layer {l} lies outside 0..{n}")
                if (o[a:b] >= 0).any():
                    raise PlanError(f"neurons {a}..{b - 1} of layer {l} are owned twice")
                o[a:b] = r
            if (o < 0).any():
                raise PlanError(f"neurons {(o < 0).nonzero().flatten().tolist()[:8]} of layer {l} have no owner")
            owner.append(o)
        return cls(list(d["sizes"]), int(d["world_size"]), owner, d.get("strategy", "custom"),
                   int(d.get("head", 0)))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other) -> bool:
        return (isinstance(other, Plan) and self.sizes == other.sizes
                and self.world_size == other.world_size and self.head == other.head
                and all(torch.equal(a, b) for a, b in zip(self.owner, other.owner)))


# ---------------------------------------------------------------------- strategies

def by_count(sizes: Sequence[int], counts: Sequence[Sequence[int]], head: int = 0) -> Plan:
    """``counts[l-1][r]`` neurons of layer ``l`` go to rank ``r``, in contiguous blocks by rank."""
    sizes = _check_sizes(sizes)
    if len(counts) != len(sizes) - 1:
        raise PlanError(f"counts needs one row per layer ({len(sizes) - 1}), got {len(counts)}")
    world = {len(c) for c in counts}
    if len(world) != 1:
        raise PlanError(f"every row of counts must list one count per rank; row lengths are {sorted(world)}")
    owner = []
    for l, (row, n) in enumerate(zip(counts, sizes[1:]), start=1):
        if any(int(c) < 0 for c in row):
            raise PlanError(f"counts for layer {l} must be >= 0, got {list(row)}")
        if sum(row) != n:
            raise PlanError(f"counts for layer {l} sum to {sum(row)} but the layer has {n} neurons")
        owner.append(torch.repeat_interleave(torch.arange(len(row)), torch.as_tensor(row, dtype=torch.long)))
    return Plan(sizes, world.pop(), owner, "count", head)


def _split(n: int, weights: Sequence[float]) -> list[int]:
    """Largest-remainder split of ``n`` items in proportion to ``weights``."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    exact = n * w / w.sum()
    base = exact.floor().long()
    rest = n - int(base.sum())
    order = torch.argsort(-(exact - base), stable=True)[:rest]
    base[order] += 1
    return base.tolist()


def by_percentage(sizes: Sequence[int], percent: Sequence[float], head: int = 0) -> Plan:
    """Rank ``r`` owns ``percent[r]`` % of the neurons of every layer (contiguous blocks)."""
    sizes = _check_sizes(sizes)
    if any(p < 0 for p in percent) or abs(sum(percent) - 100.0) > 1e-6:
        raise PlanError(f"percentages must be >= 0 and sum to 100, got {list(percent)} (sum {sum(percent)})")
    plan = by_count(sizes, [_split(n, percent) for n in sizes[1:]], head)
    plan.strategy = "percentage"
    return plan


def by_ids(sizes: Sequence[int], ids: Mapping[int, Sequence[int]], world_size: int | None = None,
           head: int = 0) -> Plan:
    """Explicit global neuron IDs per rank: ``ids = {rank: [id, ...]}``; each ID exactly once."""
    sizes = _check_sizes(sizes)
    total = sum(sizes[1:])
    world_size = int(world_size if world_size is not None else max(ids) + 1)
    owner = torch.full((total,), -1, dtype=torch.long)
    for r, idl in ids.items():
        if not 0 <= int(r) < world_size:
            raise PlanError(f"rank {r} is not a rank of a {world_size}-rank group")
        t = torch.as_tensor(list(idl), dtype=torch.long)
        out = t[(t < 0) | (t >= total)]
        if out.numel():
            raise PlanError(f"neuron IDs {out.tolist()[:8]} given to rank {r} do not exist; IDs are 0..{total - 1}")
        dup = torch.unique(t, return_counts=True)
        if (dup[1] > 1).any():
            raise PlanError(f"rank {r} lists neuron IDs {dup[0][dup[1] > 1].tolist()[:8]} more than once")
        twice = t[owner[t] >= 0]
        if twice.numel():
            raise PlanError(f"neuron IDs {twice.tolist()[:8]} are owned twice (ranks "
                            f"{owner[twice].unique().tolist()} and {r}); give each ID to one rank")
        owner[t] = int(r)
    orphan = (owner < 0).nonzero().flatten()
    if orphan.numel():
        raise PlanError(f"neuron IDs {orphan.tolist()[:8]}{'...' if orphan.numel() > 8 else ''} "
                        f"({orphan.numel()} in all) are owned by no rank; assign every ID 0..{total - 1}")
    return Plan(sizes, world_size, list(owner.split(sizes[1:])), "ids", head)


def by_layer(sizes: Sequence[int], layer_ranks: Sequence[int], world_size: int | None = None,
             head: int = 0) -> Plan:
    """Layer ``l`` (all of its neurons) goes to rank ``layer_ranks[l-1]``."""
    sizes = _check_sizes(sizes)
    if len(layer_ranks) != len(sizes) - 1:
        raise PlanError(f"layer_ranks needs one rank per layer ({len(sizes) - 1}), got {list(layer_ranks)}")
    world_size = int(world_size if world_size is not None else max(layer_ranks) + 1)
    owner = [torch.full((n,), int(r), dtype=torch.long) for n, r in zip(sizes[1:], layer_ranks)]
    return Plan(sizes, world_size, owner, "layer", head)


# ---------------------------------------------------------------------- the chapter's four strategies

def neuron_wise(sizes: Sequence[int], world_size: int) -> Plan:
    """Even split of every layer (the count strategy with near-equal counts)."""
    plan = by_count(sizes, [_split(n, [1.0] * world_size) for n in _check_sizes(sizes)[1:]])
    return plan


def layer_wise(sizes: Sequence[int], world_size: int) -> Plan:
    """Consecutive layers to consecutive ranks, as evenly as possible (needs world_size <= layers)."""
    n_layers = len(_check_sizes(sizes)) - 1
    if world_size > n_layers:
        raise PlanError(f"a layer-wise split of {n_layers} layers cannot use {world_size} ranks; "
                        f"use at most {n_layers} ranks or a neuron-wise strategy")
    per = _split(n_layers, [1.0] * world_size)
    return by_layer(sizes, torch.repeat_interleave(torch.arange(world_size), torch.as_tensor(per)).tolist(),
                    world_size)


def _percentage_default(sizes, world_size):
    # Uneven on purpose: rank 0 twice the share of the others.
    w = [2.0] + [1.0] * (world_size - 1)
    return by_percentage(sizes, [100.0 * x / sum(w) for x in w])


def _ids_default(sizes, world_size):
    # Interleaved: global neuron ID i goes to rank i mod world_size (scattered ownership).
    total = sum(_check_sizes(sizes)[1:])
    return by_ids(sizes, {r: list(range(r, total, world_size)) for r in range(world_size)}, world_size)


STRATEGIES = {
    "count": neuron_wise,
    "percentage": _percentage_default,
    "ids": _ids_default,
    "layer": layer_wise,
}


def make_plan(strategy: str, sizes: Sequence[int], world_size: int) -> Plan:
    """The chapter's default plan for ``strategy`` in {count, percentage, ids, layer}."""
    if strategy not in STRATEGIES:
        raise PlanError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    plan = STRATEGIES[strategy](sizes, world_size)
    plan.strategy = strategy
    return plan
