"""The switch-network chapter's recipes against independent references (loops, hand-made cases)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mpnn import partition as P
from mpnn.data import demographics as D
from mpnn.experiments import switch_network as E

RECIPE = E.Recipe(steps=40, test_per_group=20)


def _stacked(S=2, N=30, d=5, units=E.N_UNITS, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(S, N, d, generator=g, dtype=torch.float64)
    Y = (torch.rand(S, N, generator=g) < 0.5).double()
    A = torch.randint(-1, units, (S, N), generator=g)
    return X, Y, A


def test_stacked_replicas_train_like_separate_runs():
    X, Y, A = _stacked()
    net = E.train_switch_net(X, Y, A, RECIPE)
    for s in range(2):
        keep = A[s] >= 0
        alone = P.train_isolated(X[s][keep], Y[s][keep], A[s][keep], E.N_UNITS, steps=40, lr=RECIPE.lr, l2=RECIPE.l2)
        units = slice(s * E.N_UNITS, (s + 1) * E.N_UNITS)
        assert torch.allclose(net.W[units], alone.W, atol=1e-12) and torch.allclose(net.b[units], alone.b, atol=1e-12)
    pooled = E.train_pooled(X, Y, RECIPE)                           # one neuron per replica on all its rows
    alone = P.train_isolated(X[1], Y[1], torch.zeros(30, dtype=torch.long), 1, steps=40, lr=RECIPE.lr, l2=RECIPE.l2)
    assert torch.allclose(pooled.W[1], alone.W[0], atol=1e-12)
    assert torch.allclose(E.pooled_probs(pooled, X)[1], alone.activations(X[1])[:, 0], atol=1e-12)


def test_replica_activations_routing_and_accuracy_by_hand():
    X, Y, A = _stacked()
    net = E.train_switch_net(X, Y, A, RECIPE)
    acts = E.replica_acts(net, X)
    for s in range(2):
        ref = net.select(slice(s * E.N_UNITS, (s + 1) * E.N_UNITS)).activations(X[s])
        assert torch.allclose(acts[s], ref, atol=1e-12)
    p = E.routed(acts, A)
    assert torch.isnan(p[A < 0]).all()
    i, j = (A >= 0).nonzero()[0]
    assert float(p[i, j]) == float(acts[i, j, A[i, j]])
    # accuracy: 3 kept samples, 2 right
    probs = torch.tensor([[0.9, 0.2, 0.7, 0.1]])
    labels = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    keep = torch.tensor([[True, True, True, False]])
    assert math.isclose(E.accuracy(probs, labels, keep)[0], 2 / 3) and E.accuracy(probs, labels)[0] == 0.75


def test_group_accuracy_matches_a_naive_loop():
    g = torch.Generator().manual_seed(2)
    acts = torch.rand(2, 50, 3, generator=g)
    Y = (torch.rand(2, 50, generator=g) < 0.5).float()
    G = torch.randint(0, 4, (2, 50), generator=g)
    out = E.group_accuracy(acts, Y, G, 4)
    for s in range(2):
        for i in range(3):
            for k in range(4):
                rows = G[s] == k
                hits = [float((acts[s, m, i] > 0.5) == (Y[s, m] == 1)) for m in rows.nonzero().flatten()]
                assert math.isclose(float(out[s, i, k]), sum(hits) / len(hits))


def test_rule_switch_route_and_band_columns_agree_with_the_world():
    world = D.standard_world()
    df = D.sample(world, [3] * 9, seed=1)
    cells = torch.tensor(world.index(list(df.group)))
    assign = E.rule_switch().assign_columns(E.columns(df))
    assert torch.equal(assign, E.ROUTE[cells])                      # switch table == cell -> neuron
    assert {E.GROUPS[c] for c in cells[assign < 0].tolist()} == set(E.OOD)
    back = E.band_columns(cells)
    assert (back["age_band"] == df.age_band.to_numpy()).all() and (back["income_band"] == df.income_band.to_numpy()).all()
    swapped = E.route_of([1, 0, 2, 3, 4])
    assert int(swapped[E.GROUPS.index(E.TRAIN[0])]) == 1 and int(swapped[E.GROUPS.index(E.OOD[0])]) == -1


def test_bayes_accuracy_equals_a_row_by_row_computation():
    world = D.standard_world()
    df = D.sample(world, [10] * 9, seed=3)
    z = D.features(df).double().numpy()
    hits = 0
    for k, group in enumerate(df.group):
        c = world.coef[world.names.index(group)]
        p = 1 / (1 + math.exp(-(c[0] + float(np.dot(z[k], c[1:])))))
        hits += int((p > 0.5) == bool(df.responded.iloc[k]))
    assert math.isclose(float(E.bayes_accuracy([df], world)[0]), hits / len(df))


def test_gaps_differences_and_purity_on_hand_made_tables():
    abl = pd.DataFrame([{"per-neuron subset": m, "split": sp, "accuracy": a, "seed": s}
                        for m, sp, s, a in [(5, "seen", 0, 0.9), (5, "unseen", 0, 0.6), (5, "seen", 1, 0.8),
                                            (5, "unseen", 1, 0.7), (9, "seen", 0, 0.7), (9, "unseen", 0, 0.7)]])
    assert np.allclose(E.overfit_gap(abl, 5), [0.3, 0.1])
    df = pd.DataFrame({"n": [1, 1, 1, 1, 2, 2], "method": ["a", "a", "b", "b", "a", "b"],
                       "accuracy": [0.9, 0.8, 0.5, 0.6, 0.1, 0.2]})
    assert np.allclose(E.paired_difference(df, "n == 1", "accuracy", "a", "b"), [0.4, 0.2])
    # 4 people of cells (0, 0, 1, 1) routed to neurons (0, 0, 0, 1): majority cells hold 2 + 1 of 4
    route, G = torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 1, 1]])
    cont, purity = E.routing_purity(route, G, torch.ones(1, 4, dtype=torch.bool), n_units=2)
    assert cont[0, 0, 0] == 2 and cont[0, 0, 1] == 1 and math.isclose(float(purity[0]), 3 / 4)


def test_isolation_check_on_the_shipped_csv():
    train = E.stack([D.read_csv()], "cpu")
    iso = E.isolation_check(train, E.Recipe(steps=10))
    assert iso["subset_sizes"] == E.SIZES and iso["leak"] == 0.0 and iso["moved"] > 0 and iso["loop_gap"] < 1e-9


def test_explorer_update_equals_training_by_hand():
    test = E.stack([E.test_people(7, RECIPE)], "cpu")
    table = [1, 0, 2, 3, 4]
    res = E.explorer_update(table, [10, 10, 10, 10, 10], 5, test, RECIPE)
    tr = D.sample(RECIPE.world(), dict(zip(E.TRAIN, [10] * 5)), 5)
    a = torch.tensor([table[E.TRAIN.index(g)] for g in tr.group])   # the user's table, by hand
    net = P.train_isolated(D.features(tr), D.targets(tr), a, 5, steps=RECIPE.steps, lr=RECIPE.lr, l2=RECIPE.l2)
    acts = net.activations(test.X[0])
    M = E.group_accuracy(acts[None], test.Y, test.G)[0]
    assert torch.allclose(res["accuracy"], M)
    assert math.isclose(res["si"], float(P.specialization_index(M, E.route_of(table))), rel_tol=1e-6)
    frame = E.heat_frame(M, "accuracy", table)
    marked = frame[frame["trained on"] == "yes"]
    assert dict(zip(marked.group, marked.neuron)) == {g: E.NEURON_NAMES[u] for g, u in zip(E.TRAIN, table)}


def test_explorer_retrain_claim_reports_a_decision():
    res = E.explorer_retrain_claim(sample_seed=1, test_seed=2, steps=5, lr=0.5, l2=1e-3, heterogeneity=1.0,
                                   test_per_group=10, repeats=1)
    assert set(res) >= {"passed", "measured"} and isinstance(res["passed"], bool) and "ms" in res["measured"]


def test_mlp_stack_replicas_are_independent():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 4, generator=g)
    y = (torch.rand(3, 50, generator=g) < 0.5).float()
    both = E.train_mlp(x, y, 3, seeds=[11, 12, 13], steps=30)
    one = E.train_mlp(x[1:2], y[1:2], 3, seeds=[12], steps=30)
    assert torch.allclose(both.W1[1], one.W1[0], atol=1e-6) and torch.allclose(both.b2[1], one.b2[0], atol=1e-6)
    assert both.n_params_each() == 3 * (4 + 2) + 1 == 19
    assert E.mlp_hidden_for(30, 5) == 4 == E.budget_mlp_hidden(5)
    with pytest.raises(ValueError, match="cannot hold"):
        E.mlp_hidden_for(5, 5)


def test_learned_switch_finds_two_obvious_regimes():
    # two regimes separated by the sign of x0; in each, y depends on x1 with opposite sign.
    # One logistic neuron cannot fit both; a learned switch with two neurons can.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 400, 2, generator=g)
    y = ((x[..., 0] > 0) == (x[..., 1] > 0)).float()          # XOR-like: needs the switch
    model = E.train_gated_neurons(x, y, 2, seeds=[1, 2], steps=400, lr=0.05)
    with torch.no_grad():
        acc = ((model.predict(x) > 0.5).float() == y).float().mean(1)
        route = model.route(x)
    assert (acc > 0.85).all()
    for r in range(2):                    # routing follows the sign of x0 or of x1 (both solve it)
        agree = [float((route[r] == (x[r, :, j] > 0).long()).float().mean()) for j in (0, 1)]
        assert max(max(a, 1 - a) for a in agree) > 0.85
    with pytest.raises(ValueError, match="one seed per replica"):
        E.train_gated_neurons(x, y, 2, seeds=[1], steps=1)


def test_own_group_margin_and_top_share_on_a_hand_made_heatmap():
    cols = D.standard_world().index(E.TRAIN)
    mid = E.GROUPS.index(E.MID)
    M = torch.zeros(2, E.N_UNITS, len(E.GROUPS))
    # seed 0: every neuron scores 0.9 on its own group, 0.5 elsewhere; neuron 4 (index 3) owns MID
    for g in cols:
        M[0, :, g] = 0.5
        M[0, int(E.ROUTE[g]), g] = 0.9
    # seed 1: neuron 4 scores 0.8 on the first training group, 0.6 on MID; neuron 1 tops every column
    M[1, 3, cols[0]], M[1, 3, mid], M[1, 0, :] = 0.8, 0.6, 1.0
    margin = E.own_group_margin(M)
    assert np.allclose(margin, [0.4, 0.6 - 0.8])
    assert int(E.ROUTE[mid]) == 3
    share = E.own_neuron_top_share(M)
    assert math.isclose(share[0], 1.0) and math.isclose(share[1], 1 / E.N_UNITS)   # only group 1's own neuron tops
