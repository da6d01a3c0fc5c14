"""mpnn.experiments.multipart_deployment: one group for every P, interleaved timing, the decisions,
the chapter's tables (the mechanisms: tests/test_deploy.py)."""
import pandas as pd
import pytest

from mpnn.deploy import PlanError, STRATEGIES, by_ids, cost, make_plan
from mpnn.experiments import multipart_deployment as E

SIZES = [12, 10, 7, 4]      # input 12, hidden 10 and 7, output 4
SEED, LR, BATCH, K = 3, 0.2, 16, 3
DATA = {"kind": "synthetic", "n": 64, "seed": 5}


# ---------------------------------------------------------------------- one group for every P, interleaved timing

def test_one_group_checks_every_rank_count_and_counts_traffic():
    eq, traffic = E.equivalence_and_traffic(SIZES, [2, 3], list(STRATEGIES), SEED, data=DATA,
                                                      batch_size=BATCH, lr=LR, k_steps=K, timeout_s=90)
    assert len(eq) == len(traffic) == 8                              # 4 strategies x P in {2, 3}
    assert eq[["logits", "gradients", f"params after {K} steps"]].to_numpy().max() < 1e-12
    assert eq["bytes match model"].all()
    for row in traffic.itertuples():                                 # float32 step: 4 bytes a number
        v = cost.volume(make_plan(row.strategy, SIZES, row.ranks), BATCH, 4)
        assert row.bytes == row.model_bytes == sum(v["fwd_bytes"]) + sum(v["bwd_bytes"])
        assert row.messages_max_rank == max(f + b for f, b in zip(v["fwd_msgs"], v["bwd_msgs"]))


def test_step_times_rows_and_rounds():
    df = E.step_times(SIZES, [2, 3], ["count", "layer"], data=DATA, batch_size=BATCH, lr=LR,
                                warmup=1, repeats=3, timeout_s=90)
    split = df[df.strategy != "single process"]
    assert sorted(set(zip(split.strategy, split.ranks))) == [("count", 2), ("count", 3), ("layer", 2), ("layer", 3)]
    assert (df.groupby(["strategy", "ranks"])["round"].apply(sorted) .apply(lambda r: r == [0, 1, 2])).all()
    assert (df.step_s > 0).all()
    # ratio_to_single divides by the single-process step of the same round
    single = df[df.strategy == "single process"].set_index("round").step_s
    assert (split.ratio_to_single == split.step_s / split["round"].map(single)).all()
    assert (split.bytes == split.model_bytes).all()


def _fake_times(rows):
    return pd.DataFrame([{"strategy": s, "ranks": P, "round": r, "step_s": t, "comm_s": c, "f_crit": f,
                          "messages_max_rank": m, "bytes_max_rank": b} for s, P, r, t, c, f, m, b in rows])


def test_decide_fewer_messages_uses_per_round_ratios():
    # P=2: per-round count/layer ratios 3, 1, 2 -> median 2 (the ratio of medians would be 4/2 = 2 too);
    # P=3: ratios 1.1, 1.2, 5 -> median 1.2, below a 1.25 margin
    rows = []
    for r, (c, l) in enumerate([(3.0, 1.0), (4.0, 4.0), (8.0, 4.0)]):
        rows += [("count", 2, r, c, 0, 0.5, 7, 10), ("layer", 2, r, l, 0, 1.0, 2, 10)]
    for r, (c, l) in enumerate([(1.1, 1.0), (1.2, 1.0), (5.0, 1.0)]):
        rows += [("count", 3, r, c, 0, 0.3, 14, 10), ("layer", 3, r, l, 0, 1.0, 2, 10)]
    res = E.decide_fewer_messages(_fake_times(rows), 1.25)
    assert res["ratio_median"] == pytest.approx({2: 2.0, 3: 1.2})
    assert res["verdict"] == "inconclusive"            # P=3 above 1 but below the margin
    assert E.decide_fewer_messages(_fake_times([x for x in rows if x[1] == 2]), 1.25)["verdict"] == "supported"
    assert E.decide_fewer_messages(_fake_times(rows), 2.5)["verdict"] == "inconclusive"


