"""Benchmarks of the specialization chapter (the specialization document).

* ``specialization/linear-runs``: the linear-network simulations of the chapter (27-50-9 network,
  full-batch gradient descent) for all runs in one batched pass (``torch.bmm`` over runs) against a
  Python loop over runs. Both give identical maps (``tests/test_dynamics.py``). The ``-1-thread``
  variants pin torch to one thread: the matrices are tiny (9x50x27), and on an oversubscribed CPU
  the multi-threaded batched kernels can spend more time waiting for threads than computing.
* ``specialization/cmnist-train``: CMNIST training time of the dense (one 32-channel tower) and split
  (two 16-channel towers as grouped convolutions) models. One call trains ``batches`` SGD steps of
  16 images; an epoch of the paper (20,000 images) is ``1250 / batches`` calls, recorded in ``extra``
  as ``calls_per_epoch``.
* ``specialization/linear-grouped``: the three two-layer architectures (dense 50 hidden units, split and
  partitioned 100) trained in one zero-padded pass (``D.train_linear_groups``) against one pass per
  architecture. On one CPU thread the padded pass did more work than it saved in calls, which is why the
  chapter trains one pass per architecture.
* ``specialization/cmnist-cpu``: one epoch of the chapter's CPU-scale CMNIST (MLP towers on 14 x 42
  images, hand-written backward) for all seeds in one batched pass against a loop over seeds. On one
  CPU thread the two were within about 25% of each other either way (2,000 images, 6 seeds: dense
  0.35 s batched / 0.29 s looped, split 0.19 s / 0.24 s, on a shared 2-core machine): the products are
  large enough to be compute-bound per seed. The batched pass is kept for accelerators (one kernel
  per layer for all seeds).

FLOPs (``flops`` extra) of the linear cases: one full-batch epoch of the two-layer linear network
``Y_hat = W2 W1 X`` (masked weights are still multiplied in full) is a forward pass
``2 (h d + o h) P`` and a backward pass of twice that, so ``6 (h d + o h) P`` per epoch and run.
"""
from __future__ import annotations

import torch

from mpnn import dynamics as D
from mpnn.infra.determinism import resolve_device
from mpnn.experiments import specialization as E
from mpnn.runtime.bench import case
from mpnn.towers import init_normal


@case("specialization/linear-runs", group="specialization", params={"runs": [10, 50]})
def linear_runs(runs, quick):
    epochs = 50 if quick else 300
    data = D.make_dataset(3, 1, 3, 1, 1.0, generator=torch.Generator().manual_seed(0))
    masks = D.architecture_masks("dense", data, 50)
    seeds = list(range(runs))
    device = resolve_device("auto")

    def single_thread(fn):
        def run():
            with D.single_thread(device):
                return fn()
        return run

    batched = lambda: D.train_linear(data.X, data.Y, masks, seeds, epochs=epochs, device=device)
    loop = lambda: D.train_linear_loop(data.X, data.Y, masks, seeds, epochs=epochs, device=device)
    variants = {"batched": batched, "loop-over-runs": loop,
                "batched-1-thread": single_thread(batched), "loop-over-runs-1-thread": single_thread(loop)}
    return variants, {"flops": linear_flops(masks, data.X.shape[1], epochs, runs)}


def linear_flops(masks, patterns: int, epochs: int, runs: int) -> float:
    """``6 (h d + o h) P`` per epoch and run (see the module docstring)."""
    return 6.0 * sum(m.numel() for m in masks) * patterns * epochs * runs


@case("specialization/cmnist-train", group="specialization", params={"batches": [4]}, repeats=3)
def cmnist_train(batches, quick):
    device = resolve_device("auto")
    batches = 1 if quick else batches
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batches, 16, 1, 28, 84, generator=g).to(device)
    digits = torch.randint(0, 10, (batches, 16, 3), generator=g)
    y = torch.stack([E.cmnist_targets(d) for d in digits]).to(device)

    def trainer(kind):
        model = E.make_model(kind)
        init_normal(model, [1] * len(model.outputs))
        model.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=2e-3)

        def run():
            for b in range(batches):
                E.sgd_step(model, opt, x[b], y[b])
        return run

    return {"split": trainer("split"), "dense": trainer("dense")}, {"calls_per_epoch": 1250 / batches}


@case("specialization/linear-grouped", group="specialization", params={"runs": [50]})
def linear_grouped(runs, quick):
    epochs = 50 if quick else 300
    data = D.make_dataset(3, 1, 3, 1, 1.0, generator=torch.Generator().manual_seed(0))
    seeds = list(range(runs))
    device = resolve_device("auto")
    archs = ("dense", "split", "partitioned")
    groups = [D.LinearGroup(data.X, data.Y, D.architecture_masks(a, data, 50), seeds, 0.02) for a in archs]

    def per_architecture():
        with D.single_thread(device):
            return [D.train_linear(g.X, g.Y, g.masks, g.seeds, lr=g.lr, epochs=epochs, device=device) for g in groups]

    def grouped():
        with D.single_thread(device):
            return D.train_linear_groups(groups, epochs=epochs, device=device)

    useful = sum(linear_flops(g.masks, g.X.shape[1], epochs, len(g.seeds)) for g in groups)
    return {"per-architecture": per_architecture, "one-padded-pass": grouped}, {"flops": useful}


@case("specialization/cmnist-cpu", group="specialization", params={"seeds": [6]}, repeats=3)
def cmnist_cpu(seeds, quick):
    device = resolve_device("auto")
    n = 256 if quick else 2000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 588, generator=g)
    digits = torch.randint(0, 10, (n, 3), generator=g)
    init = list(range(seeds))

    def train(kind, runs):
        def run():
            with D.single_thread(device):
                for r in runs:
                    E.train_tower_mlp(kind, x, digits, init_seeds=[init[i] for i in r], order_seeds=[init[i] for i in r],
                                      epochs=1, lr=0.02, device=device)
        return run

    batched, loop = [list(range(seeds))], [[i] for i in range(seeds)]
    return ({"dense-batched": train("dense", batched), "dense-loop-over-seeds": train("dense", loop),
             "split-batched": train("split", batched), "split-loop-over-seeds": train("split", loop)},
            {"images_per_epoch": n})
