"""mpnn.tagnet.stacked_sgd: lock-step per-sample SGD against the autograd loop, a numpy step, solo runs,
and the numbers of the trainer before it was split into routing / inputs / step loops."""
import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mpnn import tagnet
from mpnn.infra import determinism, native
from mpnn.tagnet import stacked_sgd
from mpnn.tagnet.stacked_sgd import StackedSGD

from test_tagnet import numpy_step

PRE_SPLIT = Path(__file__).parent / "data" / "stacked_sgd_pre_split.pt"


@pytest.fixture(autouse=True)
def compiled_where_enabled():
    """Where a test enables the fused loop it gets it, whatever this machine measures (the measured
    choice itself: test_the_step_loop_is_chosen_by_measurement)."""
    with native.forced("tagnet.steps", "compiled"):
        yield
SMALL = dict(grid=4, image=8, window=3)


def G(seed):
    return torch.Generator().manual_seed(seed)


def data(n=120, seed=0, pixels=784, k255=True):
    g = G(seed)
    if not k255:
        return torch.rand(n, pixels, generator=g), torch.randint(0, 10, (n,), generator=g)
    X = torch.randint(0, 256, (n, pixels), generator=g, dtype=torch.uint8).float() / 255
    X[:, pixels // 2:] = 0                                   # sparse-ish like MNIST
    return X, torch.randint(0, 10, (n,), generator=g)


def params_close(a, b, atol=2e-5):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=atol), name


# ------------------------------------------------------------------ the numbers before the split

def state(eng, X, y, moe=False):
    """What the pre-split fixture holds for one trained engine: weights, and inference on 16 images."""
    n = eng.nets
    X, y = X[:16], y[:16]
    out = {"n_p": torch.tensor(n.n_p)}
    for i, m in enumerate(n.export()):
        out |= {f"export{i}.{k}": v.detach() for k, v in m.named_parameters()}
    if moe:
        out |= {"gate_choice": n.gate_choice(X), "logits_gate": n.logits(X, route="gate"),
                "logits_all": n.logits(X, route="all")}
        return out | {f"acc_{k}": v for k, v in n.accuracies(X, y, {"g": "gate", "a": "all"}).items()}
    router = torch.randint(0, 2, (n.M, len(X)), generator=G(11))
    routes = {"t": "tag", "a": "all", "r": router}
    out |= {"logits_tag": n.logits(X, y % 2), "logits_all": n.logits(X, route="all", chunk=7),
            "logits_sub": n.logits(X, router[:1].expand(1, -1), models=[n.M - 1]),
            "accuracy": n.accuracy(X, y), "hidden_all": n.hidden(X), "hidden_0": n.hidden(X, models=[0])}
    out |= {f"correct_{k}": v for k, v in n.correct(X, y, routes, chunk=9).items()}
    return out | {f"acc_{k}": v for k, v in n.accuracies(X, y, routes).items()}


def local_mixed(eager=False):
    """Blocked partitioned networks whose even blocks end apart (mixed steps), another window
    layout, interleaved and unpartitioned networks; chunks of 64 steps, a callback every 50."""
    X, y = data(200, seed=1, pixels=64)
    models = [tagnet.TagNet(**SMALL, generator=G(1)), tagnet.TagNet(**SMALL, generator=G(2)),
              tagnet.TagNet(**SMALL, offset=1, generator=G(3)), tagnet.TagNet(**SMALL, generator=G(4)),
              tagnet.TagNet(**SMALL, partitioned=False, generator=G(5)),
              tagnet.TagNet(**SMALL, partitioned=False, generator=G(6))]
    g = G(9)
    idx = [torch.randperm(200, generator=g)[:120] for _ in range(6)]
    orders = ["blocked", "blocked", "blocked", "interleaved", "blocked", "interleaved"]
    eng = StackedSGD(models, X, y, lr=0.05)
    seen = []
    clipped = eng.fit(tagnet.make_schedule(y, idx, orders, 2), every=50, plan_chunk=64, eager=eager,
                      callback=lambda t: seen.append(eng.nets.accuracy(X[:50], y[:50])))
    return state(eng, X, y) | {"clipped": torch.tensor(clipped), "callbacks": torch.stack(seen)}


