"""mpnn.deploy: plans, the distributed engine against one process, faults, restart, teardown.

(The chapter's experiments on them: tests/test_multipart_deployment.py.)"""
from __future__ import annotations

import json
import re
import signal
import time

import pytest
import torch
import torch.nn.functional as F

from mpnn.deploy import (DeployError, PlanError, STRATEGIES, assemble, by_count, by_ids, by_layer,
                         by_percentage, init_params, launch, make_plan, reference_model)
from mpnn.deploy import checkpoint as ckpt
from mpnn.deploy import cost
from mpnn.deploy.launch import leftover
from mpnn.deploy.plan import Plan
from mpnn.deploy.rank_work import batch, make_data

SIZES = [12, 10, 7, 4]      # input 12, hidden 10 and 7, output 4
SEED, LR, BATCH, K = 3, 0.2, 16, 3
DATA = {"kind": "synthetic", "n": 64, "seed": 5}


def _assert_no_leftovers(outcomes) -> None:
    pids = [o.pid for o in outcomes]
    assert len(pids) >= 1 and not leftover(pids), [o.describe() for o in outcomes]


# ---------------------------------------------------------------------- plans (no processes)

def test_count_and_percentage_plans_by_hand():
    p = by_count([5, 4, 3], [[1, 3], [2, 1]])
    assert p.owner[0].tolist() == [0, 1, 1, 1] and p.owner[1].tolist() == [0, 0, 1]
    # 50/25/25 % of 4 neurons = [2, 1, 1]; of 3 neurons = [1.5, .75, .75] -> floors [1, 0, 0],
    # the 2 left over go to the largest remainders (ranks 1 and 2) -> [1, 1, 1].
    q = by_percentage([5, 4, 3], [50, 25, 25])
    assert q.owner[0].tolist() == [0, 0, 1, 2] and q.owner[1].tolist() == [0, 1, 2]
    assert p.params_per_rank() == [1 * 6 + 2 * 5, 3 * 6 + 1 * 5]


def test_ids_layer_plans_and_metadata():
    p = by_ids([3, 4, 2], {0: [0, 2, 4], 1: [1, 3, 5]})   # global IDs: layer 1 = 0..3, layer 2 = 4..5
    assert p.owner[0].tolist() == [0, 1, 0, 1] and p.owner[1].tolist() == [0, 1]
    m = p.metadata(1)
    assert m["local"] == {1: [[1, 2], [3, 4]], 2: [[5, 6]]}
    assert m["remote"] == {1: {0: [[0, 1], [2, 3]]}}          # rank 1 reads neurons 0 and 2 of layer 1
    assert m["send_to"] == {1: [0], 2: [0]}                    # layer 2 goes to the head (rank 0)
    lay = by_layer([3, 4, 5, 2], [0, 1, 1])
    assert lay.metadata(0) == {"rank": 0, "local": {1: [[0, 4]]}, "remote": {3: {1: [[9, 11]]}},
                               "send_to": {1: [1]}}
    for plan in (p, lay, make_plan("percentage", SIZES, 3)):
        back = Plan.from_json(json.dumps(json.loads(plan.to_json())))
        assert back == plan


@pytest.mark.parametrize("make, message", [
    (lambda: by_ids([3, 2, 2], {0: [0, 1, 2], 1: [2, 3]}), "owned twice"),
    (lambda: by_ids([3, 2, 2], {0: [0, 1], 1: [3]}), "owned by no rank"),
    (lambda: by_ids([3, 2, 2], {0: [0, 1, 2, 3], 5: []}, world_size=2), "not a rank"),
    (lambda: by_ids([3, 2, 2], {0: [0, 1, 2, 9]}), "do not exist"),
    (lambda: by_count([3, 2, 2], [[1, 1], [2, 1]]), "sum to 3 but the layer has 2"),
    (lambda: by_count([3, 2, 2], [[1, 1]]), "one row per layer"),
    (lambda: by_percentage([3, 2, 2], [60, 60]), "sum to 100"),
    (lambda: by_layer([3, 2, 2], [0, 2]), "own no neuron"),
    (lambda: make_plan("layer", [3, 2, 2], 3), "at most 2 ranks"),
    (lambda: make_plan("random", [3, 2, 2], 2), "unknown strategy"),
    (lambda: Plan([3, 2, 2], 2, [torch.tensor([0, 1]), torch.tensor([0, 3])]), "unknown ranks"),
    (lambda: Plan([3, 2, 2], 2, [torch.tensor([0, 1]), torch.tensor([0, 1, 1])]), "has 3 entries"),
    (lambda: Plan.from_dict({"sizes": [3, 2], "world_size": 1, "owner": [[[0, 0, 1], [0, 0, 2]]]}), "owned twice"),
])
def test_invalid_plans_are_rejected(make, message):
    with pytest.raises(PlanError, match=message):
        make()


