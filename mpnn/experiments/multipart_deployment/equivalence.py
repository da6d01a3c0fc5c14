"""The single-process reference and the check that every split computes what it computes, with the bytes each split sends."""
from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F

from mpnn.deploy.cost import critical_fraction, neuron_wise_forward_bytes, volume
from mpnn.deploy.engine import assemble, init_params, reference_model
from mpnn.deploy.launch import launch
from mpnn.deploy.plan import Plan
from mpnn.deploy.rank_work import batch, make_data
from mpnn.infra import train

from .plans import plans_for


def _linears(net: torch.nn.Sequential) -> list[torch.nn.Linear]:
    return [m for m in net if isinstance(m, torch.nn.Linear)]


def batches_in_fit_order(x, y, steps: int, batch_size: int, seed: int):
    """The workers' batches of steps ``0..steps-1`` (:func:`mpnn.deploy.rank_work.batch`), laid out so
    that one epoch of ``train.fit(batch_size=len(batch), seed=seed)`` visits them in step order.

    With ``perm`` the permutation ``fit`` draws for that epoch, row ``perm[i]`` of the result holds
    row ``i`` of the concatenated batches, so fit's batch ``b`` = rows ``perm[bB:(b+1)B]`` = batch
    ``b``, row for row. Returns ``(x, y, rows per batch)``.
    """
    xb, yb = zip(*(batch(x, y, step, batch_size, seed) for step in range(steps)))
    xs, ys = torch.cat(xb), torch.cat(yb)
    perm = next(train.permutations(len(xs), seed, 1))
    x_fit, y_fit = torch.empty_like(xs), torch.empty_like(ys)
    x_fit[perm], y_fit[perm] = xs, ys
    return x_fit, y_fit, len(xb[0])


def reference(sizes, seed, data, batch_size, lr, steps, dtype=torch.float64):
    """Single process (``nn.Sequential`` + ``torch.optim.SGD``): logits and grads of step 0 and the
    parameters after ``steps`` SGD steps (:func:`mpnn.infra.train.fit`), on the same batches as the workers."""
    x, y = make_data(data, sizes[0], sizes[-1])
    net = reference_model(init_params(sizes, seed, dtype))
    xb, yb = batch(x, y, 0, batch_size, seed)
    logits = net(xb.to(dtype))
    F.cross_entropy(logits, yb).backward()
    grads = [(m.weight.grad.clone(), m.bias.grad.clone()) for m in _linears(net)]
    x_fit, y_fit, rows = batches_in_fit_order(x, y, steps, batch_size, seed)
    train.fit(net, lambda b, step: F.cross_entropy(net(b[0].to(dtype)), b[1]), (x_fit, y_fit),
              torch.optim.SGD(net.parameters(), lr=lr), epochs=1, batch_size=rows, seed=seed)
    return logits.detach(), grads, [(m.weight.detach(), m.bias.detach()) for m in _linears(net)]


def max_difference(a, b) -> float:
    """``max |a - b|`` over every weight and bias of two ``[(W_l, b_l)]`` lists (NaN if a row is missing)."""
    diffs = [(u - v).abs().max() for (wa, ba), (wb, bb) in zip(a, b) for u, v in ((wa, wb), (ba, bb))]
    return float(torch.stack(diffs).max()) if not any(d.isnan() for d in diffs) else float("nan")


def _equivalence_rows(plans, results, P, reference_out, batch_size, k_steps) -> list[dict]:
    logits, grads, final = reference_out
    rows = []
    for i, plan in enumerate(plans):
        per = [r["plans"][i] for r in results]
        rows.append({"strategy": plan.strategy, "ranks": P,
                     "logits": float((per[plan.head]["logits"] - logits).abs().max()),
                     "gradients": max_difference(assemble(plan, [p["grads"] for p in per]), grads),
                     f"params after {k_steps} steps": max_difference(assemble(plan, [p["final"] for p in per]), final),
                     "bytes match model": [p["stats"]["bytes_sent"]["forward"] for p in per]
                     == volume(plan, batch_size, 8)["fwd_bytes"]})
    return rows