def two(kind, k255=True, scale=False, lr=0.02, epochs=1, moe=False):
    """Two networks of one kind (optionally with weights scaled so that gradients clip)."""
    X, y = data(90, seed=2, pixels=64, k255=k255)
    if moe:
        models = [tagnet.TwoExpertMoE(**SMALL, connectivity=kind, generator=G(s)) for s in (3, 4)]
    else:
        models = [tagnet.TagNet(**SMALL, connectivity=kind, partitioned=s == 3, generator=G(s)) for s in (3, 4)]
    if scale:
        with torch.no_grad():
            for m in models:
                m.out.weight.mul_(400)
                m.hidden.weight.mul_(10)
    orders = ["interleaved", "interleaved"] if moe else ["blocked", "interleaved"]
    sched = tagnet.make_schedule(y, [torch.arange(90), torch.arange(90).flip(0)], orders, epochs)
    eng = StackedSGD(models, X, y, lr=lr, clip=5.0)
    clipped = eng.fit(sched, plan_chunk=40)
    return state(eng, X, y, moe=moe) | {"clipped": torch.tensor(clipped),
                                        "clipped_steps": torch.tensor(eng.clipped_steps)}


def single_step():
    X, y = data(10, seed=3, pixels=64)
    eng = StackedSGD([tagnet.TagNet(**SMALL, generator=G(s)) for s in (1, 2)], X, y)
    eng.step(torch.tensor([3, 4]))
    eng.step(torch.tensor([5, 5]))
    return state(eng, X, y)


def default_size():
    """The chapter's network size; the fixture holds SHA-256 digests of the tensors' bytes."""
    X, y = data(100, seed=4)
    models = [tagnet.TagNet(generator=G(1)), tagnet.TagNet(partitioned=False, generator=G(2)),
              tagnet.TagNet(offset=6, generator=G(3))]
    eng = StackedSGD(models, X, y)
    eng.fit(tagnet.make_schedule(y, [torch.arange(100)] * 3, ["blocked", "blocked", "interleaved"], 2))
    return {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in state(eng, X, y).items()}


CASES = {
    "local-mixed": local_mixed,
    "local-float": lambda: two("local", k255=False, epochs=2),      # X not k/255: float32 window cache
    "local-clip": lambda: two("local", scale=True, lr=0.01),
    "full": lambda: two("full", epochs=2),
    "full-clip": lambda: two("full", scale=True, lr=0.01),
    "moe-local": lambda: two("local", lr=0.01, moe=True, epochs=2),
    "moe-full": lambda: two("full", lr=0.01, moe=True),
    "moe-clip": lambda: two("local", scale=True, lr=0.01, moe=True),
    "step": single_step,
    "default-size": default_size,
}


@pytest.fixture(scope="module")
def pre_split():
    """Outputs of the unsplit ``tagnet.StackedSGD`` (commit df6b1c2) on :data:`CASES`, one thread,
    recorded on one CPU: another CPU's kernels round differently (1-3 ULP in the logits), so the
    comparison has tolerances (:func:`assert_like_recorded`), never bits."""
    return torch.load(PRE_SPLIT)


# float32 SGD over at most a few hundred steps from the same start: the two trainers differ only in
# rounding, which grows to about 1e-5 of the values' scale; the fused-vs-torch test uses the same bound.
FLOAT_TOLERANCE = 1e-4


