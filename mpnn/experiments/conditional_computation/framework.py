"""The framework in code: one learned mask per router, Gumbel-softmax sampling, straight-through top-k."""
from __future__ import annotations

import pandas as pd
import torch

from mpnn import moe
from mpnn.switch import LearnedSwitch, topk_mask

from .training import CLASSES


def framework_check(x: torch.Tensor, *, n_experts: int, hidden: int) -> dict:
    """Three checks of ``y = sum_i m_i(x) f_i(x)`` on tokens ``x`` (T, d) with a random top-2 MoE.

    ``same_selection``: the gate selects exactly the mask of a :class:`~mpnn.switch.LearnedSwitch`
    with its weights; ``framework_gap``: max ``|sparse dispatch - dense masked sum over all experts|``;
    ``straight_through``: the switch's forward value is the hard top-2 mask and its gradient is the
    softmax's. Draws the layer, then a probe vector, from torch's global generator.
    """
    t, d = x.shape
    layer = moe.make_moe("top2", d, hidden, CLASSES, n_experts, alpha=0.0, z_coef=0.0)
    switch = LearnedSwitch(d, n_experts, mode="topk", k=2)
    switch.load_state_dict(layer.gate.switch.state_dict())
    mask_switch = switch(x)                                        # hard forward value, ST gradient
    routing = layer.gate(x)
    y_sparse, _ = layer(x)                                         # sort-based dispatch, grouped matmuls
    all_experts = layer.experts(x.expand(n_experts, t, d))         # (E, T, 10): every expert
    y_dense = torch.einsum("te,etc->tc", routing.combine(), all_experts)   # sum_i m_i(x) f_i(x)
    v = torch.randn(n_experts)
    g_st = torch.autograd.grad((switch(x) * v).sum(), switch.gate.weight)[0]
    g_soft = torch.autograd.grad((switch.probs(x) * v).sum(), switch.gate.weight)[0]
    hard = torch.allclose(mask_switch.detach(), topk_mask(switch.scores(x).detach(), 2))
    return {"same_selection": torch.allclose(routing.mask(), mask_switch.detach()),
            "framework_gap": float((y_sparse - y_dense).abs().max().detach()),
            "straight_through": bool(torch.allclose(g_st, g_soft, atol=1e-6)) and bool(hard)}


def gumbel_max_check(x_one: torch.Tensor, *, n_experts: int, tau: float, draws: int, seed: int):
    """Gumbel top-1 selections of one input, ``draws`` times, against ``softmax(s)``.

    A peaked router (weights x20, drawn from torch's global generator) makes the test sharp; the
    draws use the gate's training-time ``noise="gumbel"`` path after seeding with ``seed``. Returns
    the largest deviation in standard errors, ``max_i |freq_i - p_i| / sqrt(p_i (1 - p_i) / draws)``,
    and the long table of both distributions.
    """
    gate = moe.TopKGate(x_one.shape[-1], n_experts, k=1, noise="gumbel", tau=tau)
    with torch.no_grad():
        gate.switch.gate.weight.mul_(20)
        s_one = gate.switch.scores(x_one)                          # (1, E)
    torch.manual_seed(seed)
    freq = gate.select(s_one.expand(draws, n_experts)).mean(0)     # (draws, E) one-hot -> frequencies
    p_soft = torch.softmax(s_one[0], -1).detach()
    se = torch.sqrt(p_soft * (1 - p_soft) / draws)
    z = float(((freq - p_soft).abs() / se.clamp_min(1e-12)).max())
    table = pd.DataFrame({"expert": list(range(n_experts)) * 2,
                          "probability": torch.cat([p_soft, freq]).tolist(),
                          "source": ["softmax(s)"] * n_experts + [f"Gumbel top-1, {draws} draws"] * n_experts})
    return z, table