def test_volume_matches_closed_forms():
    for P in (2, 3, 4):
        sizes = [30, 16, 12, 10]
        nw = make_plan("count", sizes, P)
        v = cost.volume(nw, batch=7)
        assert sum(v["fwd_bytes"]) == sum(v["bwd_bytes"]) == cost.neuron_wise_forward_bytes(sizes, P, 7)
        assert sum(v["fwd_msgs"]) == 2 * P * (P - 1) + (P - 1)
    lw = by_layer([30, 16, 12, 10], [0, 1, 1])
    assert sum(cost.volume(lw, 5)["fwd_bytes"]) == cost.layer_wise_forward_bytes([30, 16, 12, 10], [0, 1, 1], 5) \
        == 5 * 4 * (16 + 10)


# ---------------------------------------------------------------------- distributed equivalence

def _naive_reference(steps=K, dtype=torch.float64):
    """Single process, written out: logits and gradients of step 0, parameters after ``steps`` SGD steps."""
    x, y = make_data(DATA, SIZES[0], SIZES[-1])
    net = reference_model(init_params(SIZES, SEED, dtype))
    xb, yb = batch(x, y, 0, BATCH, SEED)
    logits = net(xb.to(dtype))
    F.cross_entropy(logits, yb).backward()
    grads = [(m.weight.grad.clone(), m.bias.grad.clone()) for m in net if isinstance(m, torch.nn.Linear)]
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for step in range(steps):
        opt.zero_grad()
        xb, yb = batch(x, y, step, BATCH, SEED)
        F.cross_entropy(net(xb.to(dtype)), yb).backward()
        opt.step()
    final = [(m.weight.detach(), m.bias.detach()) for m in net if isinstance(m, torch.nn.Linear)]
    return logits.detach(), grads, final


def test_the_chapters_reference_through_fit_is_the_naive_loop_bit_for_bit():
    from mpnn.experiments.multipart_deployment import reference
    for steps in (1, K, 7):          # 7 * 16 rows > the 64 samples: batches repeat rows, fit must not care
        want, got = _naive_reference(steps), reference(SIZES, SEED, DATA, BATCH, LR, steps)
        assert torch.equal(want[0], got[0])
        for part in (1, 2):
            assert all(torch.equal(u, v) for pw, pg in zip(want[part], got[part]) for u, v in zip(pw, pg))


def test_assemble_inverts_the_split_and_exposes_unowned_rows():
    plan = by_ids([3, 4, 2], {0: [0, 2, 4], 1: [1, 3, 5]})
    params = init_params(plan.sizes, 0, torch.float64)
    per_rank = [{f"L{l}.{k}": t[plan.local(l, r)] for l, (w, b) in enumerate(params, 1)
                 for k, t in (("weight", w), ("bias", b)) if plan.local(l, r).numel()} for r in range(2)]
    for (w, b), (aw, ab) in zip(params, assemble(plan, per_rank)):
        assert torch.equal(w, aw) and torch.equal(b, ab)
    (w1, b1), (w2, b2) = assemble(plan, [per_rank[0], {}])       # rank 1's rows never arrived
    assert w1[[1, 3]].isnan().all() and b1[[1, 3]].isnan().all() and b2[1].isnan()
    assert not w1[[0, 2]].isnan().any() and not w2[0].isnan().any()
    assert torch.equal(w1[[0, 2]], params[0][0][[0, 2]])
    with pytest.raises(ValueError, match="no rank supplies rows of layer 1"):
        assemble(plan, [{}, {}])


