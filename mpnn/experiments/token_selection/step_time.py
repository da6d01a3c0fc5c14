"""Training-step time against the FLOP prediction (a timing cell): one training step on all tokens against one on
the gathered kept tokens, for the chapter's model and the full profile's larger one."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mpnn.infra import determinism
from mpnn.infra.clock import interleaved_samples, median
from mpnn.infra.train import fusable
from mpnn.runtime import verdicts
from mpnn.runtime.timing import paired_speedup
from mpnn.tokens import TokenViT, keep_count

from .budget import training_flops


def train_step_time(model: TokenViT, x: torch.Tensor, y: torch.Tensor, rho: float, repeats: int = 31) -> dict:
    """Timing of one training step (forward, backward, fused AdamW step) on all tokens against one on the
    ``keep_count(N, rho)`` gathered tokens (``how="gather_st"``), on copies of ``model`` and the batch ``x, y``,
    ``repeats`` interleaved rounds on one CPU thread; speed-up = median of the per-round ratios (95% CI,
    :func:`mpnn.runtime.timing.paired_speedup`), efficiency = speed-up / FLOP-predicted speed-up."""
    import copy
    predicted = training_flops(model.config) / training_flops(model.config, rho)
    fns = {}
    for name, kw in (("all", {}), ("kept", dict(rho=rho, how="gather_st"))):
        m = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.05, fused=fusable(m))
        fns[name] = training_step_fn(m, opt, x, y, kw)
    with determinism.cpu_threads(1, x.device):
        t = interleaved_samples(fns, repeats=repeats)
    sp, lo, hi = paired_speedup(t["all"], t["kept"])
    c = model.config
    measured = (f"{c.n_tokens} tokens of width {c.dim}, rho={rho:g} ({keep_count(c.n_tokens, rho)} kept), batch "
                f"{len(x)}: training step {1e3 * median(t['all']):.1f} ms -> {1e3 * median(t['kept']):.1f} ms, "
                f"speed-up {sp:.2f}x (95% CI {lo:.2f}-{hi:.2f}, median of {repeats} interleaved rounds, 1 thread) "
                f"against {predicted:.2f}x predicted by FLOPs: {sp / predicted:.2f} of it")
    return {"measured": measured, "speedup": sp, "speedup_low": lo, "speedup_high": hi, "predicted": predicted,
            "efficiency": sp / predicted, "efficiency_low": lo / predicted, "efficiency_high": hi / predicted,
            "all_s": median(t["all"]), "kept_s": median(t["kept"]), "repeats": repeats}


def train_step_claim(model: TokenViT, large_model: TokenViT, x: torch.Tensor, y: torch.Tensor, rho: float,
                     repeats: int = 41, large_repeats: int = 15, min_speedup: float = 1.05) -> dict:
    """Timing claim: training on the kept tokens takes less time per step, for the chapter's model and for the
    full profile's larger one (:func:`train_step_time` for each). Each part is supported when its speed-up CI
    lies above ``min_speedup``, not supported when it lies below 1, inconclusive otherwise; the verdict is
    :func:`mpnn.runtime.verdicts.combine` of the two (``mixed``: one part holds)."""
    small = train_step_time(model, x, y, rho, repeats)
    large = train_step_time(large_model, x, y, rho, large_repeats)
    parts = {name: verdicts.from_interval(r["speedup_low"], r["speedup_high"], above=min_speedup, refuted_below=1.0)
             for name, r in (("chapter's model", small), ("larger model", large))}
    measured = "; ".join(f"{name}, {parts[name]}: {r['measured']}"
                         for name, r in (("chapter's model", small), ("larger model", large)))
    return {"verdict": verdicts.combine(parts), "parts": parts, "measured": measured, "small": small, "large": large,
            "min_speedup": min_speedup}


def training_step_fn(model, opt, x, y, kw):
    """One training step of ``model`` on ``(x, y)``: cross-entropy of ``model(x, **kw)``, backward, ``opt`` step."""
    def step():
        loss = F.cross_entropy(model(x, **kw), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step
