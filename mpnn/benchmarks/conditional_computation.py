"""MoE forward+backward: vectorised dispatch vs a loop over experts vs a dense layer of equal active FLOPs.

All variants do the same useful work per token (k experts of ``d -> h -> d``, or one dense MLP
``d -> k*h -> d``), so ``ratio_to_moe-vectorised`` of ``dense-equal-active`` is the dense layer's time
per active FLOP relative to the MoE's (the aim is that the MoE is within 1.15x of it:
``dense ratio >= 1/1.15 = 0.87``). The vectorised dispatch routes, plans and sorts the kept
assignments by expert in compiled passes and runs the experts on their own rows
(:mod:`mpnn.moe.fused`: no padding to the largest expert load) where that measures faster than torch's
own paths on this machine (:func:`mpnn.moe.dispatch.token_choice_path`); ``moe-torch-grouped`` and
``moe-torch-loop`` force torch's paths, and ``moe-vectorised`` is held against the fastest torch-only
variant (``book_vs_torch``). ``dense-same-kernel`` (one expert of width ``k*h`` on the book's GEMM)
sets the cost of routing and dispatch alone apart.

FLOPs (the ``flops`` extra, one call): forward ``T * k * 2 * 2 d h`` (two matmuls of ``d x h``, a
multiply-add counted as 2), backward twice that (input and weight gradients), so
``3 * 2 * T * k * 2 d h`` for every variant of ``moe/forward-backward`` (the capacity variant's
dropped assignments and the gate's ``d x E`` scores are not counted: same useful work as the dense
layer). ``moe/replicas-training-step`` counts, per replica and token, the k experts'
``2 (d h + h * 10)`` plus the gate's ``2 d E`` (none for dense), times 3 for the backward; the Adam
update is not counted.
"""
from __future__ import annotations

import torch

from mpnn import moe
from mpnn.infra import native
from mpnn.experiments import conditional_computation as cc
from mpnn.moe import fused
from mpnn.runtime.bench import case


def _loop_over_experts(layer: moe.TokenChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """The naive implementation: same routing, then one masked gather/matmul/scatter per expert."""
    r = layer.gate(x)
    y = x.new_zeros(x.shape[0], layer.experts.d_out)
    for e in range(layer.experts.n_experts):
        token, rank = (r.experts == e).nonzero(as_tuple=True)
        if token.numel():
            out = layer.experts.forward_one(e, x[token]) * r.weights[token, rank].unsqueeze(-1)
            y = y.index_add(0, token, out)
    return y


@case("moe/forward-backward", group="conditional_computation",
      params={"k": [1, 2], "n_experts": [8, 32]})
def forward_backward(k, n_experts, quick):
    tokens, d, h = (512, 64, 64) if quick else (8192, 256, 512)
    torch.manual_seed(0)
    x = torch.randn(tokens, d)
    layer = moe.TokenChoiceMoE(moe.TopKGate(d, n_experts, k=k), moe.Experts(n_experts, d, h, d))
    layer_cf = moe.TokenChoiceMoE(layer.gate, layer.experts, capacity_factor=1.0)
    dense = torch.nn.Sequential(torch.nn.Linear(d, k * h), torch.nn.ReLU(), torch.nn.Linear(k * h, d))

    def step(fn):
        def run():
            fn().square().mean().backward()
        return run

    active = 2 * tokens * k * (2 * d * h)
    def forced(path, fn):
        def run():
            with native.forced("moe.token_choice", path):
                fn()
        return run

    variants = {
        "moe-vectorised": step(lambda: layer(x)[0]),
        "moe-capacity-1.0": step(lambda: layer_cf(x)[0]),
        "moe-torch-grouped": forced("torch-grouped", step(lambda: layer(x)[0])),
        "moe-torch-loop": forced("torch-loop", step(lambda: layer(x)[0])),
        "moe-loop-over-experts": step(lambda: _loop_over_experts(layer, x)),
        "dense-equal-active": step(lambda: dense(x)),
    }
    if fused.usable(x):
        # the same dense MLP on the MoE's own GEMM kernel: one expert of width k*h that every token uses
        one = moe.Experts(1, d, k * h, d)
        plan = fused.plan(torch.zeros(tokens, 1, dtype=torch.long), 1, 1, None)
        ones = torch.ones(tokens, 1)
        variants["dense-same-kernel"] = step(lambda: fused.sorted_expert_mlp(x, ones, plan, one.w1, one.b1,
                                                                             one.w2, one.b2))
    load = torch.bincount(layer.gate(x).experts.flatten(), minlength=n_experts)
    return variants, {"tokens": tokens, "d": d, "hidden": h, "active_gflop_fwd": active / 1e9,
                      "max_load_over_mean": float(load.max() / load.float().mean()),
                      "flops": {v: 3 * active for v in variants},
                      "book_vs_torch": {"book": "moe-vectorised",
                                        "torch": ["moe-torch-grouped", "moe-torch-loop", "moe-loop-over-experts"]}}


@case("moe/replicas-training-step", group="conditional_computation",
      params={"kind": ["dense", "switch", "top2"], "replicas": [4, 16]})
def replicas_training_step(kind, replicas, quick):
    """One Adam step of R independent models: one StackedMoE pass vs a loop over the R models."""
    tokens, d, h = (64, 196, 16) if quick else (128, 784, 32)
    torch.manual_seed(0)
    models = [moe.make_moe(kind, d, h, 10, 8, alpha=0.1) for _ in range(replicas)]
    x, y = torch.randn(replicas, tokens, d), torch.randint(0, 10, (replicas, tokens))
    stacked = moe.StackedMoE(models)
    opt_stacked = cc.adam(stacked.parameters(), 1e-3)
    opts = [cc.adam(m.parameters(), 1e-3) for m in models]

    def one_pass():
        logits, routed = stacked(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), y.reshape(-1), reduction="none")
        opt_stacked.zero_grad()
        (loss.view(replicas, -1).mean(1) + routed.aux_loss).sum().backward()
        opt_stacked.step()

    def loop():
        for r, (m, opt) in enumerate(zip(models, opts)):
            logits, routed = m(x[r])
            opt.zero_grad()
            (torch.nn.functional.cross_entropy(logits, y[r]) + routed.aux_loss).backward()
            opt.step()

    k = {"dense": 1, "switch": 1, "top2": 2}[kind]
    per_token = k * 2 * (d * h + h * 10) + (0 if kind == "dense" else 2 * d * 8)
    flops = 3 * replicas * tokens * per_token
    return ({"stacked": one_pass, "loop": loop},
            {"tokens": tokens, "d": d, "hidden": h, "flops": {"stacked": flops, "loop": flops}})