def test_distributed_equals_single_process_for_every_strategy():
    world = 3
    plans = [make_plan(s, SIZES, world) for s in STRATEGIES]
    job = {"kind": "equivalence", "plans": [p.to_dict() for p in plans], "seed": SEED, "data": DATA,
           "batch": BATCH, "lr": LR, "k_steps": K, "dtype": "float64"}
    res = launch(job, world, timeout_s=90)
    _assert_no_leftovers(res.outcomes)
    logits, grads, final = _naive_reference()
    tol = {"rtol": 1e-6, "atol": 1e-6}
    for i, plan in enumerate(plans):
        per = [r["plans"][i] for r in res.results]
        assert per[0]["strategy"] == plan.strategy
        torch.testing.assert_close(per[plan.head]["logits"], logits, **tol)
        for (gw, gb), (rw, rb) in zip(assemble(plan, [p["grads"] for p in per]), grads):
            torch.testing.assert_close(gw, rw, **tol)
            torch.testing.assert_close(gb, rb, **tol)
        for (fw, fb), (rw, rb) in zip(assemble(plan, [p["final"] for p in per]), final):
            torch.testing.assert_close(fw, rw, **tol)
            torch.testing.assert_close(fb, rb, **tol)
        # bytes the engine sent in one forward/backward == the volume model (float64: 8 bytes)
        v = cost.volume(plan, BATCH, elem_bytes=8)
        assert [p["stats"]["bytes_sent"]["forward"] for p in per] == v["fwd_bytes"]
        assert [p["stats"]["bytes_sent"]["backward"] for p in per] == v["bwd_bytes"]


# ---------------------------------------------------------------------- faults, restart, teardown