def test_decide_overhead_and_latency_model_on_known_times():
    t1, alpha = 1e-3, 2e-4                   # single step 1 ms, 0.2 ms per message, bandwidth irrelevant
    rows = []
    for r in range(3):
        rows.append(("single process", 1, r, t1, 0.0, 1.0, 0, 0))
        for s, P, f, m in [("count", 2, 0.5, 7), ("layer", 2, 1.0, 2), ("count", 3, 0.34, 14)]:
            rows.append((s, P, r, 1.5 * t1 * f + alpha * m, alpha * m, f, m, 1000))
    df = _fake_times(rows)
    df["single_s"] = t1
    df["ratio_to_single"] = df.step_s / t1
    over = E.decide_overhead(df, 1.5)
    lowest = min(r["median"] for r in over["ratios"])
    assert lowest == pytest.approx(1.5 + 0.4) and over["verdict"] == "supported"   # layer, P=2: 1.9x
    assert E.decide_overhead(df, 2.0)["verdict"] == "inconclusive"
    lat = E.decide_latency_model(df, 0.35)
    assert lat["c"] == pytest.approx(1.5, rel=1e-6) and lat["alpha_s"] == pytest.approx(alpha, rel=1e-6)
    assert lat["median_rel_err"] < 1e-9 and lat["verdict"] == "supported"


# ---------------------------------------------------------------------- the chapter's tables (no processes)

def test_fit_visits_the_workers_batches_in_step_order():
    import torch
    from mpnn.infra import train
    from mpnn.deploy.rank_work import batch, make_data
    x, y = make_data(DATA, SIZES[0], SIZES[-1])
    x_fit, y_fit, rows = E.batches_in_fit_order(x, y, 5, BATCH, SEED)
    seen = []
    model = torch.nn.Linear(1, 1)
    train.fit(model, lambda b, step: seen.append(b) or model.weight.sum() * 0, (x_fit, y_fit),
              torch.optim.SGD(model.parameters(), lr=0.0), epochs=1, batch_size=rows, seed=SEED)
    assert rows == BATCH and len(seen) == 5
    for step, (xb, yb) in enumerate(seen):
        want_x, want_y = batch(x, y, step, BATCH, SEED)
        assert torch.equal(xb, want_x) and torch.equal(yb, want_y)


def test_metadata_lines_and_invalid_plan_table_by_hand():
    p = by_ids([3, 4, 2], {0: [0, 2, 4], 1: [1, 3, 5]})   # global IDs: layer 1 = 0..3, layer 2 = 4..5
    assert E.metadata_lines(p, 1) == ["  layer 1: local 1, 3 | reads from rank 0: 0, 2 | sends to ranks [0]",
                                      "  layer 2: local 5 | sends to ranks [0]"]
    from mpnn.experiments.multipart_deployment.plans import _short_ranges
    assert _short_ranges([[0, 3], [5, 6], [8, 10], [11, 12], [20, 22]]) == "0-2, 5, 8-9, 11, ... (9 neurons)"
    table = E.try_plans({"twice": lambda: by_ids([3, 2, 2], {0: [0, 1, 2], 1: [2, 3]}),
                         "fine": lambda: by_ids([3, 2, 2], {0: [0, 1], 1: [2, 3]})})
    assert "owned twice" in table.error[0] and table.error[1] == "ACCEPTED (bug)"


