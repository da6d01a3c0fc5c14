"""The switch-based multi-part network (Majumder et al. 2025): the 100-observation demo, and what it hides.

A rule table on the age and income bands (:class:`mpnn.switch.RuleSwitch`) routes every person of
the synthetic demographic world (:mod:`mpnn.data.demographics`) to one of five sigmoid neurons,
each trained in isolation on its own subset (:func:`mpnn.partition.train_isolated`, eq. 1 there).
This module holds the chapter's data preparation (:func:`make_runs`, :func:`stack`), its training
recipes (:func:`train_switch_net`, the centralised baselines :func:`train_pooled`, :func:`train_mlp`
and the learned switch :func:`train_gated_neurons`), one function per experiment of the notebook,
the explorer, the explorer's timing claim (:func:`explorer_retrain_claim`) and the figures.

Seeds ("replicas") are stacked: replica ``s`` owns units ``s n .. s n + n - 1`` of one stack of
neurons, so an experiment over every seed is one ``train_isolated`` call. Tensors are
X (S, N, 5) standardised features, Y (S, N) targets, A (S, N) the switch's unit (-1: no rule
matches) and G (S, N) the person's cell of the world.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd
import torch
from torch import nn

from mpnn import partition as P
from mpnn.data import demographics as D
from mpnn.infra import clock, determinism
from mpnn.runtime import plots
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


# ---------------------------------------------------------------- the switch and the data

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


def test_people(seed: int, recipe: Recipe) -> pd.DataFrame:
    """A run's shared test set: ``test_per_group`` fresh people of every cell (seed's second child)."""
    world = recipe.world()
    return D.sample(world, [recipe.test_per_group] * len(world.names), determinism.spawn_seeds(seed, 2)[1])


def make_runs(seeds: Sequence[int], recipe: Recipe, sizes: Sequence[int] = SIZES,
              heterogeneity: float | None = None) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Per seed: its training people (``sizes`` of the five groups) and its test people (every cell)."""
    world = recipe.world(heterogeneity)
    out = []
    for s in seeds:
        s_train, s_test = determinism.spawn_seeds(s, 2)
        out.append((D.sample(world, dict(zip(TRAIN, sizes)), s_train),
                    D.sample(world, [recipe.test_per_group] * len(world.names), s_test)))
    return out


@dataclass
class Stacked:
    """Equally long frames stacked: X (S, N, d), Y (S, N), A (S, N) switch unit or -1, G (S, N) cell."""

    X: torch.Tensor
    Y: torch.Tensor
    A: torch.Tensor
    G: torch.Tensor

    @property
    def in_distribution(self) -> torch.Tensor:
        """(S, N) bool: the person belongs to a cell the document's switch routes somewhere."""
        return ROUTE.to(self.G.device)[self.G] >= 0


def stack(frames: Sequence[pd.DataFrame], device, switch: RuleSwitch | None = None) -> Stacked:
    """Features, targets, the switch's assignment and the cell index of every frame, stacked."""
    switch = rule_switch() if switch is None else switch
    world = D.standard_world()
    return Stacked(torch.stack([D.features(d) for d in frames]).to(device),
                   torch.stack([D.targets(d) for d in frames]).to(device),
                   torch.stack([switch.assign_columns(columns(d)) for d in frames]).to(device),
                   torch.stack([torch.tensor(world.index(list(d["group"]))) for d in frames]).to(device))


def bayes_accuracy(frames: Sequence[pd.DataFrame], world: D.World) -> np.ndarray:
    """Accuracy of the true law's prediction ``sigmoid(b_g + z . w_g) > 1/2`` (the ceiling), (S,)."""
    out = []
    for d in frames:
        z = D.features(d).double().numpy()
        g = np.asarray(world.index(list(d["group"])))
        p = 1 / (1 + np.exp(-(world.coef[g, 0] + (z * world.coef[g, 1:]).sum(1))))
        out.append(float(((p > 0.5) == d["responded"].to_numpy()).mean()))
    return np.array(out)


# ---------------------------------------------------------------- the switch network, trained and evaluated

def train_switch_net(X: torch.Tensor, Y: torch.Tensor, A: torch.Tensor, recipe: Recipe,
                     n_units: int = N_UNITS) -> P.Neurons:
    """Isolated training (eq. 1 of :mod:`mpnn.partition`) of ``n_units`` neurons per replica, one pass.

    Replica ``s``'s unit ``a`` becomes unit ``s n_units + a`` of one stack; unrouted rows stay -1.
    """
    S, N, d = X.shape
    off = torch.arange(S, device=X.device)[:, None] * n_units
    flat = torch.where(A >= 0, A + off, torch.full_like(A, -1)).reshape(-1)
    return P.train_isolated(X.reshape(S * N, d), Y.reshape(-1), flat, S * n_units,
                            steps=recipe.steps, lr=recipe.lr, l2=recipe.l2)


