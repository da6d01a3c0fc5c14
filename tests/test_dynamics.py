"""mpnn.dynamics against hand-computed cases, a numerical ODE solution and autograd."""
import math

import pytest
import torch

from mpnn import dynamics as D
@pytest.fixture(autouse=True)
def _one_thread():
    with D.single_thread():          # tiny matrices: threads only add overhead
        yield


def test_binary_patterns_hand_computed():
    expected = torch.tensor([[-1., -1., 1., 1.], [-1., 1., -1., 1.]], dtype=torch.float64)
    assert torch.equal(D.binary_patterns(2), expected)
    assert D.binary_patterns(0).shape == (0, 1)


def test_dataset_layout():
    data = D.make_dataset(3, 1, 3, 1, 1.0, generator=torch.Generator().manual_seed(0))
    assert data.X.shape == (27, 8) and data.Y.shape == (9, 8)
    omega = D.binary_patterns(3)
    assert torch.equal(data.X[:3], omega)
    for k in range(3):
        assert torch.equal(data.X[3 + 8 * k: 11 + 8 * k], torch.eye(8, dtype=torch.float64))
    assert torch.equal(data.Y[:1], omega[list(data.omega_rows)])
    assert torch.equal(data.Y[1:], torch.eye(8, dtype=torch.float64))
    # the rows of Omega_x are orthogonal with squared norm P
    assert torch.allclose(omega @ omega.T, 8 * torch.eye(3, dtype=torch.float64))


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="n2 .* cannot exceed n1"):
        D.make_dataset(2, 3, 1, 1, 1.0)
    with pytest.raises(ValueError, match="unknown architecture"):
        D.architecture_masks("sparse", D.make_dataset(1, 1, 1, 1, 1.0))


def test_spectrum_hand_computed_n1_1():
    # X = Y = [[-1, 1], [1, 0], [0, 1]]: Sigma_yx = X X^T / 2 has eigenvalues 3/2, 1/2, 0
    data = D.make_dataset(1, 1, 1, 1, 1.0)
    assert torch.equal(data.X, torch.tensor([[-1., 1.], [1., 0.], [0., 1.]], dtype=torch.float64))
    modes = D.mode_spectrum(1, 1, 1, 1, 1.0)
    assert [(m.s, m.d, m.multiplicity) for m in modes] == [(1.5, 1.5, 1), (0.5, 0.5, 1)]


@pytest.mark.parametrize("params", [(3, 1, 3, 1, 1.0), (3, 2, 1, 1, 2.0), (4, 1, 2, 3, 0.5), (3, 0, 1, 1, 2.0)])
def test_closed_form_spectrum_matches_numerical_svd(params):
    data = D.make_dataset(*params, generator=torch.Generator().manual_seed(1))
    closed = sorted(((m.s, m.d, m.multiplicity) for m in D.mode_spectrum(*params)), reverse=True)
    numeric = [(m.s, m.d, m.multiplicity) for m, _, _ in D.aligned_modes(data)]
    assert len(closed) == len(numeric)
    for (s, d, k), (s2, d2, k2) in zip(closed, numeric):
        assert math.isclose(s, s2, rel_tol=1e-9) and math.isclose(d, d2, rel_tol=1e-9) and k == k2
    # V_a are eigenvectors of Sigma_x (the condition for eq. 1)
    sx = data.X @ data.X.T / data.n_patterns
    for mode, _, V in D.aligned_modes(data):
        assert torch.allclose(sx @ V, mode.d * V, atol=1e-10)


def test_sigmoid_matches_numerical_ode():
    s, d, u0, rate = 1.2, 1.5, 1e-4, 0.4
    t = torch.linspace(0, 60, 6001, dtype=torch.float64)
    closed = D.sigmoid_trajectory(t, s, d, torch.tensor([u0]), rate)[0]
    # RK4 on du/dt = (rate / s) u (s - d u)  (tau du/dt = 2 u (s - d u) with rate = 2 s / tau)
    f = lambda u: rate / s * u * (s - d * u)
    h, u, num = float(t[1] - t[0]), u0, [u0]
    for _ in range(len(t) - 1):
        k1 = f(u); k2 = f(u + h * k1 / 2); k3 = f(u + h * k2 / 2); k4 = f(u + h * k3)
        u = u + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6
        num.append(u)
    assert torch.allclose(closed, torch.tensor(num, dtype=torch.float64), atol=1e-8)
    assert math.isclose(float(closed[-1]), s / d, rel_tol=1e-6)


