"""The book's one mini-batch training loop for autograd models.

Every chapter that trains a model by back-propagation over shuffled mini-batches calls :func:`fit`
(the hand-derived trainers the chapters study, such as isolated neurons, linear dynamics, per-sample
stacked SGD and the sharded MLP, stay in their own modules). One step is

    idx = perm_e[b * B:(b + 1) * B]      # perm_e: the seeded permutation of epoch e
    loss = loss_fn(batch(idx), step)     # the chapter's objective, any model, any extra terms
    optimizer.zero_grad(); loss.backward(); optimizer.step(); scheduler.step()

Permutations come from a ``torch.Generator`` seeded with ``seed`` on the CPU (so the data order does
not depend on the device). With ``seed`` a list of R seeds, R models trained side by side (stacked
weights) each get their own order: ``batch`` then holds (R, B, ...) tensors and ``loss_fn`` returns
one loss per replica, shape (R,), whose sum is minimised (the replicas share no parameters, so each
gets exactly its own gradient).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch


@dataclass
class History:
    """What a training run leaves behind.

    ``loss`` holds one value per step (``(steps,)``; ``(steps, R)`` for R replicas), ``evals`` the
    dicts returned by the ``evaluate`` hook (one per call, with the epoch it ran after), ``seconds``
    the wall time of the loop (evaluation hooks included).
    """

    loss: torch.Tensor
    evals: list[dict] = field(default_factory=list)
    steps_per_epoch: int = 0
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return int(self.loss.shape[0])

    def epoch_loss(self) -> torch.Tensor:
        """Mean loss of every epoch: (epochs,) or (epochs, R)."""
        full = self.steps // self.steps_per_epoch * self.steps_per_epoch
        return self.loss[:full].reshape(-1, self.steps_per_epoch, *self.loss.shape[1:]).mean(1)


def permutations(n: int, seed: int | Sequence[int], epochs: int, device=None):
    """The per-epoch orders :func:`fit` uses: yields (n,) or (R, n) index tensors, one per epoch."""
    seeds = [seed] if isinstance(seed, int) else list(seed)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    for _ in range(epochs):
        perm = torch.stack([torch.randperm(n, generator=g) for g in gens])
        yield (perm[0] if isinstance(seed, int) else perm).to(device)


def fit(model: torch.nn.Module, loss_fn: Callable[[tuple, int], torch.Tensor],
        data: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, *, epochs: int,
        batch_size: int, seed: int | Sequence[int] = 0,
        schedule: Callable[[int], float] | None = None,
        evaluate: Callable[[int], dict] | None = None, eval_every: int = 1,
        progress: str | None = None) -> History:
    """Train ``model`` for ``epochs`` passes over ``data`` in shuffled mini-batches.

    ``data``: tensors indexed together along their first axis (inputs, labels, ...), on the model's
    device. ``loss_fn(batch, step)`` gets the indexed tensors and the global step and returns the
    loss to minimise (a scalar, or (R,) with R seeds). ``schedule(step)`` multiplies the learning
    rate (``LambdaLR``). ``evaluate(epoch)`` runs after every ``eval_every`` epochs and after the
    last one (in eval mode, without gradients); its dicts are kept in ``History.evals``.
    ``progress`` names a ``tqdm.auto`` bar over the steps (``None``: silent).
    """
    if not data:
        raise ValueError("fit needs at least one data tensor")
    n = int(data[0].shape[0])
    if any(int(t.shape[0]) != n for t in data):
        raise ValueError(f"data tensors disagree on their length: {[int(t.shape[0]) for t in data]}")
    if epochs < 1 or batch_size < 1 or n < 1:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and data; got epochs={epochs}, "
                         f"batch_size={batch_size}, {n} samples")
    replicas = None if isinstance(seed, int) else len(seed)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule) if schedule is not None else None
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=progress, disable=progress is None, leave=False)
    losses, evals = [], []
    start = time.perf_counter()
    step = 0
    model.train()
    for epoch, perm in enumerate(permutations(n, seed, epochs, data[0].device)):
        for b in range(steps_per_epoch):
            idx = perm[..., b * batch_size:(b + 1) * batch_size]
            loss = loss_fn(tuple(t[idx] for t in data), step)
            if replicas is not None and loss.shape != (replicas,):
                raise ValueError(f"with {replicas} seeds loss_fn must return one loss per replica, "
                                 f"got shape {tuple(loss.shape)}")
            optimizer.zero_grad(set_to_none=True)
            (loss.sum() if replicas is not None else loss).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.detach())
            step += 1
            bar.update()
        if evaluate is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            model.eval()
            with torch.no_grad():
                evals.append({"epoch": epoch + 1} | dict(evaluate(epoch + 1)))
            model.train()
    bar.close()
    model.eval()
    return History(torch.stack(losses).float().cpu(), evals, steps_per_epoch, time.perf_counter() - start)


def fusable(model: torch.nn.Module) -> bool:
    """Whether torch's fused Adam/AdamW kernel (``fused=True``: one kernel for every parameter tensor)
    applies to ``model``: every parameter float32 or float64, on the CPU or a CUDA device."""
    return all(p.dtype in (torch.float32, torch.float64) and p.device.type in ("cpu", "cuda")
               for p in model.parameters())
