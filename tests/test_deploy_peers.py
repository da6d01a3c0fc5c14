"""mpnn.deploy.peers: PyTorch tensor parallelism and pipeline parallelism on the chapter's plans,
against one process (float64) and against the book's engine (same ownership, bytes counted alike)."""
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mpnn.deploy import init_params, launch, make_plan, reference_model
from mpnn.deploy import cost
from mpnn.deploy.peers import chunk_counts, layer_ranks, pp_messages, tp_plan
from mpnn.deploy.rank_work import batch, make_data

SIZES = [12, 10, 7, 5, 4]      # four layers: two col/row pairs; 10 and 7 neurons split unevenly on 3 ranks
SEED, LR, BATCH, K, M = 3, 0.2, 16, 3, 4
DATA = {"kind": "synthetic", "n": 64, "seed": 5}


def test_chunk_counts_follow_torch_chunk_and_the_plan_uses_them():
    for n, P in [(10, 3), (10, 4), (5, 4), (256, 3), (7, 2), (3, 3)]:
        want = [c.numel() for c in torch.arange(n).chunk(P)]
        assert chunk_counts(n, P) == want + [0] * (P - len(want))
    assert chunk_counts(256, 3) == [86, 86, 84]           # the book's count plan gives 86, 85, 85
    assert make_plan("count", [4, 256], 3).neurons_per_rank() == [86, 85, 85]
    assert tp_plan([4, 256], 3).neurons_per_rank() == [86, 86, 84]
    assert layer_ranks(SIZES, 3) == [0, 0, 1, 2] and layer_ranks(SIZES, 4) == [0, 1, 2, 3]
    assert pp_messages(2, 4) == 4 and pp_messages(4, 4) == 8


def _naive(steps=K):
    x, y = make_data(DATA, SIZES[0], SIZES[-1])
    net = reference_model(init_params(SIZES, SEED, torch.float64))
    xb, yb = batch(x, y, 0, BATCH, SEED)
    logits = net(xb.double())
    F.cross_entropy(logits, yb).backward()
    grads = [(m.weight.grad.clone(), m.bias.grad.clone()) for m in net if isinstance(m, torch.nn.Linear)]
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for step in range(steps):
        xb, yb = batch(x, y, step, BATCH, SEED)
        opt.zero_grad()
        F.cross_entropy(net(xb.double()), yb).backward()
        opt.step()
    return logits.detach(), grads, [(m.weight.detach(), m.bias.detach()) for m in net if isinstance(m, torch.nn.Linear)]


def test_tensor_and_pipeline_parallel_equal_one_process_and_traffic_is_counted():
    """One group of 3: for P = 2, 3 every PyTorch peer against the naive loop (float64), then one
    interleaved round of every configuration with its message and collective counts."""
    job = {"kind": "multi", "sizes": SIZES, "world_sizes": [2, 3], "seed": SEED, "data": DATA, "batch": BATCH,
           "lr": LR, "k_steps": K, "microbatches": M,
           "jobs": [{"kind": "peers_equivalence"}, {"kind": "peers_interleaved", "warmup": 0, "repeats": 1}]}
    res = launch(job, 3, timeout_s=120)
    logits, grads, final = _naive()
    tol = {"rtol": 1e-9, "atol": 1e-12}
    for P in (2, 3):
        for name in ("tp-colwise", "tp-megatron", "pp", "pp-m1"):
            per = [r["parts"][0]["peers"][(name, P)] for r in res.results[:P]]
            out = [p["logits"] for p in per if p["logits"] is not None]
            assert len(out) == 1                       # TP: rank 0; pipeline: the last stage
            torch.testing.assert_close(out[0], logits, **tol)
            g = {l: v for p in per for l, v in p["grads"].items()}
            f = {l: v for p in per for l, v in p["final"].items()}
            assert sorted(g) == sorted(f) == [1, 2, 3, 4], (name, P)
            for l in range(1, 5):
                for a, b in zip(g[l], grads[l - 1]):
                    torch.testing.assert_close(a, b, **tol)
                for a, b in zip(f[l], final[l - 1]):
                    torch.testing.assert_close(a, b, **tol)
    part = res.results[0]["parts"][1]
    counts = part["counts"]
    for P in (2, 3):
        # the book's engine on PyTorch's blocks sends what the volume model says (float32)
        v = cost.volume(tp_plan(SIZES, P), BATCH, 4)
        assert counts[("engine-count", P)]["bytes"] == v["fwd_bytes"][0] + v["bwd_bytes"][0]
        assert counts[("engine-count", P)]["messages"] == v["fwd_msgs"][0] + v["bwd_msgs"][0]
        # colwise: an all-gather per layer forward and an all-reduce per layer input gradient
        # backward (the first layer's input needs none); pairs: one all-reduce per pair each way,
        # no forward all-gather, and one for the replicated logits
        assert counts[("tp-colwise", P)] == {"all_gather_into_tensor": 4, "all_reduce": 3}
        assert counts[("tp-megatron", P)] == {"all_reduce": 3}
    rows = part["rows"]
    assert {k for k, v in rows.items() if v} == {(n, P) for n in ("engine-count", "tp-colwise", "tp-megatron",
                                                                  "engine-layer", "pp", "pp-m1") for P in (2, 3)} | {("single", 1)}
    assert all(len(v) == 1 and v[0]["t1"] > v[0]["t0"] for v in rows.values() if v)


def test_decide_peers_on_a_hand_made_table():
    from mpnn.experiments.multipart_deployment import decide_peers
    rows = []
    for rnd in range(5):
        for P in (2, 3):
            for name, ms in (("engine-count", 10), ("tp-colwise", 20), ("tp-megatron", 9), ("engine-layer", 5),
                             ("pp", 10), ("pp-m1", 6)):
                rows.append({"configuration": name, "ranks": P, "round": rnd, "step_s": ms * P / 1e3,
                             "wire_bytes": 1000, "ratio_to_single": 1.0})
        rows.append({"configuration": "single", "ranks": 1, "round": rnd, "step_s": 1e-3, "wire_bytes": 0,
                     "ratio_to_single": 1.0})
    df = pd.DataFrame(rows)
    out = decide_peers(df, {}, microbatches=4, min_slower=1.5, min_not_faster=0.8)
    assert out["ratios"]["pp@2"][0] == pytest.approx(2.0) and out["ratios"]["tp-colwise@3"][0] == pytest.approx(2.0)
    assert out["tp_best"] == {2: "tp-megatron", 3: "tp-megatron"}
    assert out["checks"] == {"pipeline slower": True, "same-plan TP slower": True, "best TP not faster": True}
    assert out["verdict"] == "supported"
    # the best TP plan 0.9x the engine: passes "not faster by more than 1/0.8", fails at 0.95
    assert decide_peers(df, {}, microbatches=4, min_slower=1.5, min_not_faster=0.95)["verdict"] == "not supported"
    assert decide_peers(df, {}, microbatches=4, min_slower=2.5, min_not_faster=0.8)["verdict"] == "not supported"