def test_one_step_equals_autograd():
    data = D.make_dataset(2, 1, 1, 1, 1.0, generator=torch.Generator().manual_seed(0))
    masks = D.architecture_masks("dense", data, hidden=4)
    lr = 0.05
    traj = D.train_linear(data.X, data.Y, masks, [3], lr=lr, epochs=1, init_std=0.1)
    W1, W2 = [w[0].clone().requires_grad_(True) for w in traj.initial]
    loss = 0.5 * (data.Y - W2 @ W1 @ data.X).pow(2).sum()
    loss.backward()
    expected = (W2 - lr * W2.grad) @ (W1 - lr * W1.grad)
    assert torch.allclose(traj.maps[1, 0], expected.detach(), atol=1e-14)


def test_batched_equals_loop_and_runs_are_independent():
    data = D.make_dataset(3, 1, 3, 1, 1.0, generator=torch.Generator().manual_seed(0))
    masks = D.architecture_masks("split", data, hidden=8)
    seeds = [11, 12, 13]
    a = D.train_linear(data.X, data.Y, masks, seeds, epochs=20, init_std=0.01)
    b = D.train_linear_loop(data.X, data.Y, masks, seeds, epochs=20, init_std=0.01)
    assert torch.allclose(a.maps, b.maps, atol=1e-13)
    assert not torch.allclose(a.initial[0][0], a.initial[0][1])    # one seed per run


def test_block_norms_hand_computed():
    data = D.make_dataset(1, 1, 1, 1, 1.0)                  # inputs: Omega 1 + Gamma 2, outputs 1 + 2
    W = torch.tensor([[3., 4., 0.], [0., 1., 2.], [2., 0., 2.]], dtype=torch.float64)
    # blocks: O->O [[3]], G->O [[4, 0]], O->G [[0], [2]], G->G [[1, 2], [0, 2]]
    assert torch.allclose(D.block_norms(W, data), torch.tensor([3., 4., 2., 3.], dtype=torch.float64))


def test_block_losses_hand_computed():
    data = D.make_dataset(1, 1, 1, 1, 1.0)                  # X = Y = [[-1, 1], [1, 0], [0, 1]], n2 = 1
    maps = torch.stack([torch.zeros(3, 3), torch.eye(3)]).double()[:, None]          # (T=2, R=1, 3, 3)
    losses = D.block_losses(maps, data.X, data.Y, data.n2)
    # zero map: Omega_y row (-1, 1) -> mean of 1, 1; Gamma_y rows -> per pattern 1 + 0, 0 + 1; identity: exact
    assert torch.equal(losses, torch.tensor([[[1.0, 1.0]], [[0.0, 0.0]]], dtype=torch.float64))


def test_partition_cuts_coupling_and_split_does_not():
    data = D.make_dataset(3, 1, 3, 1, 1.0, generator=torch.Generator().manual_seed(0))
    norms = {}
    for arch in ("dense", "split", "partitioned"):
        traj = D.train_linear(data.X, data.Y, D.architecture_masks(arch, data, 20), [0, 1], epochs=150)
        norms[arch] = D.block_norms(traj.maps[-1], data)
    assert torch.all(norms["partitioned"][:, 1] == 0)          # Gamma_x -> Omega_y exactly zero
    # converged: the min-norm interpolating map, Omega_y row = omega^T X^T / (P + k1 r^2), so
    # ||Gamma_x -> Omega_y|| = r sqrt(k1 P) / (P + k1 r^2) and ||Omega_x -> Omega_y|| = P / (P + k1 r^2)
    expected = math.sqrt(3 * 8) / 11
    assert math.isclose(D.converged_coupling(1, 3, 1.0, 8), expected, rel_tol=1e-15)
    assert torch.allclose(norms["dense"][:, 0], torch.tensor(8 / 11, dtype=torch.float64), atol=2e-3)
    assert torch.allclose(norms["dense"][:, 1], torch.tensor(expected, dtype=torch.float64), atol=2e-3)
    assert torch.allclose(norms["split"][:, 1], torch.tensor(expected, dtype=torch.float64), atol=2e-3)
    assert torch.allclose(norms["partitioned"][:, 0], torch.tensor(1.0, dtype=torch.float64), atol=1e-3)


