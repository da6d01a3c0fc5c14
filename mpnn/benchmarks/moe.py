"""MoE forward+backward: vectorised dispatch vs a loop over experts vs a dense layer of equal active FLOPs.

All variants do the same useful work per token (k experts of ``d -> h -> d``, or one dense MLP
``d -> k*h -> d``), so ``ratio_to_moe-vectorised`` of ``dense-equal-active`` is the dense layer's time
per active FLOP relative to the MoE's (the aim is that the MoE is within 1.5x of it:
``dense ratio >= 1/1.5 = 0.67``). Dropless buffers are padded to the largest expert load, so
``padding`` (slots computed / assignments) says how much of the MoE's matmul work was padding.
"""
from __future__ import annotations

import torch

from mpnn import moe
from mpnn.bench import case


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

    plan = moe.plan_dispatch(layer.gate(x).experts, n_experts, None)
    active = 2 * tokens * k * (2 * d * h)
    variants = {
        "moe-vectorised": step(lambda: layer(x)),
        "moe-capacity-1.0": step(lambda: layer_cf(x)),
        "moe-loop-over-experts": step(lambda: _loop_over_experts(layer, x)),
        "dense-equal-active": step(lambda: dense(x)),
    }
    return variants, {"tokens": tokens, "d": d, "hidden": h, "active_gflop_fwd": active / 1e9,
                      "padding": n_experts * plan.capacity / (k * tokens)}
