"""The data and the switch, defined: the world's cells, the chapter's recipe and the document's rule table.

A rule table on the age and income bands (:class:`mpnn.switch.RuleSwitch`) routes every person of
the synthetic demographic world (:mod:`mpnn.data.demographics`) to one of five sigmoid neurons.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from mpnn.data import demographics as D
from mpnn.switch import RuleSwitch

GROUPS = D.standard_world().names                   # the 9 cells, in grid order
TRAIN = list(D.DOCUMENT_GROUPS)                     # neuron i (1-based in the text) <- TRAIN[i-1]
OOD = [g for g in GROUPS if g not in TRAIN]         # the four cells no neuron is trained on
N_UNITS = len(TRAIN)
SIZES = list(D.DOCUMENT_SIZES)
NEURON_NAMES = [f"neuron {i + 1}" for i in range(N_UNITS)]
GROUP_ORDER = TRAIN + OOD
MID = "Mid-age - Mild Income (Mixed)"               # the document's "neuron 4" group


@dataclass(frozen=True)
class Recipe:
    """The chapter's training settings (its parameters cell) and the device tensors live on."""

    steps: int = 500
    lr: float = 0.5
    l2: float = 1e-3
    mlp_steps: int = 500
    mlp_lr: float = 0.05
    gate_steps: int = 800
    heterogeneity: float = 1.0
    test_per_group: int = 200
    device: str | torch.device = "cpu"

    def world(self, heterogeneity: float | None = None) -> D.World:
        return D.standard_world(self.heterogeneity if heterogeneity is None else heterogeneity)


def band_rule(name: str) -> dict:
    """The rule condition of a cell name, e.g. "Young - Low Income (Female)" -> age Young, income Low."""
    age, rest = name.split(" - ")
    return {"age_band": age, "income_band": rest.split(" ")[0]}


def rule_switch(neuron_of_group: Sequence[int] = range(N_UNITS)) -> RuleSwitch:
    """The rule table sending training group ``TRAIN[j]`` to neuron ``neuron_of_group[j]``."""
    return RuleSwitch([(band_rule(g), int(u)) for g, u in zip(TRAIN, neuron_of_group)], n_units=N_UNITS)


def route_of(neuron_of_group: Sequence[int] = range(N_UNITS)) -> torch.Tensor:
    """Cell -> neuron of a switch table, (9,) long, -1 for the cells it has no rule for (OOD)."""
    route = torch.full((len(GROUPS),), -1, dtype=torch.long)
    route[D.standard_world().index(TRAIN)] = torch.tensor([int(u) for u in neuron_of_group])
    return route


ROUTE = route_of()                                  # the document's switch, cell -> neuron


def columns(df: pd.DataFrame) -> dict:
    """The two band columns the switch reads."""
    return {"age_band": df["age_band"].to_numpy(), "income_band": df["income_band"].to_numpy()}