def test_simulation_follows_closed_form_and_converges_with_lr():
    data = D.make_dataset(3, 1, 3, 1, 1.0, generator=torch.Generator().manual_seed(0))
    modes = D.aligned_modes(data)
    masks = D.architecture_masks("dense", data)
    devs = {}
    for lr, epochs in ((0.02, 300), (0.005, 1200)):
        traj = D.train_linear(data.X, data.Y, masks, [5, 6, 7, 8], lr=lr, epochs=epochs)
        learned = D.mode_strengths(traj.maps, modes)
        pred = D.predicted_strengths(modes, traj.initial, epochs, lr, data.n_patterns)
        devs[lr] = [float(((l - p).abs() / m.target).amax()) for (m, _, _), l, p in zip(modes, learned, pred)]
    assert max(devs[0.02]) < 0.1
    assert max(devs[0.005]) < 0.1
    assert devs[0.005][0] < devs[0.02][0] / 2                    # discretisation error shrinks with lr
    assert devs[0.005][0] < 0.025


def test_full_rank_probability_hand_computed():
    # n1 = 3, three of the 8 cube vertices: dependent iff an antipodal pair is drawn (4 * 6 of 56)
    assert math.isclose(D.full_rank_probability(3, 3), 32 / 56)
    assert D.full_rank_probability(3, 2) == 0.0 and D.full_rank_probability(3, 8) == 1.0
    assert math.isclose(D.full_rank_probability(2, 2), 4 / 6)      # 2 antipodal pairs of 6


def naive_gd(X, Y, W1, W2, M1, M2, lr, epochs):
    """One run, plain matrices and a Python loop: the independent reference for the batched trainers."""
    maps = [W2 @ W1]
    for _ in range(epochs):
        E = Y - W2 @ W1 @ X
        W1, W2 = W1 + lr * M1 * (W2.T @ E @ X.T), W2 + lr * M2 * (E @ (W1 @ X).T)
        maps.append(W2 @ W1)
    return torch.stack(maps)


def test_grouped_training_equals_naive_per_run_gd():
    """Groups of different widths, datasets, pattern counts and learning rates in one padded pass."""
    d1 = D.make_dataset(3, 1, 3, 1, 1.0, generator=torch.Generator().manual_seed(0))       # 27 in, 9 out, 8 patterns
    d2 = D.make_dataset(2, 2, 1, 0, 2.0, generator=torch.Generator().manual_seed(0))       # 6 in, 2 out, 4 patterns
    groups = [D.LinearGroup(d1.X, d1.Y, D.architecture_masks("dense", d1, 5), [1, 2], 0.02),
              D.LinearGroup(d1.X, d1.Y, D.architecture_masks("partitioned", d1, 5), [3], 0.01),
              D.LinearGroup(d2.X[:, :3], d2.Y[:, :3], D.architecture_masks("split", d2, 4), [4, 5], 0.03)]
    trajs = D.train_linear_groups(groups, epochs=25, init_std=0.05)
    for g, traj in zip(groups, trajs):
        M1, M2 = g.masks
        assert traj.maps.shape == (26, len(g.seeds), g.Y.shape[0], g.X.shape[0])
        assert traj.initial[0].shape == (len(g.seeds), *M1.shape)
        for r in range(len(g.seeds)):
            ref = naive_gd(g.X, g.Y, traj.initial[0][r], traj.initial[1][r], M1, M2, g.lr, 25)
            assert torch.allclose(traj.maps[:, r], ref, atol=1e-13)
            assert torch.allclose(traj.final[1][r] @ traj.final[0][r], ref[-1], atol=1e-13)
        # each group's initial weights are the ones a separate call draws
        alone = D.train_linear(g.X, g.Y, g.masks, g.seeds, lr=g.lr, epochs=25, init_std=0.05)
        assert torch.equal(alone.initial[0], traj.initial[0]) and torch.equal(alone.initial[1], traj.initial[1])
        assert torch.allclose(alone.maps, traj.maps, atol=1e-13)
    with pytest.raises(ValueError, match="same depth"):
        D.train_linear_groups([groups[0], D.LinearGroup(d1.X, d1.Y, D.architecture_masks("shallow", d1), [1], 0.01)])


