"""Network namespaces, tc shaping parameters, the file server, the across-conditions model, and
ranks started by mpnn.deploy.netns (namespace tests need root and skip with the reason otherwise)."""
import socket
import threading

import numpy as np
import pytest
import torch

from mpnn.deploy import netns
from mpnn.deploy.cost import exchange_rounds, fit_conditions
from mpnn.deploy.engine import init_params, reference_model
from mpnn.deploy.plan import make_plan

OK, WHY = netns.available()
needs_netns = pytest.mark.skipif(not OK, reason=WHY or "network namespaces unavailable")


def test_tbf_args():
    assert netns.tbf_args(100e6) == ["tbf", "rate", "100000000bit", "burst", "16384", "latency", "200ms"]
    assert netns.tbf_args(1e10)[4] == str(int(1e10 / 8 * 5e-4))      # 0.5 ms of traffic: 625000 bytes


def test_exchange_rounds_hand_counted():
    sizes = [784, 256, 256, 128, 10]
    # neuron-wise: every layer exchanges, forward and backward
    assert exchange_rounds(make_plan("count", sizes, 2)) == 8
    # layer-wise on 2 ranks: layers (1,2) | (3,4), head 0: layer 2 -> rank 1 and layer 4 -> head
    assert exchange_rounds(make_plan("layer", sizes, 2)) == 4
    assert exchange_rounds(make_plan("layer", sizes, 3)) == 6
    assert exchange_rounds(make_plan("count", sizes, 1)) == 0


def test_fit_conditions_recovers_coefficients():
    rng = np.random.default_rng(0)
    n = 24
    t1, f = rng.uniform(1e-3, 4e-3, n), rng.uniform(0.2, 1, n)
    msgs, nbytes = rng.integers(2, 30, n), rng.uniform(1e4, 3e5, n)
    rate = rng.choice([np.inf, 1e10, 1e9, 1e8], n)
    delay, rounds = rng.choice([5e-5, 1e-3, 1e-2], n), rng.choice([4, 6, 8], n)
    link = np.where(np.isfinite(rate), 8 * nbytes / rate, 0.0)
    t = 0.9 * t1 * f + 1.5e-3 * msgs + nbytes / 2e7 + 1.1 * link + 0.95 * delay * rounds
    fit = fit_conditions(t, t1, f, msgs, nbytes, rate, delay, rounds)
    assert fit.c == pytest.approx(0.9, rel=1e-6) and fit.alpha_s == pytest.approx(1.5e-3, rel=1e-6)
    assert fit.beta0_Bps == pytest.approx(2e7, rel=1e-6)
    assert fit.kappa == pytest.approx(1.1, rel=1e-6) and fit.gamma == pytest.approx(0.95, rel=1e-6)
    assert fit.rel_err.max() < 1e-9


def test_file_server_writes_what_it_receives(tmp_path):
    srv = netns._Server(("127.0.0.1", 0), netns._Handler)
    srv.root = str(tmp_path)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(srv.server_address) as s:
            payload = bytes(range(256)) * 1000
            netns.send_file(s, "rank0.pt", payload)
            netns.send_file(s, "../escape.pt", b"x")          # names cannot leave the store
        assert (tmp_path / "rank0.pt").read_bytes() == payload
        assert (tmp_path / "escape.pt").read_bytes() == b"x"
    finally:
        srv.shutdown()
        srv.server_close()


def test_network_conditions_grid():
    conds = netns_conditions = __import__("mpnn.experiments.multipart_deployment", fromlist=["x"]).network_conditions(
        [0, 1000, 100], [1.0, 10.0], 0.05, 1000)
    assert [(c["rate_bps"], c["delay_s"]) for c in netns_conditions] == [
        (None, 5e-5), (1e9, 5e-5), (1e8, 5e-5), (1e9, 1e-3), (1e9, 1e-2)]
    assert conds[0]["name"] == "unshaped veth, 0.05 ms" and conds[2]["link"] == "100 Mb/s"


def test_run_group_reports_a_rank_error():
    with pytest.raises(netns.NetnsError, match="unknown-kind|KeyError"):
        netns.run_group({"kind": "unknown-kind"}, 2, timeout_s=60)


@needs_netns
def test_namespaces_removed_on_exit_and_on_failure():
    with netns.Network(2, tag="t1") as net:
        names = set(net.created)
        assert names <= set(netns.list_namespaces()) and len(names) == 3
        netns.shape(net.rank_ns(0), 100e6)
        out = netns._tc("-n", net.rank_ns(0), "qdisc", "show", "dev", "eth0").stdout
        assert "tbf" in out and "100Mbit" in out
    assert not names & set(netns.list_namespaces())
    with pytest.raises(RuntimeError, match="boom"):
        with netns.Network(1, tag="t2") as net:
            names = set(net.created)
            raise RuntimeError("boom")
    assert not names & set(netns.list_namespaces())


@needs_netns
def test_cleanup_stale_removes_dead_runs_only():
    dead = f"{netns.PREFIX}-999999999-abcdef-stale-r0"
    netns._ip("netns", "add", dead)
    with netns.Network(1, tag="live") as net:      # entering sweeps the dead run's namespace
        assert dead not in netns.list_namespaces()
        netns._ip("netns", "add", dead)
        assert dead in netns.cleanup_stale()        # and so does an explicit sweep, sparing the live run
        assert set(net.created) <= set(netns.list_namespaces())
    assert dead not in netns.list_namespaces()


@needs_netns
def test_ranks_in_namespaces_match_one_process():
    sizes, seed = [20, 12, 8, 4], 3
    plan = make_plan("count", sizes, 2)
    data = {"kind": "synthetic", "n": 64, "seed": 1}
    job = {"kind": "equivalence", "plans": [plan.to_dict()], "seed": seed, "data": data, "batch": 16,
           "lr": 0.1, "k_steps": 0, "dtype": "float64"}
    with netns.Network(2, tag="eq") as net:
        res = netns.run_group(job, 2, net=net, timeout_s=120)
    from mpnn.deploy.rank_work import batch, make_data
    x, y = make_data(data, sizes[0], sizes[-1])
    xb, _ = batch(x, y, 0, 16, seed)
    ref = reference_model(init_params(sizes, seed, torch.float64))(xb.double())
    assert torch.allclose(res[0]["plans"][0]["logits"], ref.detach(), atol=1e-12)
