"""E expert MLPs with stacked weights, run as one batched matmul over per-expert buffers."""
from __future__ import annotations

import math

import torch
from torch import nn


class Experts(nn.Module):
    """E two-layer MLPs ``f_e(x) = relu(x W1_e + b1_e) W2_e + b2_e`` with stacked weights.

    ``forward`` takes one buffer per expert, (E, C, d_in) -> (E, C, d_out), as two batched matmuls.
    Initialised like :class:`torch.nn.Linear` (uniform in +-1/sqrt(fan_in)), independently per expert.
    """

    def __init__(self, n_experts: int, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        if min(n_experts, d_in, d_hidden, d_out) < 1:
            raise ValueError(f"Experts needs positive sizes, got n_experts={n_experts}, "
                             f"d_in={d_in}, d_hidden={d_hidden}, d_out={d_out}")
        b1, b2 = 1 / math.sqrt(d_in), 1 / math.sqrt(d_hidden)
        self.w1 = nn.Parameter(torch.empty(n_experts, d_in, d_hidden).uniform_(-b1, b1))
        self.b1 = nn.Parameter(torch.empty(n_experts, d_hidden).uniform_(-b1, b1))
        self.w2 = nn.Parameter(torch.empty(n_experts, d_hidden, d_out).uniform_(-b2, b2))
        self.b2 = nn.Parameter(torch.empty(n_experts, d_out).uniform_(-b2, b2))

    @property
    def n_experts(self) -> int:
        return self.w1.shape[0]

    @property
    def d_in(self) -> int:
        return self.w1.shape[1]

    @property
    def d_hidden(self) -> int:
        return self.w1.shape[2]

    @property
    def d_out(self) -> int:
        return self.w2.shape[2]

    def forward(self, buf: torch.Tensor) -> torch.Tensor:  # (E, C, d_in) -> (E, C, d_out)
        h = torch.baddbmm(self.b1.unsqueeze(1), buf, self.w1).relu()  # (E, C, d_hidden)
        return torch.baddbmm(self.b2.unsqueeze(1), h, self.w2)

    def forward_some(self, chosen: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
        """Only the experts ``chosen`` (n,), one buffer each: (n, C, d_in) -> (n, C, d_out)."""
        h = torch.baddbmm(self.b1.index_select(0, chosen).unsqueeze(1), buf, self.w1.index_select(0, chosen)).relu()
        return torch.baddbmm(self.b2.index_select(0, chosen).unsqueeze(1), h, self.w2.index_select(0, chosen))

    def forward_one(self, e: int, x: torch.Tensor) -> torch.Tensor:  # (n, d_in) -> (n, d_out)
        """Expert ``e`` alone (for references and the loop baseline)."""
        return (x @ self.w1[e] + self.b1[e]).relu() @ self.w2[e] + self.b2[e]

    def flops_per_token(self) -> int:
        """Multiply-adds x 2 of one expert on one token."""
        return 2 * (self.d_in * self.d_hidden + self.d_hidden * self.d_out)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, d_in={self.d_in}, d_hidden={self.d_hidden}, d_out={self.d_out}"