# ------------------------------------------------- nonlinear hidden layer, penalties (issue 13)

def _autograd_step(W1, W2, X, Y, f, lr, wd=0.0, cross=None, cross_l1=0.0):
    """One gradient-descent step of 1/2 ||Y - W2 f(W1 X)||^2 + penalties by autograd (one run)."""
    W1 = W1.clone().requires_grad_(True)
    W2 = W2.clone().requires_grad_(True)
    loss = 0.5 * (Y - W2 @ f(W1 @ X)).pow(2).sum() + wd / 2 * (W1.pow(2).sum() + W2.pow(2).sum())
    if cross is not None:
        loss = loss + cross_l1 * (W2 @ W1)[cross].abs().sum()
    loss.backward()
    return (W1 - lr * W1.grad).detach(), (W2 - lr * W2.grad).detach()


def test_train_two_layer_linear_equals_train_linear():
    data = D.make_dataset(3, 1, 3, 1, 1.0, generator=torch.Generator().manual_seed(0))
    masks = D.architecture_masks("partitioned", data, 6)
    ref = D.train_linear(data.X, data.Y, masks, [3, 4], lr=0.02, epochs=40, init_std=0.1)
    got = D.train_two_layer(data.X, data.Y, masks, [3, 4], lr=0.02, epochs=40, init_std=0.1,
                            evals={"all": (data.X, data.Y)}, n2=1, record_every=40)
    assert torch.allclose(got.W1, ref.final[0], atol=1e-12) and torch.allclose(got.W2, ref.final[1], atol=1e-12)
    assert torch.allclose(got.losses["all"][-1], D.block_losses(ref.maps[-1:], data.X, data.Y, 1)[0], atol=1e-12)
    assert got.epochs == [0, 40]


@pytest.mark.parametrize("act,f", [("relu", torch.relu), ("tanh", torch.tanh)])
def test_train_two_layer_step_equals_autograd(act, f):
    data = D.make_dataset(2, 1, 1, 1, 1.0, generator=torch.Generator().manual_seed(0))
    masks = D.architecture_masks("dense", data, 5)
    w1, w2 = D.init_weights([7], masks, 0.5)
    cross = data.blocks()["Gamma_x->Omega_y"]
    got = D.train_two_layer(data.X, data.Y, masks, [7], activation=act, lr=0.05, epochs=1, init_std=0.5,
                            weight_decay=0.1, cross_l1=0.2, cross_block=cross)
    e1, e2 = _autograd_step(w1[0], w2[0], data.X, data.Y, f, 0.05, wd=0.1, cross=cross, cross_l1=0.2)
    assert torch.allclose(got.W1[0], e1, atol=1e-12) and torch.allclose(got.W2[0], e2, atol=1e-12)