def test_volume_table_and_rank_traffic_follow_the_volume_model():
    table = E.volume_table(SIZES, list(STRATEGIES), BATCH, P_max=4)
    assert list(zip(table.strategy, table.ranks))[:3] == [("count", 2), ("count", 3), ("count", 4)]
    assert set(table[table.strategy == "layer"].ranks) == {2, 3}           # 3 layers: at most 3 ranks
    count3 = table[(table.strategy == "count") & (table.ranks == 3)]["kB per step"].item()
    assert count3 == pytest.approx(2 * cost.neuron_wise_forward_bytes(SIZES, 3, BATCH, 4) / 1e3)
    per_rank = E.rank_traffic("layer", 3, sizes=SIZES, batch_size=BATCH).data
    # layer-wise on 3 ranks: rank 0 sends h_1 (10 wide), rank 1 h_2 (7), rank 2 the logits (4) to the head
    assert per_rank["kB sent forward"].tolist() == pytest.approx([BATCH * 4 * n / 1e3 for n in (10, 7, 4)])
    assert per_rank["parameters"].tolist() == [10 * 13, 7 * 11, 4 * 8]
    with pytest.raises(ValueError, match="at most 3 ranks"):              # PlanError is a ValueError
        E.rank_traffic("layer", 4, sizes=SIZES, batch_size=BATCH)
    assert issubclass(PlanError, ValueError)


def test_traffic_summary_and_wire_ratio():
    rows = [("count", P, 2 * cost.neuron_wise_forward_bytes(SIZES, P, BATCH, 4), w) for P, w in ((2, 1.1), (3, None))]
    rows.append(("layer", 2, 100, None))
    traffic = pd.DataFrame([{"strategy": s, "ranks": P, "bytes": b, "model_bytes": b, "wire_bytes": None if w is None else w * b}
                            for s, P, b, w in rows])
    summary = E.traffic_summary(traffic, SIZES, BATCH)
    assert summary["payload_matches_model"] and summary["count_matches_closed_form"]
    assert summary["layer"].to_dict() == {2: 100}
    assert E.wire_ratio(traffic).tolist() == pytest.approx([1.1])
    assert E.wire_ratio(traffic.assign(wire_bytes=None)) is None


# ---------------------------------------------------------------------- PyTorch's engines (issue 15)

def test_projection_with_the_faster_engines_bytes_and_the_peers_table():
    med = []
    for name, ms, kb in (("engine-count", 10, 100), ("tp-colwise", 20, 150), ("tp-megatron", 8, 80),
                         ("engine-layer", 5, 40), ("pp", 9, 40), ("pp-m1", 6, 30), ("single", 1, 0)):
        med.append({"configuration": name, "ranks": 1 if name == "single" else 4, "step_s": ms / 1e3, "q25": ms / 1e3,
                    "q75": ms / 1e3, "wire_bytes": kb * 1e3, "ratio_to_single": ms,
                    "split": E.PEERS[name][0] if name in E.PEERS else "single process", "transfers per step": "-"})
    proj = E.projection(1024, 8, 64)
    out = E.better_engine_projection({"medians": med}, proj).set_index("split")
    at = proj["at_need"]
    # neuron-wise: the col/row pairs were faster and sent 0.8x the bytes: the comm term scales by 0.8
    assert out.loc["neuron-wise", "its socket bytes / book engine's"] == pytest.approx(0.8)
    comm = at["neuron_comm_s"][0]
    assert out.loc["neuron-wise", "projected s per step (faster engine's bytes)"] == pytest.approx(
        at["neuron_wise_s"][0] - comm + 0.8 * comm)
    # layer: the book's engine was faster: the projection is the model's, unchanged
    assert out.loc["layer", "its socket bytes / book engine's"] == 1.0
    assert out.loc["layer", "projected s per step (faster engine's bytes)"] == pytest.approx(at["layer_wise_s"][0])
    eq = pd.DataFrame([{"configuration": c, "split": E.PEERS[c][0], "ranks": 4, "logits": 1e-17, "gradients": 2e-17,
                        "params": 3e-17} for c in E.PEERS])
    table = E.peers_table({"medians": med}, eq)
    assert len(table) == 6 and (table["max |diff| to one process"] == 3e-17).all()
    row = table.set_index("engine").loc[E.PEERS["tp-megatron"][2]]
    assert row["x book engine"] == pytest.approx(0.8) and row["socket kB per step"] == pytest.approx(80)


