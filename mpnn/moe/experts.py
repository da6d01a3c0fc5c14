"""E expert MLPs with stacked weights: one batched matmul over equal per-expert buffers, or one
grouped matmul over rows sorted by expert (no padding, as dropless MoE kernels do)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)   # what torch's grouped_mm accepts


class _GroupedLinear(torch.autograd.Function):
    """``out[s_e:s_{e+1}] = a[s_e:s_{e+1}] @ w[e] + b[e]`` for rows sorted by group (one expert layer);
    ``offs`` (E,) int32 group ends, ``group`` (M,) the group of each row.

    Forward is :func:`torch.nn.functional.grouped_mm` plus the per-row bias; backward is two grouped
    matmuls, ``dA = dOut W_e^T`` and ``dW_e = A_e^T dOut_e``, and ``db_e = sum_{rows of e} dOut``
    (one ``index_add``).
    """

    @staticmethod
    def forward(ctx, a, w, b, offs, group):
        out = F.grouped_mm(a, w, offs=offs)
        out += b.index_select(0, group)
        ctx.save_for_backward(a, w, offs, group)
        ctx.n_groups = b.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):
        a, w, offs, group = ctx.saved_tensors
        grad = grad.contiguous()
        need_a, need_w, need_b = ctx.needs_input_grad[:3]
        grad_a = F.grouped_mm(grad, w.transpose(-2, -1), offs=offs) if need_a else None
        grad_w = F.grouped_mm(a.t(), grad, offs=offs) if need_w else None
        grad_b = grad.new_zeros(ctx.n_groups, grad.shape[1]).index_add_(0, group, grad) if need_b else None
        return grad_a, grad_w, grad_b, None, None


def grouped_linear(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, counts: torch.Tensor,
                   group: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``a`` (M, n_in) sorted by group, ``counts`` (E,) rows per group -> ``a_e @ w[e] + b[e]``
    (M, n_out), differentiable in ``a``, ``w`` and ``b`` (see :class:`_GroupedLinear`); ``group``
    (M,) the group of each row, if already known."""
    offs = torch.cumsum(counts, 0).to(torch.int32)
    if group is None:
        group = torch.repeat_interleave(torch.arange(counts.numel(), device=a.device), counts,
                                        output_size=a.shape[0])
    return _GroupedLinear.apply(a, w, b, offs, group)


def _aligned(n: int, dtype: torch.dtype) -> int:
    """n rounded up so that a row of n elements is a multiple of 16 bytes (grouped_mm's stride rule)."""
    per = max(1, 16 // torch.empty((), dtype=dtype).element_size())
    return -(-n // per) * per


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

    def forward_sorted(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Rows sorted by expert, ``counts`` (E,) rows of each: (M, d_in) -> (M, d_out), row i through
        ``f_e`` of its expert e (the dropless layout: every expert computes exactly its own rows).

        float32/bf16/fp16 rows on the CPU go through two grouped matmuls (dimensions zero-padded to 16-byte
        rows where needed: padded hidden units are ``relu(0) = 0`` and padded outputs are cut off);
        other dtypes loop over the experts' slices.
        """
        if x.shape[0] != int(counts.sum()):
            raise ValueError(f"counts sum to {int(counts.sum())} rows but x has {x.shape[0]}")
        if x.device.type == "cpu" and x.dtype in _GROUPED_DTYPES:
            return self._forward_grouped(x, counts)
        return self._forward_slices(x, counts)

    def _forward_slices(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The loop fallback of :meth:`forward_sorted`: one ``f_e`` per contiguous slice."""
        parts = x.split(counts.tolist())
        return torch.cat([self.forward_one(e, part) for e, part in enumerate(parts)])

    def _forward_grouped(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_sorted` as ``relu(X W1_e + b1_e) W2_e + b2_e`` with two grouped matmuls."""
        d, h, o = self.d_in, self.d_hidden, self.d_out
        pd, ph, po = (_aligned(n, x.dtype) - n for n in (d, h, o))
        w1 = F.pad(self.w1, (0, ph, 0, pd)) if pd or ph else self.w1
        w2 = F.pad(self.w2, (0, po, 0, ph)) if ph or po else self.w2
        b1 = F.pad(self.b1, (0, ph)) if ph else self.b1
        b2 = F.pad(self.b2, (0, po)) if po else self.b2
        x = F.pad(x, (0, pd)) if pd else x.contiguous()
        expert = torch.repeat_interleave(torch.arange(self.n_experts, device=x.device), counts,
                                         output_size=x.shape[0])           # expert of each row
        out = grouped_linear(grouped_linear(x, w1, b1, counts, expert).relu(), w2, b2, counts, expert)
        return out[:, :o] if po else out

    def forward_one(self, e: int, x: torch.Tensor) -> torch.Tensor:  # (n, d_in) -> (n, d_out)
        """Expert ``e`` alone (for references and the loop baseline)."""
        return (x @ self.w1[e] + self.b1[e]).relu() @ self.w2[e] + self.b2[e]

    def flops_per_token(self) -> int:
        """Multiply-adds x 2 of one expert on one token."""
        return 2 * (self.d_in * self.d_hidden + self.d_hidden * self.d_out)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, d_in={self.d_in}, d_hidden={self.d_hidden}, d_out={self.d_out}"
