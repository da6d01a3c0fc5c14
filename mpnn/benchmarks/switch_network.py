"""Isolated training of many neurons: one vectorised pass vs a per-neuron loop vs a dense layer.

Each of ``n`` sigmoid neurons owns 20 observations of 5 features (disjoint subsets, the switch-based multi-part network document)
and takes ``steps`` full-batch gradient steps on its own loss (:mod:`mpnn.partition`, eq. 1).

* ``vectorised``  -- :func:`mpnn.partition.train_isolated`: all neurons in one pass, O(N d) per step;
* ``loop``        -- the same closed-form gradient, one neuron at a time (data pre-split, untimed);
* ``loop-autograd`` -- :func:`mpnn.partition.train_loop`: ``nn.Linear`` + ``torch.optim.SGD`` per
  neuron, the way one would write it naively;
* ``dense``       -- one dense layer of the same ``n`` neurons trained on *all* ``N`` observations
  (the centralised computation, O(N n d) per step).

FLOPs (``flops`` extra): a step of one neuron on its observations is a forward product ``x w`` and
a gradient product ``x^T r``, ``2 * 2 d`` FLOPs per observation, so the isolated variants do
``4 N d`` per step and the dense layer ``4 N n d`` (elementwise sigmoid and updates not counted).
"""
from __future__ import annotations

import torch

from mpnn import partition as P
from mpnn.runtime.bench import case

D_FEATURES, PER_NEURON, LR, L2 = 5, 20, 0.5, 1e-3


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * PER_NEURON, D_FEATURES, generator=g)
    y = (torch.rand(n * PER_NEURON, generator=g) < 0.5).float()
    a = torch.arange(n).repeat_interleave(PER_NEURON)
    return x, y, a


@case("switch/isolated-training", group="switch_network", params={"neurons": [5, 100, 1000]}, repeats=3)
def isolated_training(neurons, quick):
    steps = 5 if quick else 10                              # per-step costs: ratios do not depend on steps
    n = min(neurons, 20) if quick else neurons              # quick (CI): the code path, not the scaling
    x, y, a = _data(n)
    parts = [(x[a == i], y[a == i]) for i in range(n)]        # pre-split for the loops (untimed)

    def vectorised():
        return P.train_isolated(x, y, a, n, steps=steps, lr=LR, l2=L2)

    def loop():
        out = []
        for xi, yi in parts:
            w, b = torch.zeros(D_FEATURES), torch.zeros(())
            for _ in range(steps):
                r = (torch.sigmoid(xi @ w + b) - yi) / len(yi)
                w, b = w - LR * (xi.T @ r + L2 * w), b - LR * r.sum()
            out.append(w)
        return out

    def loop_autograd():
        return P.train_loop(x, y, a, n, steps=steps, lr=LR, l2=L2)

    def dense():
        W, b = torch.zeros(n, D_FEATURES), torch.zeros(n)
        for _ in range(steps):                                # every neuron sees every observation
            r = (torch.sigmoid(x @ W.T + b) - y[:, None]) / len(y)   # (N, n)
            W, b = W - LR * (r.T @ x + L2 * W), b - LR * r.sum(0)
        return W

    variants = {"vectorised": vectorised, "loop": loop, "dense": dense}
    if n <= 100 and not quick:                                # autograd loop: minutes at 1000
        variants["loop-autograd"] = loop_autograd
    isolated = 4 * n * PER_NEURON * D_FEATURES * steps
    flops = {v: isolated for v in variants} | {"dense": isolated * n}
    return variants, {"neurons_run": n, "steps": steps, "observations": n * PER_NEURON, "flops": flops}