def test_killed_rank_stops_the_others_and_restart_loses_no_update(tmp_path):
    world, steps, kill_step = 3, 4, 2
    plan = make_plan("count", SIZES, world)
    job = {"kind": "train", "plan": plan.to_dict(), "seed": SEED, "data": DATA, "batch": BATCH, "lr": LR,
           "steps": steps, "ckpt_every": 1, "ckpt_dir": str(tmp_path / "shared"), "dtype": "float64",
           "kill": {"rank": 2, "step": kill_step}}
    t0 = time.perf_counter()
    with pytest.raises(DeployError) as info:
        launch(job, world, timeout_s=90, grace_s=15)
    wall = time.perf_counter() - t0
    outcomes = info.value.outcomes
    _assert_no_leftovers(outcomes)
    assert outcomes[2].returncode == -signal.SIGKILL and "SIGKILL" in str(info.value)
    for o in outcomes[:2]:              # survivors noticed by themselves, with their own error report
        assert o.returncode == 1 and not o.killed_by_launcher, o.describe()
        # where the death shows first depends on timing: an exchange (PeerLost) or a collective of the
        # checkpoint (gloo's own "Connection closed/reset by peer")
        assert o.error.startswith(f"rank {o.rank} stopped: "), o.error
        assert re.search(r"PeerLost: rank \d+ lost contact|Connection (closed|reset) by peer", o.error), o.error
        assert o.exit_s - outcomes[2].exit_s < 15
    assert wall < 90
    assert ckpt.latest_step(tmp_path / "shared") == kill_step      # steps 0 and 1 were completed
    # restart the group without the fault: resumes at step 2 and ends where a clean run ends
    res = launch({**job, "kill": None}, world, timeout_s=90)
    _assert_no_leftovers(res.outcomes)
    assert all(r["start"] == kill_step for r in res.results)
    _, _, ref = _naive_reference(steps)
    got = assemble(plan, [r["final"] for r in res.results])
    _, stored, step = ckpt.consolidate(tmp_path / "shared")
    assert step == steps
    for (w, b), (sw, sb), (rw, rb) in zip(got, stored, ref):
        torch.testing.assert_close(w, rw, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(sw, rw, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b, rb, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(sb, rb, rtol=1e-6, atol=1e-6)
    with pytest.raises(PlanError, match="different plan"):   # resuming with another plan is refused
        ckpt._check_plan(ckpt.step_dir(tmp_path / "shared", steps), make_plan("layer", SIZES, world))


def test_hung_rank_times_out_and_is_killed():
    t0 = time.perf_counter()
    with pytest.raises(DeployError) as info:
        launch({"kind": "fail", "rank": 1, "mode": "hang", "op_timeout_s": 3}, 2, timeout_s=60, grace_s=2)
    wall = time.perf_counter() - t0
    o = info.value.outcomes
    _assert_no_leftovers(o)
    assert o[0].returncode == 1 and "rank 0 stopped" in o[0].error       # its wait timed out
    assert o[1].killed_by_launcher                                        # the hung rank was stopped
    assert wall < 45


def test_critical_fraction_and_projection_by_hand():
    sizes = [4, 6, 3]                     # multiply-adds: 24 (layer 1) + 18 (layer 2) = 42
    p = by_count(sizes, [[4, 2], [2, 1]])   # busiest shares 4/6 and 2/3
    assert cost.critical_fraction(p) == pytest.approx((24 * 4 / 6 + 18 * 2 / 3) / 42)
    assert cost.critical_fraction(by_layer(sizes, [0, 1])) == 1.0
    hw = cost.Hardware(flops=1e12, alpha_s=1e-5, beta_Bps=1e9, memory_B=1e9, bytes_per_param=4, elem_bytes=2)
    out = cost.project(width=100, layers=10, batch=8, P=[1, 4], hw=hw)
    compute = 6 * 10 * 100 ** 2 * 8 / 1e12
    act = 8 * 100 * 2
    assert out["neuron_wise_s"][0] == pytest.approx(compute) and out["layer_wise_s"][0] == pytest.approx(compute)
    assert out["neuron_wise_s"][1] == pytest.approx(compute / 4 + 20 * (3e-5 + act * 0.75 / 1e9))
    assert out["layer_wise_s"][1] == pytest.approx(compute + 6 * (1e-5 + act / 1e9))
    assert out["min_servers"] == 1 and out["memory_per_server_B"][1] == pytest.approx(10 * 100 ** 2 * 4 / 4)


def test_latency_fit_recovers_known_constants():
    rng = torch.Generator().manual_seed(0)
    n = 24
    t1 = torch.rand(n, generator=rng).double() * 1e-3 + 1e-3
    fc = torch.rand(n, generator=rng).double() * 0.7 + 0.3
    msgs = torch.randint(1, 30, (n,), generator=rng).double()
    nbytes = torch.randint(1_000, 1_000_000, (n,), generator=rng).double()
    t = 1.5 * t1 * fc + 2e-4 * msgs + nbytes / 5e8
    fit = cost.fit_latency(t.numpy(), t1.numpy(), fc.numpy(), msgs.numpy(), nbytes.numpy())
    assert fit.c == pytest.approx(1.5, rel=1e-6) and fit.alpha_s == pytest.approx(2e-4, rel=1e-6)
    assert fit.beta_Bps == pytest.approx(5e8, rel=1e-6) and fit.rel_err.max() < 1e-9


# ---------------------------------------------------------------------- who may connect

def test_single_host_launcher_listens_on_loopback_only():
    import os
    res = launch({"kind": "listen"}, 3, timeout_s=60)
    _assert_no_leftovers(res.outcomes)
    socks = [s for r in res.results for s in r["listening"]]
    assert {r["parent"] for r in res.results} == {os.getpid()}
    owners = {pid for pid, _, _ in socks}
    assert os.getpid() in owners                                    # the store, hosted by the launcher
    assert {o.pid for o in res.outcomes} <= owners                  # every rank's gloo listener
    assert {addr for _, addr, _ in socks} == {"127.0.0.1"}, socks   # nothing on 0.0.0.0 / ::


def test_non_loopback_address_needs_an_explicit_yes():
    with pytest.raises(DeployError, match="not a loopback address.*allow_remote=True"):
        launch({"kind": "listen"}, 2, host="10.1.2.3")
    from mpnn.deploy.launch import check_host
    assert check_host("10.1.2.3", allow_remote=True) == "10.1.2.3"
    assert check_host("localhost") == "127.0.0.1"
    from mpnn.deploy.launch import DeployError as E, interface_of
    assert interface_of("127.0.0.1") == "lo"
    with pytest.raises(E, match="no local interface holds 203.0.113.77"):
        interface_of("203.0.113.77")
