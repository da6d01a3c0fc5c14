"""mpnn.deploy across "machines": two torchrun launchers on 127.0.0.1 (one c10d rendezvous, two
ranks each) run the engine and the checkpoint/restart path, and an elastic restart
(``--max-restarts 1``) after one rank is killed mid-run resumes from the last distributed
checkpoint and ends equal to an uninterrupted run; the launchers listen on loopback only and leave
no process behind. Time bound: both tests together under 90 s on 2 loaded cores (about 50 s here)."""
import time

import pytest
import torch
import torch.nn.functional as F

from mpnn.deploy import assemble, init_params, make_plan, reference_model
from mpnn.deploy import checkpoint as ckpt
from mpnn.deploy.launch import DeployError, torchrun_nodes
from mpnn.deploy.rank_work import batch, make_data

SIZES = [12, 10, 7, 4]
SEED, LR, BATCH = 3, 0.2, 16
DATA = {"kind": "synthetic", "n": 64, "seed": 5}


def _reference(steps):
    """Single process, written out: logits of step 0, parameters after ``steps`` SGD steps."""
    x, y = make_data(DATA, SIZES[0], SIZES[-1])
    net = reference_model(init_params(SIZES, SEED, torch.float64))
    logits = net(batch(x, y, 0, BATCH, SEED)[0].double()).detach()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for step in range(steps):
        xb, yb = batch(x, y, step, BATCH, SEED)
        opt.zero_grad()
        F.cross_entropy(net(xb.double()), yb).backward()
        opt.step()
    return logits, [(m.weight.detach(), m.bias.detach()) for m in net if isinstance(m, torch.nn.Linear)]


def _close(got, want):
    for (w, b), (rw, rb) in zip(got, want):
        torch.testing.assert_close(w, rw, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(b, rb, rtol=1e-9, atol=1e-9)


def _loopback_only(out):
    assert out["listening"], "no listening socket was sampled"
    assert {addr for addr, _ in out["listening"]} == {"127.0.0.1"}, out["listening"]
    assert out["leftover"] == [], out["leftover"]


def test_two_launchers_one_rendezvous_equal_one_process():
    plan = make_plan("count", SIZES, 4)
    t0 = time.perf_counter()
    out = torchrun_nodes({"kind": "equivalence", "plans": [plan.to_dict()], "seed": SEED, "data": DATA,
                          "batch": BATCH, "lr": LR, "k_steps": 3, "dtype": "float64"}, 2, 2, timeout_s=60)
    assert time.perf_counter() - t0 < 60
    assert out["returncodes"] == [0, 0] and "--nnodes=2" in out["commands"][0]
    assert sorted(r["rank"] for r in out["results"]) == [0, 1, 2, 3]
    assert len({r["pid"] for r in out["results"]}) == 4
    logits, final = _reference(3)
    per = [r["plans"][0] for r in out["results"]]
    torch.testing.assert_close(per[0]["logits"], logits, rtol=1e-9, atol=1e-9)
    _close(assemble(plan, [p["final"] for p in per]), final)
    _loopback_only(out)


def test_elastic_restart_after_a_killed_rank_ends_equal_to_an_uninterrupted_run(tmp_path):
    steps, kill_step = 6, 3
    plan = make_plan("count", SIZES, 4)
    job = {"kind": "train", "plan": plan.to_dict(), "seed": SEED, "data": DATA, "batch": BATCH, "lr": LR,
           "steps": steps, "ckpt_every": 1, "ckpt_dir": str(tmp_path / "shared"), "dtype": "float64",
           "kill": {"rank": 3, "step": kill_step, "attempt": 0}, "op_timeout_s": 20}
    t0 = time.perf_counter()
    out = torchrun_nodes(job, 2, 2, max_restarts=1, timeout_s=80)
    assert time.perf_counter() - t0 < 80
    # every rank of the final group is in its second attempt and resumed from the step-3 checkpoint
    assert [(r["attempt"], r["start"]) for r in out["results"]] == [(1, kill_step)] * 4
    _, final = _reference(steps)
    _close(assemble(plan, [r["final"] for r in out["results"]]), final)
    _, stored, last = ckpt.consolidate(tmp_path / "shared")
    assert last == steps
    _close(stored, final)
    _loopback_only(out)


def test_non_loopback_address_is_refused():
    with pytest.raises(DeployError, match="not a loopback address"):
        torchrun_nodes({"kind": "fail"}, 2, 2, host="192.0.2.2")
