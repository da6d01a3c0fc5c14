"""Token selection and merging: inference on fewer tokens vs all tokens.

``ratio_to_fewer_tokens`` of ``all_tokens`` is the measured speed-up; ``predicted_speedup`` is the FLOP
ratio from :func:`mpnn.tokens.vit_flops`. Weights are untrained (speed does not depend on them).

FLOPs (``flops`` extra): one call of a variant is the batch times :func:`mpnn.tokens.vit_flops` of its
setting: 2 FLOPs per multiply-add of the linear layers (embedding, qkv, projection, MLP, head, scorer), of
the two attention products ``q k^T`` and ``A v`` and of ToMe's similarity matrix; LayerNorm, softmax, GELU,
the size-weighted average and the gathers are not counted.

Stable ratios. The inference cases allocate tens of MB of temporaries per call (qkv, attention
matrices, MLP activations at batch 1000). With glibc's default, dynamic malloc thresholds, whether those come
back from the heap or are unmapped / trimmed and page-faulted in again on the next call depends on the
history of the process: measured, the all-tokens forward took 9,000-17,000 minor page faults per call
(130 ms -> 160-170 ms) in some states and ~300 in others, the merged forward 0 or 21,000 (99 ms -> 140 ms),
so its ratio to the all-tokens forward moved by +-0.15 between runs with the same code. The harness
therefore fixes the thresholds for every case (:func:`mpnn.runtime.bench.steady_allocator`). The cases also take 21 repeats instead of 5 (medians over ~2-3 s per
variant), since the machine is shared and the two variants are timed one after the other.
"""
import torch

from mpnn.experiments.token_selection import training_step_fn
from mpnn.runtime.bench import case
from mpnn.tokens import TokenViT, ViTConfig, vit_flops

CONFIG = ViTConfig(patch=4, dim=32, depth=4, heads=2, select_after=1)


def _setup(quick):
    torch.manual_seed(0)
    model = TokenViT(CONFIG).eval()
    x = torch.randn(256 if quick else 1000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return model, x


def _variants(model, x, **kw):
    def fewer():
        with torch.no_grad():
            model(x, **kw)

    def full():
        with torch.no_grad():
            model(x)

    return {"fewer_tokens": fewer, "all_tokens": full}


def _extra(batch, **kw):
    """Predicted speed-up, batch and the useful FLOPs of one call of each variant."""
    return {"predicted_speedup": vit_flops(CONFIG) / vit_flops(CONFIG, **kw), "batch": batch,
            "flops": {"fewer_tokens": batch * vit_flops(CONFIG, **kw), "all_tokens": batch * vit_flops(CONFIG)}}


@case("tokens/selection", group="token_selection", params={"rho": [0.5, 0.25]}, repeats=21)
def selection(rho, quick):
    model, x = _setup(quick)
    return _variants(model, x, rho=rho), _extra(x.shape[0], rho=rho)


@case("tokens/merging", group="token_selection", params={"r": [4, 8]}, repeats=21)
def merging(r, quick):
    model, x = _setup(quick)
    return _variants(model, x, r=r), _extra(x.shape[0], r=r)


@case("tokens/training-step", group="token_selection", params={"rho": [0.5, 0.25]})
def training_step(rho, quick):
    """One training step (forward, backward, fused AdamW) on the gathered kept tokens (``how="gather_st"``)
    against one on all tokens, batch 64; ``flops``: 3 x the forward FLOPs per image."""
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))

    def variant(**kw):
        model = TokenViT(CONFIG).train()
        return training_step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True), x, y, kw)
    extra = _extra(64, rho=rho)
    extra["flops"] = {k: 3 * v for k, v in extra["flops"].items()}
    return {"fewer_tokens": variant(rho=rho, how="gather_st"), "all_tokens": variant()}, extra