def assert_like_recorded(case: str, got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        if isinstance(value, str):            # a digest of the default-size tensors: bits, so not compared
            continue
        new = got[key]
        if value.is_floating_point() and key.startswith(("export", "logits", "hidden", "callbacks")):
            ref = expected["logits_all"] if key.startswith("logits") and "logits_all" in expected else value
            scale = 1 + float(ref.abs().max())
            assert float((new - value).abs().max()) <= FLOAT_TOLERANCE * scale, f"{case}: {key}"
        elif key.startswith(("correct", "gate_choice")):      # an argmax may flip on a near tie: one image
            assert int((new != value).sum()) <= 1, f"{case}: {key}"
        elif key.startswith(("acc", "callbacks")):
            assert float((new.float() - value.float()).abs().max()) <= 1 / 16 + 1e-6, f"{case}: {key}"
        elif key.startswith("clipped"):       # a step's gradient norm on its clip threshold may flip
            assert int((new - value).abs().max()) <= 1, f"{case}: {key}"
        else:
            assert torch.equal(new, value), f"{case}: {key}"


@pytest.mark.parametrize("case", [c for c in CASES if c != "default-size"] + ["local-mixed-eager"])
def test_outputs_equal_the_pre_split_trainer(case, pre_split, monkeypatch):
    monkeypatch.setenv("MPNN_FUSED", "0")             # the torch step loops (the fused one: below)
    with determinism.cpu_threads(1):
        got = local_mixed(eager=True) if case == "local-mixed-eager" else CASES[case]()
    assert_like_recorded(case, got, pre_split[case.replace("-eager", "")])


# ------------------------------------------------------------------ the fused step loop against the torch one

def needs_compiler():
    if stacked_sgd.fused_kernel() is None:
        pytest.skip("no C++ compiler: the fused step loop is not built (the torch one is tested)")


@pytest.fixture(params=["fused", "torch"])
def path(request, monkeypatch):
    """Runs a test with the fused step loop (where it builds) and with the forced torch fallback."""
    if request.param == "fused":
        needs_compiler()
    monkeypatch.setenv("MPNN_FUSED", "1" if request.param == "fused" else "0")
    return request.param


@pytest.mark.parametrize("case", ["local-mixed", "local-float", "local-clip", "full", "full-clip", "step"])
def test_fused_equals_torch_steps_to_rounding(case, monkeypatch):
    needs_compiler()
    got = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("MPNN_FUSED", flag)
        with determinism.cpu_threads(1):
            got[flag] = CASES[case]()
    assert_like_recorded(case, got["1"], got["0"])     # two code paths: the same tolerances as across CPUs


def test_fused_path_is_chosen_and_can_be_forced_off(monkeypatch):
    X, y = data(10)
    eng = StackedSGD([tagnet.TagNet(generator=G(0))], X, y)
    monkeypatch.setenv("MPNN_FUSED", "0")
    assert eng._kernel(None, False) is None
    with pytest.raises(RuntimeError, match="fused=True"):
        eng.fit(torch.arange(10)[:, None], fused=True)
    monkeypatch.setenv("MPNN_FUSED", "1")
    needs_compiler()
    assert eng._kernel(None, False) is not None
    assert eng._kernel(None, True) is None and eng._kernel(False, False) is None     # eager / off
    moe = StackedSGD([tagnet.TwoExpertMoE(generator=G(0))], X, y)
    assert moe._kernel(None, False) is None                                         # gate: torch


# ------------------------------------------------------------------ against independent references

@pytest.mark.parametrize("kind", ["local", "full", "unpartitioned", "moe"])
def test_stacked_matches_autograd_reference(kind, path):
    X, y = data(60)
    lr = 0.01 if kind == "moe" else 0.05        # keep the gate's argmax away from ties
    if kind == "moe":
        model = tagnet.TwoExpertMoE(generator=G(3))
    else:
        model = tagnet.TagNet(connectivity="full" if kind == "full" else "local",
                              partitioned=kind != "unpartitioned", generator=G(3))
    ref = copy.deepcopy(model)
    eng = StackedSGD([model], X, y, lr=lr)
    eng.fit(torch.arange(len(X))[:, None])
    tagnet.reference_sgd(ref, X, y, lr=lr)
    params_close(ref, eng.nets.export()[0])


def test_clipping_against_numpy_step(path):
    X, y = data(4)
    model = tagnet.TagNet(connectivity="full", generator=G(0))
    with torch.no_grad():                  # large output weights -> hidden errors beyond the clip
        model.out.weight.mul_(400)
        model.hidden.weight.mul_(10)
    args = [p.detach().double().numpy() for p in
            (model.hidden.weight, model.hidden.bias, model.out.weight, model.out.bias)]
    mask = model.switch.table[int(y[0]) % 2].double().numpy()
    ref = numpy_step(*args, X[0].double().numpy(), int(y[0]), mask, lr=0.01, clip=5.0)
    eng = StackedSGD([model], X, y, lr=0.01, clip=5.0)
    eng.step(torch.tensor([0]))
    n = eng.nets
    for g, r in zip([n.W1[0], n.b1[0], n.W2[0], n.b2[0]], ref):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-4)
    assert eng.clipped_steps == 1


