"""mpnn.experiments.specialization: held-out patterns, CMNIST recipes, metrics and the chapter's tables."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mpnn import dynamics as D
from mpnn.data import cmnist as data_cmnist
from mpnn.infra.determinism import spawn_seeds
from mpnn.experiments import specialization as E
from mpnn.experiments.specialization.linear import _gather
from mpnn.runtime import repro, stats
from mpnn.towers import init_normal


@pytest.fixture(autouse=True)
def _one_thread():
    with D.single_thread():          # tiny matrices: threads only add overhead
        yield


def synthetic_cmnist(n_images=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_images, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n_images,), generator=g)
    return data_cmnist.compose(images, labels)


# ---------------------------------------------------------------------- linear networks

def test_train_architectures_equals_one_train_linear_per_architecture():
    data = D.make_dataset(2, 1, 1, 1, 1.0, generator=torch.Generator().manual_seed(0))
    trajs, seconds = E.train_architectures(data, [1, 2], hidden=4, lr=0.03, lr_shallow=0.01, epochs=10,
                                           init_std=0.1, device="cpu")
    assert list(trajs) == list(E.ARCHS) and set(seconds) == set(E.ARCHS)
    for arch, traj in trajs.items():
        ref = D.train_linear(data.X, data.Y, D.architecture_masks(arch, data, 4), [1, 2],
                             lr=0.01 if arch == "shallow" else 0.03, epochs=10, init_std=0.1)
        assert torch.equal(traj.maps, ref.maps)


def test_band_equals_mean_ci_row_by_row():
    v = np.random.default_rng(0).normal(size=(4, 7))
    m, lo, hi = E.band(v)
    for i in range(4):
        assert np.allclose((m[i], lo[i], hi[i]), stats.mean_ci(v[i]), rtol=1e-12)
    m1, lo1, hi1 = E.band(v[:, :1])
    assert np.array_equal(m1, lo1) and np.array_equal(m1, hi1)       # one run: no interval


def test_fit_modes_is_small_for_the_paper_setting():
    data = D.make_dataset(3, 1, 3, 1, 1.0, generator=torch.Generator().manual_seed(0))
    traj = D.train_linear(data.X, data.Y, D.architecture_masks("dense", data), [5, 6], epochs=300)
    fit = E.fit_modes(D.aligned_modes(data), traj, 300, 0.02, data.n_patterns)
    assert max(fit.deviation) < 0.1 and max(fit.deviation_flow) > max(fit.deviation)   # flow rate lags more
    table = E.singular_value_table(D.aligned_modes(data), fit)
    assert np.allclose(table["final learned (mean)"], table["fixed point s/d"], rtol=1e-3)   # converged


def test_heldout_split_rejects_bad_sizes_and_partitions_the_patterns():
    with pytest.raises(ValueError, match="n_train"):
        E.heldout_experiment(D.make_dataset(2, 1, 1, 1, 1.0), "dense", [0], n_train=4)
    tr, te = E.heldout_split(8, [3, 4, 5], 3)
    assert tr.shape == (3, 3) and te.shape == (3, 5)
    for a, b in zip(tr.tolist(), te.tolist()):
        assert sorted(a + b) == list(range(8))
    assert torch.equal(E.heldout_split(8, [4], 3)[0][0], tr[1])             # a run's patterns depend on its seed only


def test_partitioned_generalises_when_training_patterns_span_omega():
    data = D.make_dataset(3, 2, 1, 1, 2.0, pattern_bits=3, generator=torch.Generator().manual_seed(0))
    seeds = list(range(12))
    res = {a: E.heldout_experiment(data, a, seeds, epochs=500) for a in ("dense", "partitioned")}
    full = E.spanning_runs(res["dense"]["train_idx"])                                    # (R,)
    assert full.any()
    assert float(res["partitioned"]["test"][-1, full, 0].max()) < 1e-6
    assert float(res["dense"]["test"][-1, full, 0].min()) > 0.1


def test_heldout_experiments_equal_one_call_per_case():
    cases = [(D.make_dataset(*st, pattern_bits=3, generator=torch.Generator().manual_seed(0)), arch)
             for st in ((0, 0, 1, 1, 2.0), (3, 2, 1, 1, 2.0)) for arch in ("dense", "partitioned")]
    seeds = [7, 8, 9]
    together = E.heldout_experiments(cases, seeds, epochs=60)
    for (data, arch), res in zip(cases, together):
        alone = E.heldout_experiment(data, arch, seeds, epochs=60)
        assert torch.equal(res["train_idx"], alone["train_idx"])
        for k in ("train", "test", "maps_final"):
            assert torch.allclose(res[k], alone[k], atol=1e-12)


def test_spanning_runs_and_distinct_sets_hand_computed():
    # patterns 0, 1, 2 = (-1,-1,-1), (-1,-1,1), (-1,1,-1): independent; 0 and 7 are antipodal
    idx = torch.tensor([[0, 1, 2], [0, 7, 1], [2, 1, 0]])
    assert E.spanning_runs(idx).tolist() == [True, False, True]
    assert E.distinct_training_sets(idx) == 2


def test_heldout_bands_leave_out_missing_outputs_and_tables_read_the_last_epoch():
    data = {st: D.make_dataset(*st, pattern_bits=3, generator=torch.Generator().manual_seed(0))
            for st in ((3, 0, 1, 1, 2.0), (3, 2, 1, 0, 2.0))}
    heldout = {(st, a): E.heldout_experiment(d, a, [1, 2, 3], epochs=20) for st, d in data.items()
               for a in E.HELDOUT_ARCHS}
    bands = E.heldout_bands(heldout, 20, points=10)
    parts = bands.groupby("setting").output.unique().map(list).to_dict()
    assert parts == {"(3, 0, 1, 1, 2)": ["non-compositional"], "(3, 2, 1, 0, 2)": ["compositional"]}
    last = bands[(bands.epoch == 20) & (bands.curve == "dense, test") & (bands.setting == "(3, 2, 1, 0, 2)")]
    assert last["mean"].iloc[0] == pytest.approx(float(heldout[(3, 2, 1, 0, 2.0), "dense"]["test"][-1, :, 0].mean()))
    full = torch.tensor([True, True, False])
    table = E.heldout_table(heldout, full, settings=list(data))
    assert list(table.setting) == ["(3, 2, 1, 0, 2)"] * 2                     # no Omega_y row without n2
    part = heldout[(3, 2, 1, 0, 2.0), "partitioned"]["test"][-1, :2, 0].tolist()
    assert table["same, on runs spanning Omega"].iloc[1] == stats.fmt_ci(part, 4)


def test_full_rank_table_hand_computed():
    table = E.full_rank_table()
    assert math.isclose(table.loc[3, 3], 32 / 56) and table.loc[2, 3] == 0.0 and table.loc[8, 3] == 1.0
    assert np.isnan(table.loc[9, 3]) and table.loc[16, 4] == 1.0


def test_closed_form_curves_rise_to_the_fixed_points():
    with pytest.raises(ValueError, match="must not exceed"):
        E.closed_form_curves(1, 2, 1, 1, 1.0)
    curves = E.closed_form_curves(3, 1, 3, 1, 1.0, epochs=3000, every=1)
    modes = D.mode_spectrum(3, 1, 3, 1, 1.0)
    assert curves["mode"].nunique() == len(modes) == 3
    for m, (_, c) in zip(modes, curves.groupby("mode", sort=False)):
        assert c.u.iloc[0] == pytest.approx(1e-6) and c.u.iloc[-1] == pytest.approx(m.target, rel=1e-6)
    spec = E.figure_closed_form(3, 1, 3, 1, 1.0).to_dict()
    rules = [d for d in spec["datasets"].values() if d and "label" in d[0]]
    assert sorted(round(r["value"], 6) for r in rules[0]) == sorted(round(m.target, 6) for m in modes)


# ------------------------------------------------------------------------------ CMNIST metrics

def test_metrics_hand_computed():
    digits = torch.tensor([[1, 2, 3], [4, 5, 6]])
    comp, non = data_cmnist.compositional_targets(digits), data_cmnist.noncompositional_targets(digits)
    perfect = E.metrics(torch.cat([comp, non], 1), comp, non, digits)
    assert perfect["comp_error"] == 0 and perfect["noncomp_error"] == 0
    assert perfect["digit_acc"] == 2 and perfect["number_acc_comp"] == 2 and perfect["number_acc_noncomp"] == 2
    zero = E.metrics(torch.zeros(2, 1030), comp, non, digits)
    assert float(zero["comp_error"]) == pytest.approx(2.0) and float(zero["noncomp_error"]) == pytest.approx(2.0)
    # one digit wrong in image 0: per-digit 2/3 + 1, whole number 1 of 2
    wrong = comp.clone(); wrong[0, 0] = 2.0                  # first digit read as 0, not 1
    m = E.metrics(torch.cat([wrong, non], 1), comp, non, digits)
    assert float(m["digit_acc"]) == pytest.approx(2 / 3 + 1) and float(m["number_acc_comp"]) == 1
    # predicting the mean target (0.1 per digit slot) is the chance level of the compositional error
    mean = E.metrics(torch.full((2, 1030), 0.1), comp, non, digits)
    assert float(mean["comp_error"]) / 2 == pytest.approx(E.COMP_CHANCE)


def test_cmnist_targets_and_paper_models():
    digits = torch.tensor([[3, 0, 7]])
    y = E.cmnist_targets(digits)
    assert y.shape == (1, 1030) and y[0, [3, 10, 27]].tolist() == [1, 1, 1] and y[0, 30 + 307] == 10
    dense, split = E.make_model("dense"), E.make_model("split")
    assert (dense.channels, dense.outputs) == (32, (1030,)) and (split.channels, split.outputs) == (16, (30, 1000))
    with pytest.raises(ValueError, match="unknown CMNIST model"):
        E.make_model("conv")


def naive_train_cmnist(kind, train, seeds, epochs, lr, batch_size, init_std, noncomp_scale=10.0):
    """The paper's training written out: one generator orders every epoch's mini-batches."""
    model = E.make_model(kind)
    init_normal(model, seeds[1:], init_std)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seeds[0])
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=order)
        for start in range(0, len(train), batch_size):
            idx = perm[start:start + batch_size]
            y = torch.cat([data_cmnist.compositional_targets(train.digits[idx]),
                           data_cmnist.noncompositional_targets(train.digits[idx]) * noncomp_scale / 10], 1)
            loss = (model(train.inputs(idx)) - y).pow(2).sum(1).mean()
            opt.zero_grad(); loss.backward(); opt.step()
    return model


@pytest.mark.parametrize("kind, seeds", [("dense", [0, 1]), ("split", [0, 1, 2])])
def test_train_cmnist_equals_the_naive_loop_and_learns(kind, seeds):
    cm = synthetic_cmnist(21)                                        # 7 images: batches of 3, 3 and 1
    model, rows, history = E.train_cmnist(kind, cm, cm, seeds=seeds, epochs=2, lr=2e-3, batch_size=3)
    ref = naive_train_cmnist(kind, cm, seeds, 2, 2e-3, 3, 0.01)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name
    assert history.loss.shape == (6,) and [(r["epoch"], r["split"]) for r in rows][:3] == [(0, "train"), (0, "test"),
                                                                                            (1, "train")]
    train_err = [r["comp_error"] for r in rows if r["split"] == "train"]
    assert train_err[-1] < train_err[0]
    assert rows[-1] | {"model": kind} == {"model": kind, "epoch": 2, "split": "test"} | E.evaluate(model, cm)
    with pytest.raises(ValueError, match=f"need {len(seeds)} seeds"):
        E.train_cmnist(kind, cm, cm, seeds=seeds[:1], epochs=1)


def test_train_paper_scale_seeds_each_model_from_the_documented_children():
    cm = synthetic_cmnist(15)
    run = E.train_paper_scale(cm, cm, seed=4, n_seeds=1, epochs=1, train_size=4, test_size=3, eval_train_size=2,
                              lr=2e-3, batch_size=2, init_std=0.01, device="cpu")
    sub = spawn_seeds(spawn_seeds(4, 1)[0], 3)
    _, dense, _ = E.train_cmnist("dense", cm.subset(4), cm.subset(3), seeds=sub[:2], epochs=1, lr=2e-3, batch_size=2,
                                 eval_train=cm.subset(2))
    got = run.rows[run.rows.model == "dense"].drop(columns="run").to_dict("records")
    assert got == dense and (run.n_train, run.n_test) == (4, 3) and len(run.seconds_per_epoch["split"]) == 1


def test_seconds_per_step_is_positive_and_checks_arguments():
    assert E.seconds_per_step("split", steps=1, batch_size=1) > 0
    with pytest.raises(ValueError, match="steps >= 1"):
        E.seconds_per_step("dense", steps=0)
    assert E.paper_hours({"dense": 1.0, "split": 2.0}, 16) == pytest.approx(3 * 1250 * 300 * 10 / 3600)


# --------------------------------------------------------------------------- CMNIST at CPU scale

def test_mlp_towers_layout():
    assert E.mlp_towers("dense", 8) == ((8, slice(0, 1030)),)
    assert E.mlp_towers("split", 8) == ((4, slice(0, 30)), (4, slice(30, 1030)))
    with pytest.raises(ValueError, match="even hidden width"):
        E.mlp_towers("split", 7)
    with pytest.raises(ValueError, match="unknown CMNIST model"):
        E.mlp_towers("conv", 8)


def test_pooled_inputs_hand_computed():
    images = torch.zeros(6, 28, 28, dtype=torch.uint8)
    images[0, :2, :2] = 255                                  # one 2x2 block of white in image 0
    cm = data_cmnist.compose(images, torch.zeros(6, dtype=torch.long))          # 2 images of 28 x 84
    xtr, xte = E.pooled_inputs(cm, cm)
    assert xtr.shape == (2, 14 * 42) and torch.equal(xtr, xte)
    raw = torch.zeros(2, 588)
    raw[0, 0] = 1.0                                          # the block pools to one pixel of value 1
    expected = (raw - raw.mean(0)) / raw.std()
    assert torch.allclose(xtr, expected)


def test_evaluate_runs_equals_per_run_metrics():
    from mpnn.towers import init_tower_mlp
    model = init_tower_mlp(E.mlp_towers("split", 4), 7, [3, 4], out_std=3.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 7, generator=g)
    digits = torch.randint(0, 10, (9, 3), generator=g)
    got = E.evaluate_runs(model, x, digits, batch_size=4)          # uneven batches
    comp, non = data_cmnist.compositional_targets(digits), data_cmnist.noncompositional_targets(digits)
    for r in range(2):
        ref = E.metrics(model.forward(x)[1][r], comp, non, digits)
        for k, v in ref.items():
            assert float(got[k][r]) == pytest.approx(float(v) / 9, rel=1e-5, abs=1e-7)


def test_tower_mlp_training_follows_each_runs_own_order_and_learns():
    from mpnn.towers import init_tower_mlp
    cm = synthetic_cmnist(60, seed=3)
    x, _ = E.pooled_inputs(cm, cm)
    kw = dict(init_seeds=[1, 2], order_seeds=[7, 8], epochs=3, lr=0.01, batch_size=4, hidden=8,
              evals={"train": (x, cm.digits)})
    a, rows_a = E.train_tower_mlp("dense", x, cm.digits, **kw)
    # reference: run by run, its own randperm generator, one sgd_step per mini-batch
    y = E.cmnist_targets(cm.digits)
    for r, (init, order) in enumerate(zip([1, 2], [7, 8])):
        ref = init_tower_mlp(E.mlp_towers("dense", 8), x.shape[1], [init])
        g = torch.Generator().manual_seed(order)
        for _ in range(3):
            perm = torch.randperm(len(x), generator=g)
            for s in range(0, len(x), 4):
                ref.sgd_step(x[perm[s:s + 4]][None], y[perm[s:s + 4]][None], 0.01)
        assert torch.allclose(a.W1[r], ref.W1[0], atol=1e-6) and torch.allclose(a.b2[r], ref.b2[0], atol=1e-6)
    first = [r["comp_error"] for r in rows_a if r["epoch"] == 0]
    last = [r["comp_error"] for r in rows_a if r["epoch"] == 3]
    assert all(l < f - 0.05 for f, l in zip(first, last))          # 1.12 -> 1.00 and 1.17 -> 1.00
    with pytest.raises(ValueError, match="one init and one order seed"):
        E.train_tower_mlp("split", x, cm.digits, init_seeds=[1], order_seeds=[1, 2], epochs=1, lr=0.1)


def test_train_cpu_scale_pairs_dense_and_split_by_seed():
    cm = synthetic_cmnist(60, seed=5)
    run = E.train_cpu_scale(cm, cm, seed=3, n_seeds=2, train_size=12, test_size=8, eval_train_size=6, epochs=2,
                            eval_every=1, lr=0.01, batch_size=4, hidden=8, pool=2, out_std=0.1, device="cpu")
    sub = [spawn_seeds(s, 3) for s in spawn_seeds(3, 2)]
    x_tr, x_te = E.pooled_inputs(cm.subset(12), cm.subset(8))
    evals = {"train": (x_tr[:6], cm.digits[:6]), "test": (x_te, cm.digits[:8])}
    for j, kind in enumerate(("dense", "split"), start=1):
        _, ref = E.train_tower_mlp(kind, x_tr, cm.digits[:12], init_seeds=[s[j] for s in sub],
                                   order_seeds=[s[0] for s in sub], epochs=2, lr=0.01, batch_size=4, hidden=8,
                                   evals=evals)
        assert run.rows[run.rows.model == kind].to_dict("records") == ref
    assert (run.n_train, run.n_test, run.n_inputs) == (12, 8, 588)


def rows_frame(errors):
    """CPU-scale rows from {(model, epoch): [per-run test comp_error]} (train rows copy the test ones)."""
    return pd.DataFrame([{"model": m, "run": r, "epoch": e, "split": s, "comp_error": v, "noncomp_error": 1.0,
                          **{k: 0.5 for k in E.METRICS[2:]}}
                         for (m, e), vs in errors.items() for r, v in enumerate(vs) for s in ("train", "test")])


def test_paired_comparison_hand_computed():
    rows = rows_frame({("dense", 0): [1.0, 1.0], ("split", 0): [1.0, 1.0],
                       ("dense", 2): [0.5, 0.6], ("split", 2): [0.6, 0.7],        # dense ahead at epoch 2
                       ("dense", 4): [0.4, 0.5], ("split", 4): [0.3, 0.3],
                       ("dense", 6): [0.45, 0.55], ("split", 6): [0.3, 0.2]})
    cmp = E.paired_comparison(rows, 6)
    assert cmp.diff == pytest.approx([-0.15, -0.35]) and cmp.mean == pytest.approx(-0.25)
    assert (cmp.low, cmp.high) == pytest.approx(stats.mean_ci([-0.15, -0.35])[1:])
    assert cmp.by_epoch == pytest.approx({2: 0.1, 4: -0.15, 6: -0.25})
    assert cmp.split_ahead_from == 4 and cmp.dense_best_epoch == 4
    report = E.paired_report(rows, cmp, 6)
    assert "split lower from epoch 4 on" in report and "lowest at epoch 4 (0.450)" in report
    table = E.final_metrics_table(rows, 6)
    assert table.set_index(["model", "split"]).loc[("split", "test"), "comp_error"] == stats.fmt_ci([0.3, 0.2], 3)


def test_error_curves_and_figure():
    rows = rows_frame({("dense", 0): [1.0, 0.8], ("split", 0): [0.9, 0.9], ("dense", 1): [0.5, 0.7],
                       ("split", 1): [0.4, 0.6]})
    curves = E.error_curves(rows)
    row = curves[(curves.curve == "dense, test") & (curves.metric == "comp_error") & (curves.epoch == 1)]
    assert row["mean"].iloc[0] == pytest.approx(0.6) and row["n"].iloc[0] == 2
    assert E.final_test_errors(rows) == ([0.4, 0.6], [0.5, 0.7])
    spec = E.figure_cmnist_errors(curves, "t").to_dict()
    assert "hconcat" in spec and E.COMP_CHANCE in [v["value"] for d in spec["datasets"].values() for v in d
                                                   if "label" in v]


# ------------------------------------------------- nonlinear, regularisation, compositional share (issue 13)

def test_nonlinear_block_norms_linear_rows_are_the_linear_map():
    data = D.make_dataset(2, 1, 1, 1, 1.0, generator=torch.Generator().manual_seed(0))
    norms = E.nonlinear_block_norms(data, [1, 2], hidden=4, lr=0.03, epochs=20, init_std=0.1)
    assert set(norms) == {(a, b) for a in E.ACTIVATIONS for b in E.NONLINEAR_ARCHS}
    ref = D.train_linear(data.X, data.Y, D.architecture_masks("partitioned", data, 4), [1, 2], lr=0.03, epochs=20,
                         init_std=0.1)                     # partitioned is the widest: not padded, same draws
    assert torch.allclose(norms["linear", "partitioned"], D.block_norms(ref.maps[-1], data), atol=1e-12)
    assert all(float(norms[a, "partitioned"][:, 1].abs().max()) == 0.0 for a in E.ACTIVATIONS)
    frame = E.nonlinear_norm_frame(norms)
    assert len(frame) == 9 * 4 and np.isclose(frame.iloc[0]["mean"], float(norms[frame.iloc[0].activation,
                                               frame.iloc[0].architecture][:, 0].mean()))


def test_heldout_nonlinear_partitioned_linear_rows_equal_heldout_experiment():
    data = D.make_dataset(3, 2, 1, 1, 2.0, pattern_bits=3, generator=torch.Generator().manual_seed(0))
    seeds = [4, 5, 6]
    rows = E.heldout_nonlinear(data, seeds, n_train=3, hidden=4, lr=0.02, epochs=30, init_std=0.1,
                               archs=("partitioned",), acts=("linear", "tanh"))
    ref = E.heldout_experiment(data, "partitioned", seeds, n_train=3, hidden=4, lr=0.02, epochs=30, init_std=0.1)
    lin = rows[rows.activation == "linear"].sort_values("run")
    assert np.allclose(lin.test_comp, ref["test"][-1, :, 0].numpy(), atol=1e-12)
    assert lin.spanning.tolist() == E.spanning_runs(ref["train_idx"]).tolist()


def test_regularisation_sweep_rows_equal_one_run_per_strength():
    data = D.make_dataset(3, 2, 1, 1, 2.0, pattern_bits=3, generator=torch.Generator().manual_seed(0))
    seeds = [1, 2]
    rows = E.regularisation_sweep(data, seeds, {"weight_decay": [0.1], "cross_l1": [0.2]}, n_train=3, hidden=4,
                                  lr=0.02, epochs=30, init_std=0.1)
    assert list(dict.fromkeys(rows.penalty)) == ["none", "weight_decay", "cross_l1"] and len(rows) == 6
    tr, te = E.heldout_split(8, seeds, 3)
    for penalty, kw in (("none", {}), ("weight_decay", {"weight_decay": 0.1}), ("cross_l1", {"cross_l1": 0.2})):
        one = D.train_two_layer(_gather(data.X, tr), _gather(data.Y, tr), D.architecture_masks("dense", data, 4),
                                seeds, lr=0.02, epochs=30, init_std=0.1, cross_block=data.blocks()["Gamma_x->Omega_y"],
                                evals={"test": (_gather(data.X, te), _gather(data.Y, te))}, n2=2, **kw)
        got = rows[rows.penalty == penalty].sort_values("run")
        assert np.allclose(got.test_comp, one.losses["test"][-1, :, 0].numpy(), atol=1e-12)
        assert np.allclose(got.coupling, D.jacobian_block_norms(one, data.X, data)[:, 1].numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="unknown penalty"):
        E.regularisation_sweep(data, seeds, {"ridge": [1.0]}, n_train=3, hidden=4, lr=0.02, epochs=1, init_std=0.1)


def test_sweep_differences_and_share_contrast_hand_computed():
    rows = pd.DataFrame([{"model": m, "scale": v, "run": r, "comp_error": e}
                         for m, v, r, e in [("dense", 0.0, 0, 0.5), ("dense", 0.0, 1, 0.6), ("split", 0.0, 0, 0.4),
                                            ("split", 0.0, 1, 0.6), ("dense", 10.0, 0, 0.8), ("dense", 10.0, 1, 1.0),
                                            ("split", 10.0, 0, 0.4), ("split", 10.0, 1, 0.6)]])
    diffs = E.sweep_differences(rows).set_index("scale")
    assert np.isclose(diffs.loc[0.0, "mean"], -0.05) and np.isclose(diffs.loc[10.0, "mean"], -0.4)
    assert np.isclose(diffs.loc[10.0, "share"], 3 / 103) and diffs.loc[0.0, "n"] == 2
    m, lo, hi = E.share_contrast(rows, 10.0, 0.0)                 # per seed: -0.4 - (-0.1), -0.4 - 0.0
    assert np.isclose(m, -0.35) and (m, lo, hi) == pytest.approx(stats.mean_ci([-0.3, -0.4]))
    with pytest.raises(ValueError, match="must both be in the sweep"):
        E.share_contrast(rows, 3.0, 0.0)


def test_compositional_sweep_split_tower_ignores_the_scale_and_scale_10_is_the_paper_target():
    train, test = synthetic_cmnist(60, 0), synthetic_cmnist(30, 1)
    kw = dict(seed=3, n_seeds=2, train_size=20, test_size=10, epochs=2, lr=0.02, batch_size=8, hidden=8, pool=4,
              out_std=0.1, device="cpu")
    rows, seconds = E.compositional_sweep(train, test, [0.0, 10.0], **kw)
    assert set(seconds) == {"dense", "split"} and len(rows) == 8
    split = rows[rows.model == "split"].pivot(index="run", columns="scale", values="comp_error")
    assert np.array_equal(split[0.0].values, split[10.0].values)
    dense = rows[rows.model == "dense"].pivot(index="run", columns="scale", values="comp_error")
    assert not np.allclose(dense[0.0].values, dense[10.0].values)
    sub = [spawn_seeds(s, 3) for s in spawn_seeds(3, 2)]          # the documented seeds: scale 10 = paper's targets
    x_tr, x_te = E.pooled_inputs(train.subset(20), test.subset(10), 4)
    model, _ = E.train_tower_mlp("dense", x_tr, train.subset(20).digits, init_seeds=[s[1] for s in sub],
                                 order_seeds=[s[0] for s in sub], epochs=2, lr=0.02, batch_size=8, hidden=8)
    ref = E.evaluate_runs(model, x_te, test.subset(10).digits)["comp_error"].numpy()
    assert np.allclose(dense[10.0].values, ref, atol=1e-5)
    with pytest.raises(ValueError, match="noncomp scale"):
        E.train_tower_mlp("dense", x_tr, train.subset(20).digits, init_seeds=[1], order_seeds=[1], epochs=1,
                          lr=0.02, noncomp_scales=[1.0, 2.0])


def test_train_cmnist_with_a_scaled_noncompositional_target_and_paper_share_rows():
    cm = synthetic_cmnist(15)
    model, rows, _ = E.train_cmnist("dense", cm, cm, seeds=[0, 1], epochs=1, lr=2e-3, batch_size=3, noncomp_scale=2.0)
    ref = naive_train_cmnist("dense", cm, [0, 1], 1, 2e-3, 3, 0.01, noncomp_scale=2.0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))
    pr = E.PaperRun(pd.DataFrame([r | {"run": 0} for r in rows]), {}, 5, 5)
    share = E.paper_share_rows({2.0: pr})
    assert len(share) == 1 and share.iloc[0].share == 3 / 7 and share.iloc[0].comp_error == rows[-1]["comp_error"]


def test_regularisation_grid_and_explorer():
    summary = pd.DataFrame([{"penalty": p, "strength": s, "metric": m, "mean": v, "low": v, "high": v, "n": 2}
                            for p, s, base in [("none", 0.0, 0.9), ("dropout", 0.1, 0.95), ("dropout", 0.5, 1.0),
                                               ("cross_l1", 0.3, 0.01)]
                            for m, v in (("test_comp", base), ("train_comp", 0.0), ("coupling", base / 2))])
    grid = E.regularisation_grid(summary)
    assert grid.penalty.tolist() == ["dropout"] * 3 + ["cross_l1"] * 2 and grid.level.tolist() == [0, 1, 2, 0, 1]
    assert grid.strength.tolist() == [0.0, 0.1, 0.5, 0.0, 0.3] and grid.test_comp.tolist() == [0.9, 0.95, 1.0, 0.9, 0.01]
    site = E.figure_regularisation_explorer(grid).to_dict()
    assert {p["name"] for p in site["params"]} == {"p_penalty", "p_level"}
    live = E.figure_regularisation_explorer(grid, "dropout", 2).to_dict()
    assert [p["name"] for p in live["params"]] == ["p_selected"]


# ------------------------------------------------------------------ verdicts and the generated prose

def test_heldout_verdicts_read_the_interval_of_each_architecture():
    good, bad = [1e-9, 2e-9, 3e-9], [0.8, 0.9, 1.0]
    assert E.heldout_verdicts(good, bad) == {"the partitioned network generalises": "supported",
                                             "the dense network does not": "supported"}
    both_fail = E.heldout_verdicts(bad, bad)                      # the ReLU case: the partition is not enough
    assert both_fail["the partitioned network generalises"] == "not supported"
    assert both_fail["the dense network does not"] == "supported"
    assert set(E.heldout_verdicts([0.0, 0.05, 0.02], bad).values()) == {"inconclusive", "supported"}
    assert set(E.heldout_verdicts([1e-9], bad).values()) == {"inconclusive"}       # one spanning run decides nothing
    assert E.parts_text({"a": "supported", "b": "mixed"}) == "a: supported; b: mixed"


def test_regularisation_verdicts_and_any_part():
    summary = pd.DataFrame([{"penalty": p, "strength": s, "metric": "test_comp", "mean": m, "low": lo, "high": hi, "n": 3}
                            for p, s, m, lo, hi in [("weight_decay", 0.1, 0.9, 0.85, 0.95),
                                                    ("weight_decay", 1.0, 1.0, 0.95, 1.05),
                                                    ("dropout", 0.1, 0.3, 0.05, 0.5),           # straddles FAILS
                                                    ("cross_l1", 0.3, 1e-4, 5e-5, 2e-4)]])
    v = E.regularisation_verdicts(summary, ("weight_decay", "dropout", "cross_l1"))
    assert v == {"weight_decay": "not supported", "dropout": "inconclusive", "cross_l1": "supported"}
    assert E.any_part(v) == "supported"
    assert E.any_part({"a": "not supported", "b": "inconclusive"}) == "inconclusive"
    assert E.any_part({"a": "not supported", "b": "not supported"}) == "not supported"


def test_final_metrics_table_gives_accuracies_bounded_intervals():
    rows = rows_frame({("dense", 2): [0.5, 0.6], ("split", 2): [0.4, 0.5]})
    rows.loc[rows.model == "dense", "digit_acc"] = [0.98, 0.98, 0.999, 0.999]
    cell = E.final_metrics_table(rows, 2).set_index(["model", "split"]).loc[("dense", "test"), "digit_acc"]
    assert cell == stats.fmt_ci([0.98, 0.999], 3, bounds=(0, 1))
    high = float(cell.split("-")[1].split(",")[0])
    assert high <= 1.0                                            # the plain t interval would pass 1


def _share_rows():
    return pd.DataFrame([{"model": m, "scale": v, "share": 3 / (3 + v ** 2), "run": r, "comp_error": e}
                         for m, v, r, e in [("dense", 0.0, 0, 0.5), ("dense", 0.0, 1, 0.6), ("split", 0.0, 0, 0.4),
                                            ("split", 0.0, 1, 0.5), ("dense", 10.0, 0, 0.8), ("dense", 10.0, 1, 0.9),
                                            ("split", 10.0, 0, 0.4), ("split", 10.0, 1, 0.5)]])


def _reg_summary():
    return pd.DataFrame([{"penalty": p, "strength": s, "metric": m, "mean": v, "low": v - 0.01, "high": v + 0.01,
                          "n": 3}
                         for p, s, base in [("none", 0.0, 0.9), ("weight_decay", 0.1, 0.95), ("weight_decay", 1.0, 1.0),
                                            ("dropout", 0.1, 0.92), ("dropout", 0.5, 0.99), ("l1", 1e-3, 0.9),
                                            ("l1", 1e-2, 1.8), ("cross_l1", 0.1, 0.2), ("cross_l1", 0.3, 0.02)]
                         for m, v in (("test_comp", base), ("train_comp", base / 10), ("coupling", base / 2))])


def _held_rows():
    return pd.DataFrame([{"activation": a, "architecture": arch, "run": r, "spanning": True, "train_comp": 0.0,
                          "test_comp": (1e-9 * (r + 1) if arch == "partitioned" and a != "relu" else 1.0 + 0.1 * r)}
                         for a in E.ACTIVATIONS for arch in E.HELDOUT_ARCHS for r in range(3)])


def test_cpu_and_share_findings_are_written_from_the_numbers():
    rows = rows_frame({("dense", 0): [1.0, 1.0], ("split", 0): [1.0, 1.0],
                       ("dense", 2): [0.5, 0.6], ("split", 2): [0.6, 0.7],
                       ("dense", 4): [0.4, 0.5], ("split", 4): [0.3, 0.3],
                       ("dense", 6): [0.45, 0.55], ("split", 6): [0.3, 0.2]})
    cmp = E.paired_comparison(rows, 6)
    text = E.cpu_findings(rows, cmp, 6, 100)
    assert "the dense model is ahead" in text and "leads only from epoch 4" in text
    assert "split minus dense, is **-0.250" in text and "lowest at epoch 4 (0.450)" in text
    share = _share_rows()
    contrast = E.share_contrast(share, 10.0, 0.0)
    text = E.share_findings(share, E.sweep_differences(share), contrast)
    assert "The split model is lower at every share, and its advantage grows" in text and "exactly 0" in text
    assert f"{contrast[0]:+.3f}" in text


def test_regularisation_and_nonlinear_findings_name_what_failed():
    summary = _reg_summary()
    text = E.regularisation_findings(summary, 3, 6)
    assert text.startswith("**What we found.** No penalty") and "it rises from 0.950" in text
    held = _held_rows()
    coupling = {(a, arch): [0.44, 0.45, 0.46] for a in E.ACTIVATIONS for arch in ("dense", "split")}
    text = E.nonlinear_findings(coupling, held, 0.4454, 5)
    assert "survives tanh but **not ReLU**" in text and "partitioned ReLU network fails too" in text
    assert "3 of 5 runs" in text


def test_claim_functions_give_the_arguments_of_run_claim():
    held = _held_rows()
    held_loss = lambda act, arch: held[(held.activation == act) & (held.architecture == arch) & held.spanning].test_comp
    reg, share = _reg_summary(), _share_rows()
    diff = E.sweep_differences(share)
    claims = [E.claim_full_rank_sampling(torch.tensor([True, False, True]), 3),
              E.claim_nonlinear_heldout_tanh_partitioned_only(held_loss),
              E.claim_nonlinear_heldout_relu_partitioned_fails(held_loss),
              E.claim_regularisation_no_systematicity(reg), E.claim_regularisation_cross_block_l1_systematic(reg),
              E.claim_cmnist_share_advantage_grows(diff, E.share_contrast(share, 10.0, 0.0), train_size=10, epochs=2,
                                                   n_seeds=2),
              E.claim_cmnist_share_split_independent(share), E.claim_cmnist_share_paper_scale(None)]
    for profile, decided in (("smoke", 6), ("default", 7)):
        run = repro.Run(repro.RunContext(chapter="specialization", profile=profile), torch.device("cpu"))
        recorded = [run.claim(**c) for c in claims]
        assert sum(c.verdict != "not testable here" for c in recorded) == decided    # lazy below `needs`
    assert [c.verdict for c in recorded] == ["supported", "supported", "mixed", "not supported", "inconclusive",
                                             "supported", "supported", "not testable here"]
    assert recorded[0].measured.endswith("2 of our 3 runs drew a spanning set")
    assert "weight_decay 0.940, dropout 0.910, l1 0.890 (unregularised 0.900)" in recorded[3].measured
    floors, coupling_floor = E.generic_floors(reg)
    assert floors == pytest.approx({"weight_decay": 0.94, "dropout": 0.91, "l1": 0.89})
    assert coupling_floor == pytest.approx(0.45)