def test_traffic_grid_holds_every_plan_of_the_explorer():
    from mpnn.experiments import multipart_deployment as E
    sizes = [20, 12, 8, 4]
    grid = E.traffic_grid(sizes, ["count", "layer"], batch_size=5, P_max=4)
    for (strategy, P), part in grid.groupby(["strategy", "ranks"]):
        t = E.rank_traffic(strategy, P, sizes=sizes, batch_size=5).data
        fwd = part[part["direction"] == "forward"].sort_values("rank")["kB sent"].to_numpy()
        assert fwd.tolist() == pytest.approx(t["kB sent forward"].tolist())
    assert sorted(grid[grid["strategy"] == "layer"]["ranks"].unique()) == [2, 3]   # 3 layers: at most 3 ranks
    assert sorted(grid[grid["strategy"] == "count"]["ranks"].unique()) == [2, 3, 4]
    chart = E.figure_traffic_site(grid).to_dict()
    assert {p["name"] for p in chart["params"]} == {"p_strategy", "p_ranks"}


# ---------------------------------------------------------------------- the document's promises

def _overhead(rows):
    return {"ratios": [{"strategy": s, "ranks": P, "median": m, "q25": m * 0.9, "q75": m * 1.1} for s, P, m in rows],
            "comm_share": 0.8}


def test_decide_remote_invocation_has_an_accuracy_and_an_overhead_part():
    slow = _overhead([("count", 2, 4.0), ("layer", 2, 2.3)])
    fast = _overhead([("count", 2, 1.2), ("layer", 2, 1.4)])
    assert E.decide_remote_invocation(1e-17, slow)["verdict"] == "mixed"         # exact, but 2.3x > 1.5x
    assert E.decide_remote_invocation(1e-17, fast)["verdict"] == "supported"
    assert E.decide_remote_invocation(1e-3, slow)["verdict"] == "not supported"
    assert "layer, P=2" in E.decide_remote_invocation(1e-17, slow)["measured"]


def test_decide_scalability_memory_from_plans_and_time_from_the_smallest_split():
    sizes = [784, 256, 256, 128, 10]
    plans = E.plans_for(sizes, [2, 3, 4], ["count"])
    res = E.decide_scalability(plans, _overhead([("count", 2, 5.0), ("count", 4, 9.0)]))
    assert res["memory"] == "supported" and res["time"] == "not supported" and res["verdict"] == "mixed"
    assert res["P0"] == 2 and max(res["excess"].values()) < 1.1
    assert E.decide_scalability(plans, _overhead([("count", 2, 0.6)]))["verdict"] == "supported"
    assert E.decide_scalability(plans, _overhead([("count", 2, 1.2)]))["time"] == "inconclusive"