def test_local_clipping_against_numpy_step(path):
    """Eq. (2) on the dense masked form of the local layer (clip applied to window taps only)."""
    X, y = data(3)
    model = tagnet.TagNet(generator=G(0))
    with torch.no_grad():
        model.out.weight.mul_(400)
        model.hidden.weight.mul_(10)
    D = model.hidden.dense_weight().detach().double().numpy()
    conn = model.hidden.connectivity().numpy()
    args = [D] + [p.detach().double().numpy() for p in (model.hidden.bias, model.out.weight, model.out.bias)]
    mask = model.switch.table[int(y[0]) % 2].double().numpy()
    W1, b1, W2, b2 = numpy_step(*args, X[0].double().numpy(), int(y[0]), mask, lr=0.01, clip=5.0)
    raw = numpy_step(*args, X[0].double().numpy(), int(y[0]), mask, lr=0.01, clip=np.inf)
    assert not np.allclose(raw[0] * conn, W1 * conn) and not np.allclose(raw[2], W2)   # it clips
    eng = StackedSGD([model], X, y, lr=0.01, clip=5.0)
    assert eng.fit(torch.tensor([[0]])) == 1                                        # one clamped step
    got = eng.nets.export()[0]
    np.testing.assert_allclose(got.hidden.dense_weight().detach().numpy(), W1 * conn, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.hidden.bias.detach().numpy(), b1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.out.weight.detach().numpy(), W2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.out.bias.detach().numpy(), b2, rtol=1e-4, atol=1e-4)


def test_lockstep_models_equal_separate_runs(path):
    X, y = data()
    models = [tagnet.TagNet(generator=G(s)) for s in (1, 2)]
    sched = torch.stack([torch.arange(60), torch.arange(60, 120)], 1)
    eng = StackedSGD(models, X, y)
    eng.fit(sched)
    for i, m in enumerate(models):
        solo = StackedSGD([m], X, y)
        solo.fit(sched[:, i:i + 1])
        params_close(eng.nets.export()[i], solo.nets.export()[0], atol=1e-6)


def test_mixed_engine_equals_separate_runs_and_autograd(path):
    """One engine holding every kind of local model (blocked partitioned models whose tag blocks end
    at different steps, so some steps are mixed; another window layout; interleaved partitioned;
    unpartitioned blocked and interleaved) gives each model exactly its own solo run, and the solo
    runs agree with the plain autograd loop."""
    X, y = data(200, seed=1)
    g = G(9)
    idx = [torch.randperm(200, generator=g)[:120] for _ in range(6)]
    models = [tagnet.TagNet(generator=G(1)), tagnet.TagNet(generator=G(2)),
              tagnet.TagNet(offset=6, generator=G(3)), tagnet.TagNet(generator=G(4)),
              tagnet.TagNet(partitioned=False, generator=G(5)),
              tagnet.TagNet(partitioned=False, generator=G(6))]
    orders = ["blocked", "blocked", "blocked", "interleaved", "blocked", "interleaved"]
    sched = tagnet.make_schedule(y, idx, orders, 1)
    n_even = [int((y[i] % 2 == 0).sum()) for i in idx[:3]]
    assert len(set(n_even)) > 1                       # the blocked models' even blocks end apart
    eng = StackedSGD(models, X, y, lr=0.05)
    eng.fit(sched)
    assert eng.nets.n_p == 3                          # the three blocked partitioned models
    together = eng.nets.export()
    for i, m in enumerate(models):
        solo = StackedSGD([m], X, y, lr=0.05)
        solo.fit(sched[:, i:i + 1])
        for p, q in zip(solo.nets.export()[0].parameters(), together[i].parameters()):
            assert torch.equal(p, q)
        ref = copy.deepcopy(m)
        tagnet.reference_sgd(ref, X[sched[:, i]], y[sched[:, i]], lr=0.05)
        params_close(ref, together[i])