def _summarise_launch(plan: Plan, per_rank: list[dict], batch_size: int) -> list[dict]:
    """Per timed step: latency (max end - min start over ranks), forward latency, bytes, messages."""
    rows = []
    n = len(per_rank[0]["rows"])
    vol = volume(plan, batch_size, 4)
    for i in range(n):
        steps = [pr["rows"][i] for pr in per_rank]
        t0 = min(s["t0"] for s in steps)
        head = steps[plan.head]
        wire = [s["wire_bytes"] for s in steps]
        rows.append({
            "step_s": max(s["t1"] for s in steps) - t0,
            "forward_s": head["t_fwd"] - t0,
            "comm_s": max(s["comm_s"]["forward"] + s["comm_s"]["backward"] for s in steps),
            "bytes": sum(s["bytes_sent"]["forward"] + s["bytes_sent"]["backward"] for s in steps),
            "bytes_max_rank": max(s["bytes_sent"]["forward"] + s["bytes_sent"]["backward"] for s in steps),
            "messages_max_rank": max(s["messages"]["forward"] + s["messages"]["backward"] for s in steps),
            "model_bytes": sum(vol["fwd_bytes"]) + sum(vol["bwd_bytes"]),
            "wire_bytes": None if None in wire else sum(wire),
        })
    return rows


def equivalence_and_traffic(sizes, world_sizes, strategies, seed, *, data, batch_size, lr, k_steps,
                            timeout_s=300.0, backend="gloo") -> tuple[pd.DataFrame, pd.DataFrame]:
    """One group of ``max(world_sizes)`` ranks (a plan on ``P`` ranks uses ranks ``0..P-1``) runs

    1. the equivalence job (float64): max ``|distributed - single process|`` of the logits, the
       gradients and the parameters after ``k_steps`` SGD steps, per (strategy, P);
    2. one float32 training step per plan: bytes and messages the engine sent (total, busiest rank),
       the volume model's bytes, and the socket bytes (``/proc/self/io``), per (strategy, P).

    Nothing here is timed (see :func:`step_times`).
    """
    plans = plans_for(sizes, world_sizes, strategies)
    world = max(world_sizes)
    ref = reference(sizes, seed, data, batch_size, lr, k_steps)
    job = {"kind": "multi", "plans": [p.to_dict() for p in plans], "data": data, "batch": batch_size,
           "lr": lr, "backend": backend, "jobs": [
               {"kind": "equivalence", "seed": seed, "k_steps": k_steps, "dtype": "float64"},
               {"kind": "interleaved", "seed": seed, "warmup": 0, "repeats": 1, "dtype": "float32"}]}
    res = launch(job, world, timeout_s=timeout_s)
    eq_rows, traffic = [], []
    for i, plan in enumerate(plans):
        P = plan.world_size
        eq_part = [{"plans": [r["parts"][0]["plans"][i]]} for r in res.results[:P]]
        eq_rows += _equivalence_rows([plan], eq_part, P, ref, batch_size, k_steps)
        steps = [r["parts"][1]["rows"][i] for r in res.results[:P]]
        row = _summarise_launch(plan, [{"rows": s} for s in steps], batch_size)[0]
        traffic.append({"strategy": plan.strategy, "ranks": P, "f_crit": critical_fraction(plan),
                        **{k: v for k, v in row.items() if not k.endswith("_s")}})
    return pd.DataFrame(eq_rows), pd.DataFrame(traffic)


def wire_ratio(traffic: pd.DataFrame) -> pd.Series | None:
    """Socket bytes / engine payload per (strategy, P); None where ``/proc/self/io`` is unavailable."""
    wire = traffic.dropna(subset=["wire_bytes"])
    return wire.wire_bytes / wire.bytes if len(wire) else None


def traffic_summary(traffic: pd.DataFrame, sizes, batch_size: int) -> dict:
    """Bytes per step of the count and layer splits by P, and whether they match the volume model
    and, for count, its closed form ``2 B s [(P-1) sum_{l<L} n_l + n_L - |S_L(0)|]``."""
    count = traffic[traffic.strategy == "count"].set_index("ranks").bytes
    layer = traffic[traffic.strategy == "layer"].set_index("ranks").bytes
    closed = {P: 2 * neuron_wise_forward_bytes(sizes, P, batch_size, 4) for P in count.index}
    return {"count": count, "layer": layer, "payload_matches_model": bool((traffic.bytes == traffic.model_bytes).all()),
            "count_matches_closed_form": all(count[P] == closed[P] for P in count.index)}
