"""Subset-size ablation, scaling the data and scaling the neurons."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from mpnn.data import demographics as D
from mpnn.infra import determinism

from .collective import budget_mlp_hidden, mlp_hidden_for, train_mlp
from .data import N_UNITS, SIZES, TRAIN, Recipe
from .stacked import (accuracy, bayes_accuracy, make_runs, pooled_probs, replica_acts, routed, stack, train_pooled,
                      train_switch_net)


def subset_ablation(seeds: Sequence[int], recipe: Recipe, sizes: Sequence[int]) -> pd.DataFrame:
    """Seen and unseen accuracy with ``m`` observations per neuron, for every ``m`` in ``sizes``."""
    from tqdm.auto import tqdm
    rows = []
    for m in tqdm(sizes, desc="subset size"):
        runs = make_runs(seeds, recipe, sizes=[m] * N_UNITS)
        tr, te = stack([r[0] for r in runs], recipe.device), stack([r[1] for r in runs], recipe.device)
        net = train_switch_net(tr.X, tr.Y, tr.A, recipe)
        seen = accuracy(routed(replica_acts(net, tr.X), tr.A), tr.Y)
        unseen = accuracy(routed(replica_acts(net, te.X), te.A), te.Y, te.in_distribution)
        rows += [{"per-neuron subset": m, "split": "seen", "accuracy": v, "seed": i} for i, v in enumerate(seen)]
        rows += [{"per-neuron subset": m, "split": "unseen", "accuracy": v, "seed": i} for i, v in enumerate(unseen)]
    return pd.DataFrame(rows)


def overfit_gap(ablation: pd.DataFrame, m: int) -> np.ndarray:
    """Per-seed seen minus unseen accuracy at ``m`` observations per neuron."""
    wide = ablation.pivot_table(index=["per-neuron subset", "seed"], columns="split", values="accuracy")
    gap = (wide["seen"] - wide["unseen"]).rename("gap").reset_index()
    return gap[gap["per-neuron subset"] == m]["gap"].to_numpy()


def paired_difference(df: pd.DataFrame, where: str, value: str, a: str, b: str) -> np.ndarray:
    """Per-seed ``value`` of method ``a`` minus method ``b`` in the rows selected by the query ``where``."""
    rows = df.query(where)
    return rows[rows.method == a][value].to_numpy() - rows[rows.method == b][value].to_numpy()


def data_scaling(seeds: Sequence[int], recipe: Recipe, data_sizes: Sequence[int]) -> tuple[pd.DataFrame, dict]:
    """Accuracy on unseen people of the training groups as the data grows (document's proportions).

    Returns the rows (observations, method, accuracy, seed) and the isolated training time (s, all
    seeds in one pass) per size.
    """
    from tqdm.auto import tqdm
    world, hidden = recipe.world(), budget_mlp_hidden(N_UNITS)
    rows, seconds = [], {}
    for n_obs in tqdm(data_sizes, desc="data size"):
        sizes = [max(1, round(n_obs * s / sum(SIZES))) for s in SIZES]
        runs = make_runs(seeds, recipe, sizes=sizes)
        tr, te = stack([r[0] for r in runs], recipe.device), stack([r[1] for r in runs], recipe.device)
        keep = te.in_distribution
        t0 = time.perf_counter()
        net = train_switch_net(tr.X, tr.Y, tr.A, recipe)
        seconds[sum(sizes)] = time.perf_counter() - t0
        pooled = train_pooled(tr.X, tr.Y, recipe)
        mlp = train_mlp(tr.X, tr.Y, hidden, seeds=seeds, steps=recipe.mlp_steps, lr=recipe.mlp_lr, l2=recipe.l2)
        with torch.no_grad():
            res = {"switch network": accuracy(routed(replica_acts(net, te.X), te.A), te.Y, keep),
                   "pooled neuron": accuracy(pooled_probs(pooled, te.X), te.Y, keep),
                   "centralised MLP": accuracy(torch.sigmoid(mlp(te.X)), te.Y, keep),
                   "Bayes (true law)": bayes_accuracy([r[1][r[1]["group"].isin(TRAIN)] for r in runs], world)}
        rows += [{"observations": sum(sizes), "method": k, "accuracy": v, "seed": i}
                 for k, vals in res.items() for i, v in enumerate(vals)]
    return pd.DataFrame(rows), seconds


def _grid_seed(world: D.World, n: int, obs_per_neuron: int, test_per_group: int, seed: int):
    """One seed's training and test people of a grid world, as tensors (cell index = neuron)."""
    s_train, s_test = determinism.spawn_seeds(seed, 2)
    tr = D.sample(world, [obs_per_neuron] * n, s_train)
    te = D.sample(world, [max(10, test_per_group // 10)] * n, s_test)
    cells = lambda df: torch.tensor(world.index(list(df.group)))
    return (D.features(tr), D.targets(tr), cells(tr), D.features(te), D.targets(te), cells(te),
            bayes_accuracy([te], world)[0])


def neuron_scaling(seeds: Sequence[int], recipe: Recipe, neuron_counts: Sequence[int], *,
                   obs_per_neuron: int, mlp_max_neurons: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """Accuracy on unseen people of ``grid_world(n)`` with one neuron per cell, for every ``n``.

    The centralised MLP (parameter budget ``6 n``) runs only up to ``mlp_max_neurons``. Returns the
    rows (neurons, method, accuracy, seed) and the isolated training time per ``n`` (s, all seeds).
    """
    from tqdm.auto import tqdm
    rows, seconds = [], {}
    for n in tqdm(neuron_counts, desc="neurons"):
        world = D.grid_world(n, heterogeneity=recipe.heterogeneity, seed=seed)
        per_seed = [_grid_seed(world, n, obs_per_neuron, recipe.test_per_group, s) for s in seeds]
        X, Y, A, Xt, Yt, At = (torch.stack(v).to(recipe.device) for v in list(zip(*per_seed))[:6])
        t0 = time.perf_counter()
        net = train_switch_net(X, Y, A, recipe, n_units=n)
        seconds[n] = time.perf_counter() - t0
        res = {"switch network": accuracy(routed(replica_acts(net, Xt, n), At), Yt),
               "pooled neuron": accuracy(pooled_probs(train_pooled(X, Y, recipe), Xt), Yt),
               "Bayes (true law)": np.array([p[6] for p in per_seed])}
        if n <= mlp_max_neurons:
            mlp = train_mlp(X, Y, mlp_hidden_for(6 * n, X.shape[2]), seeds=seeds, steps=recipe.mlp_steps,
                            lr=recipe.mlp_lr, l2=recipe.l2)
            with torch.no_grad():
                res["centralised MLP"] = accuracy(torch.sigmoid(mlp(Xt)), Yt)
        rows += [{"neurons": n, "method": k, "accuracy": v, "seed": i} for k, vals in res.items() for i, v in enumerate(vals)]
    return pd.DataFrame(rows), seconds