def train_pooled(X: torch.Tensor, Y: torch.Tensor, recipe: Recipe) -> P.Neurons:
    """The pooled baseline: one neuron per replica trained on all of its rows (a one-unit switch)."""
    return train_switch_net(X, Y, torch.zeros(X.shape[:2], dtype=torch.long, device=X.device), recipe, n_units=1)


def pooled_probs(pooled: P.Neurons, X: torch.Tensor) -> torch.Tensor:
    """P(y=1) of each replica's pooled neuron on that replica's inputs: X (S, M, d) -> (S, M)."""
    return torch.sigmoid(torch.einsum("smd,sd->sm", X, pooled.W) + pooled.b[:, None])


def replica_acts(net: P.Neurons, X: torch.Tensor, n_units: int = N_UNITS) -> torch.Tensor:
    """Every neuron of replica s on replica s's inputs: X (S, M, d) -> activations (S, M, n)."""
    S = X.shape[0]
    W, b = net.W.view(S, n_units, -1), net.b.view(S, n_units)
    return torch.sigmoid(torch.einsum("smd,snd->smn", X, W) + b[:, None])


def routed(acts: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Output of the routed neuron, (S, M); NaN where the switch routes nowhere."""
    p = acts.gather(-1, A.clamp_min(0)[..., None])[..., 0]
    return torch.where(A >= 0, p, torch.full_like(p, float("nan")))


def accuracy(p: torch.Tensor, Y: torch.Tensor, keep: torch.Tensor | None = None) -> np.ndarray:
    """Per-replica accuracy of P(y=1) thresholded at 1/2 over the kept samples: (S,) numpy."""
    keep = torch.ones_like(Y, dtype=torch.bool) if keep is None else keep
    hit = (((p > 0.5).to(Y.dtype) == Y) & keep).sum(1).double()
    return (hit / keep.sum(1).double()).cpu().numpy()


def group_accuracy(acts: torch.Tensor, Y: torch.Tensor, G: torch.Tensor, n_groups: int = len(GROUPS)) -> torch.Tensor:
    """Accuracy of every neuron on every cell: acts (S, M, n) -> (S, n, n_groups)."""
    correct = ((acts > 0.5).to(Y.dtype) == Y[..., None]).double()
    return P.group_means(correct, G, n_groups)


# ---------------------------------------------------------------- the document's experiment (shipped CSV)

@dataclass
class DocumentRun:
    """Five neurons trained on the shipped CSV, evaluated on one test set of every cell."""

    train: Stacked
    test: Stacked
    net: P.Neurons
    seconds: float
    seen_accuracy: float
    unseen_accuracy: float
    activation: torch.Tensor      # (neurons, cells) mean output
    accuracy: torch.Tensor        # (neurons, cells)


def document_run(csv: pd.DataFrame, seed: int, recipe: Recipe) -> DocumentRun:
    """Train on the CSV's five subsets; the test people are those of run ``seed`` (:func:`test_people`)."""
    train, test = stack([csv], recipe.device), stack([test_people(seed, recipe)], recipe.device)
    t0 = time.perf_counter()
    net = train_switch_net(train.X, train.Y, train.A, recipe)
    seconds = time.perf_counter() - t0
    acts = replica_acts(net, test.X)
    return DocumentRun(train, test, net, seconds,
                       float(accuracy(routed(replica_acts(net, train.X), train.A), train.Y)[0]),
                       float(accuracy(routed(acts, test.A), test.Y, test.in_distribution)[0]),
                       P.group_means(acts, test.G, len(GROUPS))[0].cpu(),
                       group_accuracy(acts, test.Y, test.G)[0].cpu())


def isolation_check(train: Stacked, recipe: Recipe, scrambled: int = 2) -> dict:
    """Isolation, checked in float64 on replica 0.

    ``loop_gap``: max |vectorised - per-neuron loop| (``train_loop``: nn.Linear + SGD each);
    ``leak``: max change of the other neurons when neuron ``scrambled``'s features and labels are
    replaced (should be exactly 0); ``moved``: how far neuron ``scrambled`` itself moved.
    """
    x, y, a = train.X[0].double().cpu(), train.Y[0].double().cpu(), train.A[0].cpu()
    kw = dict(steps=recipe.steps, lr=recipe.lr, l2=recipe.l2)
    fast = P.train_isolated(x, y, a, N_UNITS, **kw)
    slow = P.train_loop(x, y, a, N_UNITS, **kw)
    x2, y2 = x.clone(), y.clone()
    rows = a == scrambled
    x2[rows] = torch.randn(int(rows.sum()), x.shape[1], dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    y2[rows] = 1 - y2[rows]
    pert = P.train_isolated(x2, y2, a, N_UNITS, **kw)
    others = torch.arange(N_UNITS) != scrambled
    return {"loop_gap": float(max((fast.W - slow.W).abs().max(), (fast.b - slow.b).abs().max())),
            "leak": float((pert.W[others] - fast.W[others]).abs().max()),
            "moved": float((pert.W[scrambled] - fast.W[scrambled]).abs().max()),
            "subset_sizes": torch.bincount(a, minlength=N_UNITS).tolist()}


# ---------------------------------------------------------------- centralised baselines (full-batch Adam)

def mlp_hidden_for(n_params: int, d: int) -> int:
    """Largest hidden width ``H`` with ``H (d + 2) + 1 <= n_params`` (a d-H-1 MLP's parameter count)."""
    h = (n_params - 1) // (d + 2)
    if h < 1:
        raise ValueError(f"{n_params} parameters cannot hold a {d}-H-1 MLP (needs at least {d + 3})")
    return h


class MLPStack(nn.Module):
    """``R`` independent d-H-1 tanh MLPs evaluated in one batched pass: x (R, N, d) -> logits (R, N)."""

    def __init__(self, replicas: int, d: int, hidden: int, seeds: Sequence[int] | None = None):
        super().__init__()
        seeds = list(range(replicas)) if seeds is None else list(seeds)
        if len(seeds) != replicas:
            raise ValueError(f"need one seed per replica ({replicas}), got {len(seeds)}")
        W1, W2 = [], []
        for s in seeds:                                        # PyTorch-default-like uniform init
            g = torch.Generator().manual_seed(int(s))
            W1.append((torch.rand(d, hidden, generator=g) * 2 - 1) / d ** 0.5)
            W2.append((torch.rand(hidden, generator=g) * 2 - 1) / hidden ** 0.5)
        self.W1 = nn.Parameter(torch.stack(W1))                # (R, d, H)
        self.b1 = nn.Parameter(torch.zeros(replicas, hidden))  # (R, H)
        self.W2 = nn.Parameter(torch.stack(W2))                # (R, H)
        self.b2 = nn.Parameter(torch.zeros(replicas))          # (R,)

    def n_params_each(self) -> int:
        return sum(p[0].numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(torch.bmm(x, self.W1) + self.b1[:, None])   # (R, N, H)
        return (h * self.W2[:, None]).sum(-1) + self.b2[:, None]   # (R, N)


def train_mlp(x: torch.Tensor, y: torch.Tensor, hidden: int, *, seeds: Sequence[int], steps: int = 500,
              lr: float = 0.05, l2: float = 1e-3) -> MLPStack:
    """One MLP per replica on its own data, x (R, N, d), y (R, N): full-batch Adam on the mean BCE.

    Full batch, not :func:`mpnn.infra.train.fit`'s shuffled mini-batches: every step sees all N rows in
    their order. The objective sums the replicas' losses; Adam is element-wise, so the stacked step
    equals R separate ones.
    """
    if x.dim() != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"need x (R, N, d) and y (R, N), got {tuple(x.shape)} and {tuple(y.shape)}")
    model = MLPStack(x.shape[0], x.shape[2], hidden, seeds).to(device=x.device, dtype=x.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    y = y.to(x)
    for _ in range(steps):
        opt.zero_grad()
        z = model(x)
        obj = nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none").mean(1).sum()
        obj = obj + 0.5 * l2 * ((model.W1 ** 2).sum() + (model.W2 ** 2).sum())
        obj.backward()
        opt.step()
    return model


def budget_mlp_hidden(n_units: int, d: int = len(D.FEATURES)) -> int:
    """Hidden width of the MLP with the parameter budget of ``n_units`` neurons (``n (d + 1)``)."""
    return mlp_hidden_for(n_units * (d + 1), d)


# ---------------------------------------------------------------- collective evaluation over seeds

@dataclass
class Collective:
    """The switch network and its baselines over seeds at the document's sizes (100 observations)."""

    runs: list
    train: Stacked
    test: Stacked
    net: P.Neurons
    acts: torch.Tensor            # (S, M, n): every neuron on its replica's test people
    p_pool: torch.Tensor          # (S, M)
    p_mlp: torch.Tensor           # (S, M)
    mlp_params: int
    table: pd.DataFrame           # method, split, seed, accuracy
    world: D.World                # the law the people were drawn from

    @property
    def keep(self) -> torch.Tensor:
        return self.test.in_distribution

    def accuracy_of(self, method: str, split: str = "unseen, same groups") -> np.ndarray:
        """Per-seed accuracies of the method whose name starts with ``method``, on ``split``."""
        rows = self.table[self.table.method.str.startswith(method) & (self.table.split == split)]
        if rows.empty:
            raise KeyError(f"no accuracies for {method!r} on {split!r}; methods: {sorted(set(self.table.method))}")
        return rows["accuracy"].to_numpy()


def _rows(method: str, split: str, values) -> list[dict]:
    return [{"method": method, "split": split, "seed": i, "accuracy": float(v)} for i, v in enumerate(values)]


def collective(seeds: Sequence[int], recipe: Recipe) -> Collective:
    """Train the switch network, the pooled neuron and the budget MLP on every seed's 100 people."""
    runs = make_runs(seeds, recipe)
    tr, te = stack([r[0] for r in runs], recipe.device), stack([r[1] for r in runs], recipe.device)
    net = train_switch_net(tr.X, tr.Y, tr.A, recipe)
    acts, keep = replica_acts(net, te.X), te.in_distribution
    p_pool = pooled_probs(train_pooled(tr.X, tr.Y, recipe), te.X)
    mlp = train_mlp(tr.X, tr.Y, budget_mlp_hidden(N_UNITS), seeds=seeds, steps=recipe.mlp_steps,
                    lr=recipe.mlp_lr, l2=recipe.l2)
    with torch.no_grad():
        p_mlp = torch.sigmoid(mlp(te.X))
    unseen = "unseen, same groups"
    rows = (_rows("switch network", "seen (overlapping)", accuracy(routed(replica_acts(net, tr.X), tr.A), tr.Y))
            + _rows("switch network", unseen, accuracy(routed(acts, te.A), te.Y, keep))
            + _rows("pooled neuron", unseen, accuracy(p_pool, te.Y, keep))
            + _rows(f"centralised MLP ({mlp.n_params_each()} params)", unseen, accuracy(p_mlp, te.Y, keep))
            + _rows("Bayes (true law)", unseen,
                    bayes_accuracy([r[1][r[1]["group"].isin(TRAIN)] for r in runs], recipe.world())))
    return Collective(runs, tr, te, net, acts, p_pool, p_mlp, mlp.n_params_each(), pd.DataFrame(rows),
                      recipe.world())


def own_group_margin(M: torch.Tensor, neuron: int = 3, group: str = MID) -> np.ndarray:
    """Per seed, how far ``neuron``'s score on ``group`` exceeds its best score on the other four
    training groups: ``M[s, neuron, group] - max_{g' != group} M[s, neuron, g']`` (a row of the
    heatmap; > 0: the neuron scores highest on ``group``). M (S, neurons, cells) -> (S,)."""
    cols = D.standard_world().index(TRAIN)
    g = GROUPS.index(group)
    others = [c for c in cols if c != g]
    return (M[:, neuron, g] - M[:, neuron, others].max(-1).values).double().cpu().numpy()


def own_neuron_top_share(M: torch.Tensor, route: torch.Tensor = ROUTE) -> np.ndarray:
    """Per seed, the share of routed groups on which the group's own neuron scores highest of all
    neurons (a column of the heatmap: ``argmax_i M[s, i, g] == route(g)``). M (S, neurons, cells) -> (S,)."""
    cells = (route >= 0).nonzero().flatten()
    top = M[:, :, cells].argmax(1).cpu()                              # (S, routed groups)
    return (top == route[cells]).double().mean(1).numpy()


def specialisation(c: Collective) -> dict:
    """Accuracy and activation heatmaps per seed, and the measures read from them.

    ``accuracy`` / ``activation``: (S, neurons, cells); ``si`` / ``si_activation``: (S,) the
    specialisation index of the accuracy / activation heatmap (:func:`mpnn.partition.specialization_index`);
    ``n4_act_margin`` / ``n4_acc_margin``: (S,) :func:`own_group_margin` of neuron 4 on the "Mid-age -
    Mild Income" group; ``n4_acc_hits`` / ``n4_act_hits``: in how many seeds that margin is positive;
    ``top_share_activation`` / ``top_share_accuracy``: (S,) :func:`own_neuron_top_share`;
    ``most_active_on_mid``: per seed, the neuron most active on that group.
    """
    acc = group_accuracy(c.acts, c.test.Y, c.test.G).cpu()
    act = P.group_means(c.acts, c.test.G, len(GROUPS)).cpu()
    mid = GROUPS.index(MID)
    n4_act, n4_acc = own_group_margin(act), own_group_margin(acc)
    return {"accuracy": acc, "activation": act, "si": P.specialization_index(acc, ROUTE).numpy(),
            "si_activation": P.specialization_index(act, ROUTE).double().numpy(),
            "n4_act_margin": n4_act, "n4_acc_margin": n4_acc,
            "n4_acc_hits": int((n4_acc > 0).sum()), "n4_act_hits": int((n4_act > 0).sum()),
            "top_share_activation": own_neuron_top_share(act), "top_share_accuracy": own_neuron_top_share(acc),
            "most_active_on_mid": [NEURON_NAMES[int(k)] for k in act[:, :, mid].argmax(-1)]}


# ---------------------------------------------------------------- ablation and scaling

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


# ---------------------------------------------------------------- misalignment, heterogeneity, OOD

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


def ood_accuracy(c: Collective) -> dict[str, np.ndarray]:
    """Per-seed accuracy on the four OOD cells of two fall-backs, the baselines and the Bayes ceiling.

    ``switch + average``: the mean output of all five neurons; ``switch + nearest``: the neuron
    whose training subset has the nearest (age, income) centroid.
    """
    S, ood = c.train.X.shape[0], ~c.keep
    X, A = c.train.X, c.train.A
    cent = torch.stack([torch.stack([X[s][A[s] == i][:, :2].mean(0) for i in range(N_UNITS)]) for s in range(S)])
    nearest = torch.cdist(c.test.X[..., :2], cent).argmin(-1)                   # (S, M)
    return {"switch + average": accuracy(c.acts.mean(-1), c.test.Y, ood),
            "switch + nearest": accuracy(routed(c.acts, nearest), c.test.Y, ood),
            "pooled neuron": accuracy(c.p_pool, c.test.Y, ood),
            "centralised MLP": accuracy(c.p_mlp, c.test.Y, ood),
            "Bayes (true law)": bayes_accuracy([r[1][r[1]["group"].isin(OOD)] for r in c.runs], c.world)}


# ---------------------------------------------------------------- the learned switch

class GatedNeurons(nn.Module):
    """``R`` independent replicas of a learned switch over ``n`` logistic neurons.

    Gate ``s = x Wg + bg`` (as :class:`mpnn.switch.LearnedSwitch`), neurons ``z_i = w_i . x + b_i``.
    Trained as a mixture of experts on the likelihood ``p(y|x) = sum_i softmax(s)_i p_i(y|x)``
    (Jacobs et al. 1991); at inference the switch is hard: each input goes to ``argmax_i s_i`` only.
    x (R, N, d) -> gate scores (R, N, n) and neuron logits (R, N, n).
    """

    def __init__(self, replicas: int, d: int, n_units: int, seeds: Sequence[int]):
        super().__init__()
        if len(seeds) != replicas:
            raise ValueError(f"need one seed per replica ({replicas}), got {len(seeds)}")
        gW, W = [], []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            gW.append(torch.randn(d, n_units, generator=g))
            W.append(0.1 * torch.randn(n_units, d, generator=g))
        self.gate_W = nn.Parameter(torch.stack(gW))                # (R, d, n)
        self.gate_b = nn.Parameter(torch.zeros(replicas, n_units))  # (R, n)
        self.W = nn.Parameter(torch.stack(W))                       # (R, n, d)
        self.b = nn.Parameter(torch.zeros(replicas, n_units))       # (R, n)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.gate_W) + self.gate_b[:, None]    # (R, N, n)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.W.transpose(1, 2)) + self.b[:, None]  # (R, N, n)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Hard switch decision: the neuron each input goes to, (R, N) long."""
        return self.scores(x).argmax(-1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """P(y=1) from the routed neuron only (hard switch): (R, N)."""
        z = self.logits(x).gather(-1, self.route(x)[..., None])[..., 0]
        return torch.sigmoid(z)


def train_gated_neurons(x: torch.Tensor, y: torch.Tensor, n_units: int, *, seeds: Sequence[int],
                        steps: int = 800, lr: float = 0.05, l2: float = 1e-3,
                        balance: float = 0.1) -> GatedNeurons:
    """Learn switch and neurons jointly: minimise ``-mean log sum_i g_i p_i(y|x)`` per replica.

    ``balance`` adds ``sum_i gbar_i log(n gbar_i)`` (KL of the mean gate ``gbar`` from uniform) so
    that no neuron is left without inputs. x (R, N, d), y (R, N) in {0, 1}; full-batch Adam (every
    step sees all N rows in order, not :func:`mpnn.infra.train.fit`'s shuffled mini-batches).
    """
    if x.dim() != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"need x (R, N, d) and y (R, N), got {tuple(x.shape)} and {tuple(y.shape)}")
    model = GatedNeurons(x.shape[0], x.shape[2], n_units, seeds).to(device=x.device, dtype=x.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    y = y.to(x)[..., None]                                          # (R, N, 1)
    for _ in range(steps):
        opt.zero_grad()
        log_g = torch.log_softmax(model.scores(x), -1)              # (R, N, n)
        z = model.logits(x)
        log_p = -(nn.functional.softplus(z) - y * z)                # log p_i(y|x), (R, N, n)
        nll = -torch.logsumexp(log_g + log_p, -1).mean(1).sum()     # replicas' losses summed
        gbar = log_g.exp().mean(1)                                  # (R, n)
        kl = (gbar * torch.log(gbar * n_units + 1e-12)).sum()
        obj = nll + balance * kl + 0.5 * l2 * (model.W ** 2).sum()
        obj.backward()
        opt.step()
    return model


def routing_purity(route: torch.Tensor, G: torch.Tensor, keep: torch.Tensor, n_units: int = N_UNITS):
    """Contingency (S, neurons, cells) of the kept people, and per seed the share of them whose
    neuron's majority cell is their own cell (purity, 1 for the manual switch)."""
    cont = torch.einsum("smn,smg->sng", nn.functional.one_hot(route, n_units).double() * keep[..., None],
                        nn.functional.one_hot(G, len(GROUPS)).double()).cpu()
    return cont, (cont.max(-1).values.sum(-1) / cont.sum((-1, -2))).numpy()


def learned_switch(c: Collective, seeds: Sequence[int], recipe: Recipe) -> dict:
    """A learned gate and five neurons on every seed's 100 people (no group labels), evaluated.

    ``accuracy`` / ``accuracy_ood``: per seed, in distribution / on the OOD cells; ``purity`` per
    seed; ``share``: (neurons, cells), the share of each cell routed to each neuron, mean over seeds.
    """
    gated = train_gated_neurons(c.train.X, c.train.Y, N_UNITS, seeds=seeds, steps=recipe.gate_steps, l2=recipe.l2)
    with torch.no_grad():
        p, route = gated.predict(c.test.X), gated.route(c.test.X)
    cont, purity = routing_purity(route, c.test.G, c.keep)
    return {"accuracy": accuracy(p, c.test.Y, c.keep), "accuracy_ood": accuracy(p, c.test.Y, ~c.keep),
            "purity": purity, "share": cont.mean(0) / cont.mean(0).sum(0, keepdim=True).clamp_min(1e-12)}


# ---------------------------------------------------------------- explorer and its timing claim

def explorer_update(neuron_of_group: Sequence[int], sizes: Sequence[int], sample_seed: int,
                    test: Stacked, recipe: Recipe) -> dict:
    """One explorer update: draw the subsets, train five neurons behind the user's table, evaluate.

    Returns the accuracy heatmap (neurons, cells), the in-distribution accuracy and the SI.
    """
    switch = rule_switch(neuron_of_group)
    train = stack([D.sample(recipe.world(), dict(zip(TRAIN, sizes)), sample_seed)], recipe.device, switch)
    acts = replica_acts(train_switch_net(train.X, train.Y, train.A, recipe), test.X)
    A = switch.assign_columns(band_columns(test.G[0]))[None].to(recipe.device)
    M = group_accuracy(acts, test.Y, test.G)[0].cpu()
    return {"accuracy": M, "si": float(P.specialization_index(M, route_of(neuron_of_group))),
            "accuracy_in_distribution": float(accuracy(routed(acts, A), test.Y, test.in_distribution)[0])}


def band_columns(cells: torch.Tensor) -> dict:
    """The band columns the switch reads, of people given by their cells (N,)."""
    bands = D.standard_world().groups
    cells = cells.cpu().numpy()
    return {"age_band": bands["age_band"].to_numpy()[cells], "income_band": bands["income_band"].to_numpy()[cells]}


def explorer_view(neuron_of_group: Sequence[int], sizes: Sequence[int], sample_seed: int,
                  test: Stacked, recipe: Recipe) -> alt.TopLevelMixin:
    """The explorer's chart: the accuracy heatmap of one update, titled with accuracy and SI."""
    res = explorer_update(neuron_of_group, sizes, sample_seed, test, recipe)
    return figure_heatmap(res["accuracy"], "accuracy",
                          f"accuracy {res['accuracy_in_distribution']:.3f}, SI {res['si']:.2f}",
                          scheme="redyellowgreen", domain=(0.3, 0.9), neuron_of_group=neuron_of_group)


def explorer_controls(sizes: Sequence[int] = SIZES) -> dict:
    """The explorer's ipywidgets: for each training group the neuron it trains, and its subset size."""
    import ipywidgets as W
    style = {"description_width": "160px"}
    pick = {f"neuron_{j}": W.Dropdown(options=[(n, i) for i, n in enumerate(NEURON_NAMES)], value=j,
                                      description=g[:22], style=style) for j, g in enumerate(TRAIN)}
    size = {f"size_{j}": W.IntSlider(value=s, min=0, max=200, step=5, description=f"size {j + 1}")
            for j, s in enumerate(sizes)}
    return pick | size


def explorer_renderer(sample_seed: int, test: Stacked, recipe: Recipe):
    """``render(neuron_0=.., .., size_4=..)`` for :func:`mpnn.runtime.widgets.controls_view`."""
    def render(**values):
        table = [values[f"neuron_{j}"] for j in range(N_UNITS)]
        return explorer_view(table, [values[f"size_{j}"] for j in range(N_UNITS)], sample_seed, test, recipe)
    return render


EXPLORER_TABLES = {"the document's": [0, 1, 2, 3, 4], "shifted by one": [1, 2, 3, 4, 0],
                   "neurons 1 and 2 swapped": [1, 0, 2, 3, 4], "reversed": [4, 3, 2, 1, 0]}
EXPLORER_SCALES = [0.25, 0.5, 1.0, 2.0, 4.0]


def explorer_grid(sample_seed: int, test: Stacked, recipe: Recipe, tables: dict = EXPLORER_TABLES,
                  scales: Sequence[float] = EXPLORER_SCALES) -> pd.DataFrame:
    """Every setting of the site explorer, precomputed: for each switch table and each factor on
    the document's subset sizes, one :func:`explorer_update` as a :func:`heat_frame` (with the
    setting's columns and a ``summary`` in words)."""
    frames = []
    for name, table in tables.items():
        for scale in scales:
            sizes = [max(1, round(n * scale)) for n in SIZES]
            res = explorer_update(table, sizes, sample_seed, test, recipe)
            frame = heat_frame(res["accuracy"], "accuracy", table)
            frames.append(frame.assign(**{"switch table": name, "subset sizes x": float(scale),
                                          "summary": f"{name} table, subset sizes {sizes}: accuracy "
                                                     f"{res['accuracy_in_distribution']:.3f}, SI {res['si']:.2f}"}))
    return pd.concat(frames, ignore_index=True)


def figure_explorer_site(grid: pd.DataFrame) -> alt.TopLevelMixin:
    """The site explorer: one dropdown picks the switch table, another the factor on the subset
    sizes; the precomputed heatmap of that setting is drawn (:func:`mpnn.runtime.plots.bound`).
    Both controls offer exactly the grid's values (a slider would offer factors in between that
    were never computed)."""
    chart = heat_chart(grid, "accuracy", "", scheme="redyellowgreen", domain=(0.3, 0.9))
    first = f"datum.neuron == {NEURON_NAMES[0]!r} && datum.group == {GROUP_ORDER[0]!r}"
    summary = alt.Chart(grid).transform_filter(first).mark_text(
        align="left", baseline="bottom", fontWeight="bold").encode(x=alt.value(0), y=alt.value(-8), text="summary:N")
    layered = alt.layer(chart, summary).properties(title=alt.TitleParams("Accuracy per neuron and group", offset=24))
    return plots.bound(layered, grid, {"switch table": {"kind": "dropdown", "value": "the document's"},
                                       "subset sizes x": {"kind": "dropdown", "name": "factor on the subset sizes",
                                                          "value": 1.0}})


def explorer_retrain_claim(*, sample_seed: int, test_seed: int, steps: int, lr: float, l2: float,
                           heterogeneity: float, test_per_group: int, repeats: int = 5,
                           limit_s: float = 1.0, device: str = "cpu") -> dict:
    """Timing claim "edit the switch, retrain in under a second", on one CPU thread.

    Times :func:`explorer_update` with the document's table and subset sizes (draw the subsets,
    train five neurons, evaluate on the test people of run ``test_seed``): the median of
    ``repeats`` calls after one warm-up. Passed when the median is below ``limit_s``.
    """
    recipe = Recipe(steps=steps, lr=lr, l2=l2, heterogeneity=heterogeneity, test_per_group=test_per_group,
                    device=device)
    test = stack([test_people(test_seed, recipe)], device)
    update = lambda: explorer_update(range(N_UNITS), SIZES, sample_seed, test, recipe)
    with determinism.cpu_threads(1, device):
        seconds = clock.median(clock.interleaved_samples({"update": update}, repeats=repeats)["update"])
    return {"passed": seconds < limit_s, "seconds": seconds,
            "measured": f"one explorer update (sample, train 5 neurons, evaluate) took {seconds * 1000:.0f} ms "
                        f"(median of {repeats})"}


# ---------------------------------------------------------------- figures

def heat_frame(M: torch.Tensor, value: str, neuron_of_group: Sequence[int] = range(N_UNITS)) -> pd.DataFrame:
    """Long form of a (neurons, cells) matrix; ``trained on`` marks each group's neuron (and OOD cells)."""
    own = {g: int(u) for g, u in zip(TRAIN, neuron_of_group)}
    return pd.DataFrame([{"neuron": NEURON_NAMES[i], "group": g, value: float(M[i, GROUPS.index(g)]),
                          "trained on": "yes" if own.get(g) == i else ("OOD" if g in OOD else "")}
                         for i in range(M.shape[0]) for g in GROUP_ORDER])


def figure_heatmap(M: torch.Tensor, value: str, title: str, *, scheme: str = "viridis",
                   domain: tuple[float, float] | None = None,
                   neuron_of_group: Sequence[int] = range(N_UNITS)) -> alt.LayerChart:
    """Neurons x groups heatmap of ``M`` (neurons, cells), annotated, the neuron's own subset boxed red."""
    return heat_chart(heat_frame(M, value, neuron_of_group), value, title, scheme=scheme, domain=domain)


def heat_chart(df: pd.DataFrame, value: str, title: str, *, scheme: str = "viridis",
               domain: tuple[float, float] | None = None) -> alt.LayerChart:
    """The chart of :func:`figure_heatmap` from a :func:`heat_frame` (or several of them, stacked)."""
    base = alt.Chart(df).encode(
        x=alt.X("group:N", sort=GROUP_ORDER, title=None, axis=alt.Axis(labelAngle=-40, labelLimit=220)),
        y=alt.Y("neuron:N", sort=NEURON_NAMES, title=None))
    scale = alt.Scale(scheme=scheme, domain=list(domain), clamp=True) if domain else alt.Scale(scheme=scheme)
    rect = base.mark_rect().encode(color=alt.Color(f"{value}:Q", scale=scale),
                                   tooltip=["neuron", "group", alt.Tooltip(f"{value}:Q", format=".2f"), "trained on"])
    lo, hi = domain if domain else (float(df[value].min()), float(df[value].max()))
    t = f"(datum[{value!r}] - {lo}) / {(hi - lo) or 1}"           # the value's place on the colour scale
    dark = {"redyellowgreen": f"{t} < 0.2 || {t} > 0.8", "viridis": f"{t} < 0.5", "blues": f"{t} > 0.6"}.get(scheme)
    ink = alt.condition(dark, alt.value("white"), alt.value("black")) if dark else alt.value("black")
    text = base.mark_text(fontSize=10).encode(text=alt.Text(f"{value}:Q", format=".2f"), color=ink)
    box = base.transform_filter("datum['trained on'] == 'yes'").mark_rect(fill=None, stroke="red", strokeWidth=2)
    return (rect + text + box).properties(title=title, width=430, height=200)


def figure_bars(summary: pd.DataFrame, label: str, *, title: str = "", value_title: str = "accuracy",
                color: str | None = None, color_title: str | None = None, labels: bool = True,
                width: int = 320) -> alt.LayerChart:
    """Horizontal bars of the mean with 95% CI error bars (a :func:`mpnn.runtime.stats.summarise`
    frame), one row per ``label`` in the frame's order, so long labels read without rotation."""
    y = alt.Y(f"{label}:N", sort=None, title=None,
              axis=alt.Axis(labelLimit=260) if labels else alt.Axis(labels=False, ticks=False))
    tooltip = [label, alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f"),
               alt.Tooltip("high:Q", format=".3f")]
    enc = {"color": alt.Color(f"{color}:N", title=color_title or color, sort=None)} if color else {}
    bars = alt.Chart(summary).mark_bar(opacity=0.8).encode(
        y=y, x=alt.X("mean:Q", title=value_title), tooltip=tooltip, **enc)
    err = alt.Chart(summary).mark_errorbar(color="black").encode(y=y, x=alt.X("low:Q", title=value_title), x2="high:Q")
    return (bars + err).properties(title=title, width=width, height=alt.Step(24))


def figure_collective(summary: pd.DataFrame) -> alt.LayerChart:
    """Accuracy of every method (mean, 95% CI over seeds) on unseen people of the training groups,
    and of the switch network on its own training samples, coloured by the test people."""
    seen = summary.split.str.startswith("seen")
    df = summary.assign(method=summary.method.where(~seen, summary.method + ", own training samples"))
    return figure_bars(df, "method", title="Collective accuracy, mean and 95% CI over seeds",
                       color="split", color_title="test people")


def figure_misalignment(summary: pd.DataFrame) -> alt.HConcatChart:
    """Accuracy and specialisation index (mean, 95% CI) of every switch, side by side (the rows of
    the two panels are the same switches, labelled once)."""
    return alt.hconcat(*[figure_bars(summary[summary.metric == m], "switch", title=m, value_title=m,
                                     labels=i == 0, width=230)
                         for i, m in enumerate(["accuracy", "specialisation index"])])


def figure_curve(summary: pd.DataFrame, x: str, color: str | None = None, *, log_x: bool = True,
                 **kwargs) -> alt.LayerChart:
    """:func:`mpnn.runtime.plots.line_ci` with one x tick at every value the run measured (a log
    axis would otherwise crowd its labels or label values that were never run); ``kwargs`` go to
    ``line_ci`` (x_title, y_title, title)."""
    chart = plots.line_ci(summary, x, color, log_x=log_x, **kwargs)
    ticks = sorted(summary[x].unique().tolist())
    lo, hi = ticks[0], ticks[-1]
    margin = (hi - lo) * 0.04 or 1
    domain = [lo / 1.2, hi * 1.2] if log_x else [lo - margin, hi + margin]     # the end points off the frame
    for layer in chart.layer:
        layer.encoding.x.axis = alt.Axis(values=ticks, format=",", grid=True)
        layer.encoding.x.scale = alt.Scale(type="log" if log_x else "linear", domain=domain, nice=False)
    return chart
