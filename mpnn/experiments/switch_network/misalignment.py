"""A misaligned switch (at inference and at training), and where specialisation comes from (the
between-group heterogeneity sweep)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from mpnn import partition as P

from .collective import Collective
from .data import N_UNITS, ROUTE, Recipe, columns, rule_switch
from .stacked import accuracy, group_accuracy, make_runs, replica_acts, routed, stack, train_switch_net


RELABELS = {"aligned": [0, 1, 2, 3, 4], "2 swapped": [1, 0, 2, 3, 4],
            "3 in a cycle": [1, 2, 0, 3, 4], "all 5 shifted": [1, 2, 3, 4, 0]}


def _metric_rows(switch: str, accs, sis) -> list[dict]:
    return ([{"switch": switch, "metric": "accuracy", "value": a, "seed": i} for i, a in enumerate(accs)]
            + [{"switch": switch, "metric": "specialisation index", "value": v, "seed": i} for i, v in enumerate(sis)])


def misalignment(c: Collective, recipe: Recipe, noise_levels: Sequence[float], seed: int) -> pd.DataFrame:
    """Accuracy and specialisation index of a misconfigured switch (switch, metric, value, seed).

    At inference: the trained network behind a relabelled table (:data:`RELABELS`). At training: a
    share ``p`` of the training rows routed to a uniformly random neuron (generator seeded ``seed``).
    """
    from tqdm.auto import tqdm
    acc_all = group_accuracy(c.acts, c.test.Y, c.test.G).cpu()
    keep, rows = c.keep, []
    for name, perm in RELABELS.items():
        bad = rule_switch(perm)
        At_bad = torch.stack([bad.assign_columns(columns(r[1])) for r in c.runs]).to(recipe.device)
        route_bad = torch.tensor(perm)[ROUTE.clamp_min(0)].masked_fill(ROUTE < 0, -1)
        rows += _metric_rows(name, accuracy(routed(c.acts, At_bad), c.test.Y, keep),
                             P.specialization_index(acc_all, route_bad).numpy())
    gen = torch.Generator().manual_seed(seed)
    A = c.train.A
    for p in tqdm(noise_levels, desc="training noise"):
        flip = torch.rand(A.shape, generator=gen) < p
        A_noisy = torch.where(flip.to(A.device), torch.randint(0, N_UNITS, A.shape, generator=gen).to(A.device), A)
        acts = replica_acts(train_switch_net(c.train.X, c.train.Y, A_noisy, recipe), c.test.X)
        rows += _metric_rows(f"training noise p={p:g}", accuracy(routed(acts, c.test.A), c.test.Y, keep),
                             P.specialization_index(group_accuracy(acts, c.test.Y, c.test.G).cpu(), ROUTE).numpy())
    return pd.DataFrame(rows)


def metric_of(mis: pd.DataFrame, switch: str, metric: str) -> np.ndarray:
    """Per-seed values of one (switch, metric) row group of :func:`misalignment`."""
    return mis[(mis.switch == switch) & (mis.metric == metric)]["value"].to_numpy()


def heterogeneity_sweep(seeds: Sequence[int], recipe: Recipe, levels: Sequence[float]) -> pd.DataFrame:
    """Specialisation index per seed at every between-group heterogeneity ``h`` (heterogeneity, si, seed)."""
    from tqdm.auto import tqdm
    rows = []
    for h in tqdm(levels, desc="heterogeneity"):
        runs = make_runs(seeds, recipe, heterogeneity=h)
        tr, te = stack([r[0] for r in runs], recipe.device), stack([r[1] for r in runs], recipe.device)
        acts = replica_acts(train_switch_net(tr.X, tr.Y, tr.A, recipe), te.X)
        si = P.specialization_index(group_accuracy(acts, te.Y, te.G).cpu(), ROUTE).numpy()
        rows += [{"heterogeneity": h, "si": v, "seed": i} for i, v in enumerate(si)]
    return pd.DataFrame(rows)
