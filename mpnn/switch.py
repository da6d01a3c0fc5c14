"""Switches: one routing abstraction for every chapter.

A switch maps an input to a mask ``m`` over ``n_units`` units (neurons, partitions or experts),
``m`` of shape ``(batch, n_units)``. The routed layer computes ``y = sum_i m_i * f_i(x)``: units with
``m_i = 0`` are neither evaluated for that input (when the caller skips them) nor updated by it,
because ``d y / d theta_i = m_i * d f_i / d theta_i`` vanishes.

This is the subsampling operation of Scardapane et al. (2024, eq. 1): keep a subset of a set
(tokens, experts, layers) through a binary mask. Three ways to compute the mask:

* :class:`RuleSwitch`  -- a readable table ``condition -> units`` on named features (the switch-based multi-part network document);
* :class:`TagSwitch`   -- a tag (e.g. label parity) selects a fixed unit group (the tag-partitioning document);
* :class:`LearnedSwitch` -- a linear gate ``s = x W + b`` followed by softmax, hard top-k
  (straight-through) or Gumbel-softmax (Jang et al. 2017), used by mixture-of-experts (003).

The functional primitives :func:`topk_mask`, :func:`straight_through` and :func:`gumbel_softmax`
are reused by :mod:`mpnn.moe` and :mod:`mpnn.tokens`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "topk_mask", "straight_through", "gumbel_softmax",
    "Rule", "RuleSwitch", "TagSwitch", "LearnedSwitch",
]


# ---------------------------------------------------------------- functional primitives

def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Binary mask with ones at the ``k`` largest entries of the last dimension.

    Ties are broken by :func:`torch.topk` (lowest index first). ``scores``: (..., n) -> (..., n).
    """
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of units ({n}), got {k}")
    index = scores.topk(k, dim=-1).indices
    return torch.zeros_like(scores).scatter_(-1, index, 1.0)


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Forward value ``hard``, gradient of ``soft`` (Bengio et al. 2013): ``hard + soft - sg(soft)``."""
    return hard + soft - soft.detach()


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-softmax sample ``softmax((logits + g) / tau)`` with ``g = -log(-log u)``, ``u ~ U(0,1)``.

    With ``hard=True`` the forward value is the one-hot argmax and the gradient is the soft sample's.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    g = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))  # Gumbel(0, 1)
    soft = torch.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return soft
    return straight_through(topk_mask(soft.detach(), 1), soft)


# ---------------------------------------------------------------- rule table

@dataclass(frozen=True)
class Rule:
    """``when`` every named feature equals the given value (or is in the given list), route to ``units``."""

    when: Mapping[str, object]
    units: tuple[int, ...]

    def matches(self, row: Mapping[str, object]) -> bool:
        for name, wanted in self.when.items():
            value = row[name]
            if isinstance(wanted, (list, tuple, set, frozenset)):
                if value not in wanted:
                    return False
            elif value != wanted:
                return False
        return True


class RuleSwitch:
    """A readable routing table: the first matching rule decides the units of a row.

    >>> s = RuleSwitch([({"age": "young"}, [0]), ({"age": "old"}, [1, 2])], n_units=3)
    >>> s.route([{"age": "old"}]).tolist()
    [[0.0, 1.0, 1.0]]

    Rows matching no rule get an all-zero mask (no unit is responsible) unless ``default`` is given.
    """

    def __init__(self, rules: Sequence[tuple[Mapping[str, object], Sequence[int] | int]], *,
                 n_units: int, default: Sequence[int] | None = None):
        self.n_units = int(n_units)
        self.rules = []
        for when, units in rules:
            units = (units,) if isinstance(units, int) else tuple(int(u) for u in units)
            bad = [u for u in units if not 0 <= u < self.n_units]
            if bad:
                raise ValueError(f"rule {dict(when)} routes to unknown unit(s) {bad}; "
                                 f"units are 0..{self.n_units - 1}")
            self.rules.append(Rule(dict(when), units))
        self.default = None if default is None else tuple(default)

    def units_for(self, row: Mapping[str, object]) -> tuple[int, ...]:
        for rule in self.rules:
            if rule.matches(row):
                return rule.units
        return self.default or ()

    def route(self, rows: Sequence[Mapping[str, object]]) -> torch.Tensor:
        """Mask of shape (len(rows), n_units)."""
        mask = torch.zeros(len(rows), self.n_units)
        for i, row in enumerate(rows):
            mask[i, list(self.units_for(row))] = 1.0
        return mask

    def assignment(self, rows: Sequence[Mapping[str, object]]) -> torch.Tensor:
        """Index of the first unit of each row, -1 where no rule matches: shape (len(rows),)."""
        return torch.tensor([(self.units_for(r) or (-1,))[0] for r in rows], dtype=torch.long)

    def route_columns(self, columns: Mapping[str, Sequence]) -> torch.Tensor:
        """Vectorised :meth:`route` on column arrays ``{feature: values (N,)}``: mask (N, n_units).

        Same first-match semantics, evaluated rule by rule with numpy (no Python loop over rows).
        """
        cols = {k: np.asarray(v) for k, v in columns.items()}
        if not cols:
            raise ValueError("route_columns needs at least one feature column")
        n = len(next(iter(cols.values())))
        mask = torch.zeros(n, self.n_units)
        free = np.ones(n, dtype=bool)                      # rows no earlier rule has taken
        for rule in self.rules:
            hit = free.copy()
            for name, wanted in rule.when.items():
                if name not in cols:
                    raise KeyError(f"rule {dict(rule.when)} needs column {name!r}; got {sorted(cols)}")
                many = isinstance(wanted, (list, tuple, set, frozenset))
                hit &= np.isin(cols[name], list(wanted)) if many else cols[name] == wanted
            rows = torch.as_tensor(np.flatnonzero(hit))
            if rule.units:
                mask[rows[:, None], torch.tensor(rule.units)[None, :]] = 1.0
            free &= ~hit
        if self.default:
            rows = torch.as_tensor(np.flatnonzero(free))
            mask[rows[:, None], torch.tensor(self.default)[None, :]] = 1.0
        return mask

    def assign_columns(self, columns: Mapping[str, Sequence]) -> torch.Tensor:
        """First unit of each row (long, (N,)), -1 where no rule matches: vectorised :meth:`assignment`."""
        mask = self.route_columns(columns)
        return torch.where(mask.any(-1), mask.argmax(-1), torch.full((mask.shape[0],), -1))

    def relabel(self, mapping: Sequence[int] | Mapping[int, int]) -> "RuleSwitch":
        """The same table with unit ``u`` renamed ``mapping[u]`` (e.g. a swapped, misaligned switch)."""
        m = dict(enumerate(mapping)) if not isinstance(mapping, Mapping) else dict(mapping)
        fix = lambda units: tuple(m.get(u, u) for u in units)
        return RuleSwitch([(r.when, fix(r.units)) for r in self.rules], n_units=self.n_units,
                          default=None if self.default is None else fix(self.default))

    def to_frame(self):
        """The table as a pandas DataFrame (one row per rule)."""
        import pandas as pd
        return pd.DataFrame(self.table()).set_index("rule")

    def _repr_html_(self) -> str:
        return self.to_frame().to_html()

    def table(self) -> list[dict]:
        """The rules as records (for a DataFrame or a printed table)."""
        return [{"rule": i, "when": " and ".join(f"{k} = {v}" for k, v in r.when.items()),
                 "units": list(r.units)} for i, r in enumerate(self.rules)]

    def __repr__(self) -> str:
        lines = [f"RuleSwitch(n_units={self.n_units})"]
        lines += [f"  {t['rule']}: if {t['when']} -> units {t['units']}" for t in self.table()]
        if self.default is not None:
            lines.append(f"  otherwise -> units {list(self.default)}")
        return "\n".join(lines)


# ---------------------------------------------------------------- tag

class TagSwitch(nn.Module):
    """A tag (integer per sample) selects a fixed group of units: ``m[b] = groups[tag[b]]``.

    ``groups`` maps each tag to the units it activates, e.g. ``{0: range(0, 128), 1: range(128, 256)}``.
    """

    def __init__(self, groups: Mapping[int, Sequence[int]], n_units: int):
        super().__init__()
        tags = sorted(groups)
        if tags != list(range(len(tags))):
            raise ValueError(f"tags must be 0..T-1, got {tags}")
        table = torch.zeros(len(tags), n_units)
        for t in tags:
            units = list(groups[t])
            if units and not (0 <= min(units) and max(units) < n_units):
                raise ValueError(f"tag {t} routes to units outside 0..{n_units - 1}")
            table[t, units] = 1.0
        self.register_buffer("table", table)  # (tags, units)

    @property
    def n_units(self) -> int:
        return self.table.shape[1]

    def forward(self, tags: torch.Tensor) -> torch.Tensor:
        """tags (batch,) int -> mask (batch, n_units)."""
        return self.table[tags.long()]

    def __repr__(self) -> str:
        rows = []
        for t in range(self.table.shape[0]):
            units = self.table[t].nonzero().flatten().tolist()
            span = f"{units[0]}..{units[-1]}" if units == list(range(units[0], units[-1] + 1)) else units
            rows.append(f"  tag {t} -> units {span} ({len(units)})")
        return "TagSwitch(n_units={})\n{}".format(self.n_units, "\n".join(rows))


# ---------------------------------------------------------------- learned

class LearnedSwitch(nn.Module):
    """Learned gate ``s = x W + b`` (scores over units) turned into a mask.

    modes:
      * ``"softmax"``: dense weights ``softmax(s)`` (a soft mixture, every unit active);
      * ``"topk"``:    hard top-k mask in the forward pass, softmax gradient (straight-through);
      * ``"gumbel"``:  Gumbel-softmax with temperature ``tau`` while training, hard top-k at eval.

    ``forward`` returns the mask; ``scores`` and ``probs`` expose the gate for inspection.
    """

    MODES = ("softmax", "topk", "gumbel")

    def __init__(self, in_features: int, n_units: int, *, mode: str = "topk", k: int = 1,
                 tau: float = 1.0):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if not 1 <= k <= n_units:
            raise ValueError(f"k must be between 1 and n_units={n_units}, got {k}")
        self.gate = nn.Linear(in_features, n_units)
        self.mode, self.k, self.tau = mode, k, tau

    @property
    def n_units(self) -> int:
        return self.gate.out_features

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.gate(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(x)
        if self.mode == "softmax":
            return torch.softmax(s, dim=-1)
        if self.mode == "gumbel" and self.training:
            if self.k == 1:
                return gumbel_softmax(s, self.tau, hard=True)
            soft = gumbel_softmax(s, self.tau, hard=False)
            return straight_through(topk_mask(soft.detach(), self.k), soft)
        soft = torch.softmax(s, dim=-1)
        return straight_through(topk_mask(s.detach(), self.k), soft)

    def extra_repr(self) -> str:
        return f"in={self.gate.in_features}, units={self.n_units}, mode={self.mode}, k={self.k}, tau={self.tau}"