def test_findings_and_peers_paragraphs_are_written_from_the_results():
    from mpnn.deploy.cost import Hardware
    ratios = {f"{n}@{P}": (v, v * 0.8, v * 1.2) for P in (2, 3)
              for n, v in (("pp", 2.0), ("pp-m1", 0.9), ("tp-colwise", 2.5), ("tp-megatron", 0.9 if P == 3 else 1.6))}
    t_peers = {"ratios": ratios, "rounds": 5, "tp_best": {2: "tp-megatron", 3: "tp-megatron"},
               "pooled": {"pp": (2.0, 1.5, 2.5), "pp-m1": (0.9, 0.8, 1.0), "tp-colwise": (2.5, 2, 3),
                          "tp-megatron": (1.3, 1, 1.6)}}
    over = _overhead([("count", 2, 5.0), ("layer", 2, 2.5), ("count", 3, 9.0)]) | {"rounds": 5}
    sync = {"bandwidth_ratio": 3.0, "table": [{"rate_mbps": r, "k": k, "share": sh} for r, k, sh in
                                              [(100, 1, .7), (100, 4, .3), (1000, 1, .5), (1000, 4, .2),
                                               (100, 0, 0), (1000, 0, 0)]]}
    net = {"skipped": None, "network": {"min_ratio": 4.0, "median_rel_err": .1, "kappa": 1.0, "gamma": .9},
           "latency": {"shares": [{"share": .6}, {"share": .8}]}, "sync": sync}
    sim = pd.DataFrame({"servers": [2, 128], "coordination_s": [4e-3, 5e-2], "coordination_share": [.1, .03]})
    kw = dict(k_steps=5, eq_max=1e-17, t_over=over,
              t_lat={"alpha_s": 1e-3, "median_rel_err": .1, "points": [{"rel_err": .1}, {"rel_err": .2}]},
              t_fewer={"ratio_median": {2: 2.4, 3: 3.1}},
              traffic_ok={"count": pd.Series({2: 330e3, 3: 658e3}), "layer": pd.Series({2: 136e3})},
              proj=E.projection(12288, 1160, 2048, Hardware()), fault={"resume_step": 3, "max_diff_final": 1e-17},
              stop_after=0.5, net=net, meta_d={"slope_total": 1.9},
              coord={"median_s": {2: 4e-3, 8: 1.3e-2}, "ratio": 3.2}, sim=sim, sim_at=128, t_peers=t_peers,
              elastic={"resumed_at": [3], "max_diff": 1e-17, "wall_s": 35.0, "leftover": [], "listening": ["127.0.0.1"]},
              listen={"addresses": ["127.0.0.1"]}, world_sizes=[2, 3])
    md = E.findings(**kw, scalability=E.decide_scalability(E.plans_for([784, 256, 256, 128, 10], [2, 3], ["count"]), over))
    assert "from 2.5x (layer, P = 2) to 9.0x (count, P = 3)" in md and "falls with the interval" in md
    assert "memory yes, time no" in md and "on P = 2 took 5.0x" in md
    assert "though at P = 3 PyTorch was the faster one" in md and "no processes left behind" in md
    skipped = E.findings(**(kw | {"net": E.network_skipped("needs root: test")}))
    assert "not run** (needs root: test)" in skipped
    table = pd.DataFrame({"engine": [E.PEERS[c][2] for c in ("engine-count", "tp-colwise", "tp-megatron")] * 2,
                          "ranks": [2, 2, 2, 3, 3, 3], "socket kB per step": [100, 150, 80, 200, 300, 170],
                          "x one process": [3.0, 6.0, 4.0, 5.0, 9.0, 4.5]})
    peers = E.peers_findings(t_peers, table, 4)
    assert "1.50x to 1.50x its socket bytes" in peers and "no engine brings a split below one process" in peers


def test_claims_are_run_claim_arguments_lazy_where_the_numbers_need_the_default_profile():
    import inspect

    from mpnn.runtime.repro import Run
    accepted = set(inspect.signature(Run.claim).parameters) - {"self"}
    skipped = E.network_skipped("needs root: test")
    ran = {"skipped": None, "network": {"measured": "m", "verdict": "supported"}}
    for net, note in ((skipped, "needs root: test"), (ran, "ranks in network namespaces")):
        c = E.claim_network_conditions(net, max_error=0.5, min_ratio=1.5)
        assert set(c) <= accepted and c["id"] == "network-conditions" and c["timing"]
        assert c["note"].startswith(note) and "below 50%" in c["criterion"] and "1.5x slower" in c["criterion"]
    assert E.claim_sync_overhead(skipped, sync_every=[1, 4, 0], min_frequency_ratio=1.4,
                                 min_bandwidth_ratio=1.5)["note"] == "needs root: test"
    # the overhead of remote invocation is read from step times only the default profile measures
    remote = E.claim_remote_invocation(1e-17, {}, k_steps=5, min_ratio=1.5)
    assert callable(remote["measured"]) and callable(remote["verdict"]) and remote["needs"] == "default"
    over = _overhead([("count", 2, 4.0), ("layer", 2, 2.3)])
    assert E.claim_remote_invocation(1e-17, over, k_steps=5, min_ratio=1.5)["verdict"]() == "mixed"
    traffic = {"count": pd.Series({2: 330e3, 3: 658e3}), "layer": pd.Series({2: 136e3})}
    grows = E.claim_neuron_wise_traffic_grows(traffic)
    assert grows["verdict"] is True and grows["measured"].endswith("layer: P=2: 136 kB")