def test_l1_is_a_soft_threshold_and_per_run_penalties_are_independent():
    data = D.make_dataset(2, 1, 1, 1, 1.0, generator=torch.Generator().manual_seed(0))
    masks = D.architecture_masks("dense", data, 4)
    w1, w2 = D.init_weights([1], masks, 0.3)
    both = D.train_two_layer(data.X, data.Y, masks, [1, 1], lr=0.05, epochs=1, init_std=0.3, l1=[0.0, 0.5])
    plain = _autograd_step(w1[0], w2[0], data.X, data.Y, lambda h: h, 0.05)
    assert torch.allclose(both.W1[0], plain[0], atol=1e-12)                      # run 0: no penalty
    soft = lambda w: torch.sign(w) * (w.abs() - 0.05 * 0.5).clamp_min(0)           # run 1: prox of lr * l1 |w|
    assert torch.allclose(both.W1[1], soft(plain[0]), atol=1e-12) and torch.allclose(both.W2[1], soft(plain[1]), atol=1e-12)


def test_dropout_zero_is_deterministic_and_dropout_changes_the_run():
    data = D.make_dataset(2, 1, 1, 1, 1.0, generator=torch.Generator().manual_seed(0))
    masks = D.architecture_masks("dense", data, 8)
    a = D.train_two_layer(data.X, data.Y, masks, [2, 2], lr=0.05, epochs=20, init_std=0.3, dropout=[0.0, 0.5])
    b = D.train_two_layer(data.X, data.Y, masks, [2], lr=0.05, epochs=20, init_std=0.3)
    assert torch.equal(a.W1[0], b.W1[0]) and not torch.allclose(a.W1[1], b.W1[0])
    c = D.train_two_layer(data.X, data.Y, masks, [2, 2], lr=0.05, epochs=20, init_std=0.3, dropout=[0.0, 0.5])
    assert torch.equal(a.W1, c.W1)                                                # same dropout seed, same run


def test_jacobian_block_norms_equal_autograd_and_linear_block_norms():
    data = D.make_dataset(2, 1, 2, 1, 1.0, generator=torch.Generator().manual_seed(0))
    masks = D.architecture_masks("split", data, 3)
    run = D.train_two_layer(data.X, data.Y, masks, [5, 6, 7], activation=["linear", "relu", "tanh"], lr=0.05,
                            epochs=5, init_std=0.5)
    got = D.jacobian_block_norms(run, data.X, data)
    assert torch.allclose(got[0], D.block_norms(run.W2[0] @ run.W1[0], data), atol=1e-12)
    for r, f in ((1, torch.relu), (2, torch.tanh)):
        per = []
        for p in range(data.n_patterns):
            J = torch.autograd.functional.jacobian(lambda x, r=r, f=f: run.W2[r] @ f(run.W1[r] @ x), data.X[:, p])
            per.append(D.block_norms(J, data))
        assert torch.allclose(got[r], torch.stack(per).pow(2).mean(0).sqrt(), atol=1e-12)


def test_stacked_masks_pad_and_partitioned_coupling_is_exactly_zero():
    data = D.make_dataset(3, 1, 3, 1, 1.0, generator=torch.Generator().manual_seed(0))
    m1, m2 = D.stack_masks([D.architecture_masks("dense", data, 4), D.architecture_masks("partitioned", data, 4)], [2, 1])
    assert m1.shape == (3, 8, data.d_in) and m2.shape == (3, data.d_out, 8)
    assert m1[:2, 4:].abs().sum() == 0 and m2[:2, :, 4:].abs().sum() == 0           # padded units of dense
    run = D.train_two_layer(data.X, data.Y, (m1, m2), [1, 2, 3], activation="relu", lr=0.02, epochs=30, init_std=0.3)
    assert run.W1[:2, 4:].abs().sum() == 0
    assert float(D.jacobian_block_norms(run, data.X, data)[2, 1]) == 0.0
    with pytest.raises(ValueError, match="activation must be one of"):
        D.train_two_layer(data.X, data.Y, (m1, m2), [1, 2, 3], activation="gelu")
    with pytest.raises(ValueError, match="cross_block"):
        D.train_two_layer(data.X, data.Y, (m1, m2), [1, 2, 3], cross_l1=0.1)
    with pytest.raises(ValueError, match="shallow"):
        D.train_two_layer(data.X, data.Y, D.architecture_masks("shallow", data), [1])