def test_inactive_partition_receives_no_update(path):
    X, y = data()
    even = (y % 2 == 0).nonzero().flatten()
    model = tagnet.TagNet(generator=G(0))
    eng = StackedSGD([model], X, y)
    eng.fit(even[:, None])
    out = eng.nets.export()[0]
    odd_units = torch.tensor(tagnet.partition_groups()[1])
    even_units = torch.tensor(tagnet.partition_groups()[0])
    assert torch.equal(out.hidden.weight[odd_units], model.hidden.weight[odd_units])
    assert torch.equal(out.hidden.bias[odd_units], model.hidden.bias[odd_units])
    assert torch.equal(out.out.weight[:, odd_units], model.out.weight[:, odd_units])
    assert not torch.equal(out.hidden.weight[even_units], model.hidden.weight[even_units])
    assert not torch.equal(out.out.bias, model.out.bias)        # the shared output always learns


def test_scripted_and_eager_gate_steps_agree():
    """The gate's TorchScript step loop against its eager version (two code paths: a tolerance)."""
    X, y = data(80)
    models = [tagnet.TwoExpertMoE(generator=G(s)) for s in (0, 1)]
    sched = torch.stack([torch.arange(80), torch.arange(80).flip(0)], 1)
    out = []
    for eager in (False, True):
        eng = StackedSGD(models, X, y, lr=0.02)
        eng.fit(sched, eager=eager, plan_chunk=30, fused=False)
        out.append(eng.nets.export())
    for a, b in zip(*out):
        params_close(a, b, atol=1e-6)


def test_fit_callback_runs_on_one_thread_and_restores_count():
    X, y = data(40)
    eng = StackedSGD([tagnet.TagNet(generator=G(0))], X, y)
    before, seen = torch.get_num_threads(), []
    eng.fit(torch.arange(40)[:, None], every=10, callback=lambda t: seen.append((t, torch.get_num_threads())))
    assert seen == [(10, 1), (20, 1), (30, 1), (40, 1)]
    assert torch.get_num_threads() == before


def test_bad_inputs():
    X, y = data(10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        StackedSGD([tagnet.TagNet()], X * 255, y)
    with pytest.raises(ValueError, match="share"):
        StackedSGD([tagnet.TagNet(), tagnet.TagNet(connectivity="full")], X, y)
    with pytest.raises(ValueError, match="clip"):
        StackedSGD([tagnet.TagNet()], X, y, clip=0)
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        StackedSGD([tagnet.TagNet()], X[:, :100], y)
    with pytest.raises(ValueError, match=r"schedule must be \(T, 1\)"):
        StackedSGD([tagnet.TagNet()], X, y).fit(torch.zeros(5, 2, dtype=torch.long))


def test_the_step_loop_is_chosen_by_measurement(monkeypatch, tmp_path):
    needs_compiler()
    monkeypatch.setenv("MPNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_CHOICES", {})
    X, y = data(100)
    eng = StackedSGD([tagnet.TagNet(generator=G(0)), tagnet.TagNet(generator=G(1))], X, y)
    sched = torch.stack([torch.arange(100), torch.arange(100).flip(0)], 1)
    with native.forced("tagnet.steps", "none-such"):          # not a candidate: measured for real
        kernel = eng._kernel(None, False, sched)
    choice = [c for c in native.report()["choices"] if c["kind"] == "tagnet.steps"][0]
    assert set(choice["seconds"]) == {"compiled", "torch"}
    assert (kernel is not None) == (choice["chosen"] == "compiled")
