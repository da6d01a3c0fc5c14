"""Benchmarks of the specialization chapter (document 002).

* ``specialization/linear-runs``: the linear-network simulations of the chapter (27-50-9 network,
  full-batch gradient descent) for all runs in one batched pass (``torch.bmm`` over runs) against a
  Python loop over runs. Both give identical maps (``tests/test_dynamics.py``). The ``-1-thread``
  variants pin torch to one thread: the matrices are tiny (9x50x27), and on an oversubscribed CPU
  the multi-threaded batched kernels can spend more time waiting for threads than computing.
* ``specialization/cmnist-train``: CMNIST training time of the dense (one 32-channel tower) and split
  (two 16-channel towers as grouped convolutions) models. One call trains ``batches`` SGD steps of
  16 images; an epoch of the paper (20,000 images) is ``1250 / batches`` calls, recorded in ``extra``
  as ``calls_per_epoch``.
"""
from __future__ import annotations

import torch

from mpnn import cmnist as C
from mpnn import dynamics as D
from mpnn.bench import case
from mpnn.repro import resolve_device


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
    return {"batched": batched, "loop-over-runs": loop,
            "batched-1-thread": single_thread(batched), "loop-over-runs-1-thread": single_thread(loop)}


@case("specialization/cmnist-train", group="specialization", params={"batches": [4]}, repeats=3)
def cmnist_train(batches, quick):
    device = resolve_device("auto")
    batches = 1 if quick else batches
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batches, 16, 1, 28, 84, generator=g).to(device)
    digits = torch.randint(0, 10, (batches, 16, 3), generator=g)
    from mpnn.data.cmnist import compositional_targets, noncompositional_targets
    y = torch.stack([torch.cat([compositional_targets(d), noncompositional_targets(d)], 1) for d in digits]).to(device)

    def trainer(kind):
        model = C.make_model(kind)
        C.init_normal(model, [1] * len(model.outputs))
        model.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=2e-3)

        def run():
            for b in range(batches):
                loss = (model(x[b]) - y[b]).pow(2).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return run

    return {"split": trainer("split"), "dense": trainer("dense")}, {"calls_per_epoch": 1250 / batches}
