"""Per-sample SGD of the tag-partitioned network (the even/odd tag partitioning note): steps per second.

Variants of ``tag/per-sample-sgd`` (each callable runs ``steps`` per-sample updates of every network):
``stacked`` (:class:`mpnn.tagnet.stacked_sgd.StackedSGD`: hand-written forward/backward, ``networks`` models in
lock-step, by the fused C++ step loop where it builds and measures faster on this machine; 1 is one
network alone, 4 a small lock-step group, 25 the chapter's default local pass: 10 faithful seeds + 3
seeds x 5 controls), ``stacked-torch`` (the same trainer forced onto its pure-torch step loop,
``fused=False``: about 20 small tensor operations per step, run by Python), ``autograd-loop``
(:func:`mpnn.tagnet.reference_sgd`, one network at a time: the plain reference loop). The
benchmark's networks are the document's (partitioned, blocked order: each step computes only the
active half). Extras: ``sample updates per call`` (divide by ``median_s`` for updates/s) and
``flops``, the useful FLOPs of one call, the same for every variant: per sample update of the active
half (``Hb = 128`` units, ``K = 25`` window taps, ``C = 10`` outputs), multiply-adds counted as 2,
``2 K Hb`` (hidden pre-activation) + ``2 C Hb`` (logits) + ``2 C Hb`` (``W2^T e``) + ``2 C Hb``
(``W2 += lr e a^T``) + ``2 K Hb`` (``W1 += lr d x^T``) = ``4 K Hb + 6 C Hb`` = 20,480; the O(Hb + C)
activations, softmax, biases and clamps are not counted, nor the idle half (which the masked
autograd loop computes). ``tag/minibatch-epoch`` times one epoch of mini-batch SGD with autograd (batch 64,
:func:`mpnn.experiments.tag_partitioning.minibatch_sgd`, i.e. :func:`mpnn.infra.train.fit`), the
non-faithful but common alternative, against a per-sample epoch of the stacked trainer.
"""
from __future__ import annotations

import torch

from mpnn import tagnet
from mpnn.experiments.tag_partitioning import minibatch_sgd
from mpnn.runtime.bench import case
from mpnn.tagnet.stacked_sgd import StackedSGD


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randint(0, 256, (n, 784), generator=g, dtype=torch.uint8).float() / 255
    X[:, 500:] = 0
    return X, torch.randint(0, 10, (n,), generator=g)


def update_flops(K: int = 25, Hb: int = 128, C: int = 10) -> int:
    """Useful FLOPs of one per-sample update of one network's active half (module docstring)."""
    return 4 * K * Hb + 6 * C * Hb


@case("tag/per-sample-sgd", group="tag_partitioning", params={"networks": [1, 4, 25]}, repeats=3)
def per_sample_sgd(networks, quick):
    steps = 100 if quick else 500      # per-update ratios; the autograd loop takes about 0.2 s per network here
    X, y = _data(steps)
    models = [tagnet.TagNet(generator=torch.Generator().manual_seed(i)) for i in range(networks)]
    order = tagnet.epoch_order(y, torch.arange(steps))                  # even block, then odd block
    schedule = order[:, None].expand(steps, networks).contiguous()

    def stacked():
        StackedSGD(models, X, y).fit(schedule)

    def stacked_torch():
        StackedSGD(models, X, y).fit(schedule, fused=False)

    def autograd_loop():
        for m in models:
            tagnet.reference_sgd(m, X[order], y[order])

    extra = {"steps per call": steps, "sample updates per call": steps * networks,
             "flops": steps * networks * update_flops(),
             "book_vs_torch": {"book": "stacked", "torch": ["stacked-torch", "autograd-loop"]}}
    return {"stacked": stacked, "stacked-torch": stacked_torch, "autograd-loop": autograd_loop}, extra


@case("tag/minibatch-epoch", group="tag_partitioning", params={"n": [2000]}, repeats=3)
def minibatch_epoch(n, quick):
    n = 500 if quick else n
    X, y = _data(n)
    model = tagnet.TagNet(generator=torch.Generator().manual_seed(0))

    def per_sample_stacked():
        StackedSGD([model], X, y).fit(torch.arange(n)[:, None])

    def minibatch_autograd():
        minibatch_sgd(model, X, y, batch=64)

    return {"per-sample (stacked)": per_sample_stacked, "mini-batch 64 (autograd)": minibatch_autograd}, \
        {"samples per epoch": n}
