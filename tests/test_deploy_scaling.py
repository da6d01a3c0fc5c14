"""Metadata and coordination scaling (mpnn.deploy.scaling): counts against plain loops and closed forms."""
import math

import numpy as np
import pytest

from mpnn.deploy.plan import by_count, make_plan
from mpnn.deploy.scaling import (SimAssumptions, _entries, fit_log_linear, metadata_entries_naive,
                                 metadata_scaling, simulate)


def test_hand_computed_metadata_entries():
    # sizes [4, 2, 2], one neuron of each layer per rank, head 0:
    # rank 0: layer 1 local + send to 1 + read from 1; layer 2 local + read from 1        -> 5
    # rank 1: layer 1 local + send to 0 + read from 0; layer 2 local + send to the head   -> 5
    plan = by_count([4, 2, 2], [[1, 1], [1, 1]])
    assert metadata_entries_naive([o.tolist() for o in plan.owner]) == [5, 5]
    assert [_entries(plan.metadata(r)) for r in range(2)] == [5, 5]


@pytest.mark.parametrize("strategy", ["count", "percentage", "ids", "layer"])
@pytest.mark.parametrize("P", [2, 3, 4])
def test_entries_match_plain_loop(strategy, P):
    plan = make_plan(strategy, [12, 9, 7, 5, 3], P)
    naive = metadata_entries_naive([o.tolist() for o in plan.owner], plan.head)
    assert [_entries(plan.metadata(r)) for r in range(P)] == naive


def test_metadata_scaling_rows():
    sizes = [8, 16, 16, 4]
    rows = metadata_scaling(sizes, [2, 4, 8], strategies=("count",), repeats=1)
    for row in rows:
        plan = make_plan("count", sizes, row["servers"])
        entries = [_entries(plan.metadata(r)) for r in range(plan.world_size)]
        assert row["entries_total"] == sum(entries) and row["entries_max"] == max(entries)
        assert row["plan_bytes"] == len(plan.to_json())
    # even neuron-wise split, P <= every width: each server reads the P-1 others' slices of
    # every layer it consumes and sends to P-1 consumers of every hidden layer
    totals = [r["entries_total"] for r in rows]
    assert totals == sorted(totals) and totals[-1] > 3 * totals[-2] / 2


def test_simulate_constant_message_time_closed_form():
    s, L, payload, beta = 1e-4, 3, 8000.0, 1e6
    a = SimAssumptions(layers=L, payload_bytes=payload, beta_Bps=beta, compute_s=0.01, draws=4)
    for row in simulate([2, 3, 8, 9], [s], a):
        P = row["servers"]
        rounds = math.ceil(math.log2(P))
        assert row["barrier_s"] == pytest.approx(rounds * s)
        assert row["allreduce_s"] == pytest.approx(2 * rounds * s)
        assert row["exchange_s"] == pytest.approx(2 * L * (P - 1) * (s + payload / P / beta))
        assert row["step_s"] == pytest.approx(0.01 / P + row["exchange_s"] + 3 * rounds * s)


def test_fit_log_linear_recovers_line():
    P = np.array([2, 3, 4, 8, 16, 64])
    t = 0.5 + 0.25 * np.ceil(np.log2(P))
    a, b = fit_log_linear(P, t)
    assert a == pytest.approx(0.5) and b == pytest.approx(0.25)
