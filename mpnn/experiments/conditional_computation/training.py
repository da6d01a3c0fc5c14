"""The data and the training recipe: every variant trained as stacked replicas in one vectorised pass."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mpnn import moe
from mpnn.data import mnist
from mpnn.infra import determinism
from mpnn.infra.train import fit

PIXELS, CLASSES = 784, 10


UNIT = (0.0, 1.0)      # the range of accuracies, shares, normalised entropies and NMIs (bounded intervals)


MAIN_VARIANTS = ["dense h", "dense 2h", "dense E·h", "top-1", "top-2"]   # the compute claims' models


DETAIL_VARIANTS = ["noisy top-2", "expert choice c=1", "expert choice c=2", "soft MoE"]


def check_seed_counts(n_seeds: int, n_seeds_balance: int, n_seeds_detail: int, alphas: list[float]) -> None:
    """Raise unless every interval has at least two seeds and the balancing sweep has alpha = 0 and a positive alpha."""
    if not 2 <= n_seeds_detail <= n_seeds or not 2 <= n_seeds_balance <= n_seeds:
        raise ValueError("need 2 <= n_seeds_detail, n_seeds_balance <= n_seeds for confidence intervals, got "
                         f"n_seeds={n_seeds}, n_seeds_balance={n_seeds_balance}, n_seeds_detail={n_seeds_detail}")
    if max(alphas) <= 0 or 0.0 not in alphas:
        raise ValueError(f"alphas must contain 0.0 (no balancing) and a positive weight, got {alphas}")


def prepare_mnist(n_train: int | None = None, n_test: int | None = None, *, seed: int = 0,
                  device: str | torch.device = "cpu", root=None):
    """Flattened, standardised MNIST ``((x_train, y_train), (x_test, y_test))``, x (N, 784) float32.

    ``n_train`` / ``n_test`` take a seeded random subset (``None``: all 60,000 / 10,000 images).
    """
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = mnist.load_mnist(split, root=root)
        if n is not None:
            if not 1 <= n <= len(labels):
                raise ValueError(f"n_{split} must be in 1..{len(labels)}, got {n}")
            idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
            images, labels = images[idx], labels[idx]
        out.append((mnist.to_tensor(images, scale="standard", shape="flat", device=device), labels.to(device)))
    return tuple(out)


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one pass over each parameter: several times faster on a CPU than
    the per-op implementation for the experts' many weights)."""
    return torch.optim.Adam(list(params), lr=lr, fused=True)


@dataclass
class FitResult:
    accuracy: float                   # test accuracy
    history: list                     # dicts: step, epoch, loss, share (E,) of processed assignments
    assignment: torch.Tensor | None   # (N_test, E) experts that processed each test image
    predictions: torch.Tensor         # (N_test,)
    dropped: float                    # mean share of assignments dropped while training
    seconds: float


@dataclass
class RoutingLog:
    """What the loss function saw at each training step (a leading replica axis for stacked models)."""

    task_loss: list = field(default_factory=list)   # () or (R,): the cross-entropy of the step's batch
    load: list = field(default_factory=list)        # (E,) or (R, E): assignment mass per expert
    dropped: list = field(default_factory=list)     # () or (R,): share of assignments dropped

    def record(self, task_loss: torch.Tensor, routed: moe.RoutingStats) -> None:
        self.task_loss.append(task_loss.detach())
        if routed.assignment is not None:
            self.load.append(routed.assignment.sum(-2))
            self.dropped.append(routed.dropped)

    def windows(self, log_every: int) -> list[tuple[int, int]]:
        """(first, end) step ranges logged together: every ``log_every`` steps, and the last steps."""
        total = len(self.task_loss)
        ends = [s for s in range(1, total + 1) if s % log_every == 0 or s == total]
        return list(zip([0] + ends[:-1], ends))

    def history(self, log_every: int, steps_per_epoch: int, replica: int | None = None) -> list[dict]:
        """Mean task loss and expert shares ``load / sum(load)`` of every window (of one replica)."""
        pick = (lambda t: t) if replica is None else (lambda t: t[replica])
        records = []
        for first, end in self.windows(log_every):
            rec = {"step": end, "epoch": end / steps_per_epoch,
                   "loss": float(pick(torch.stack(self.task_loss[first:end]).mean(0)))}
            if self.load:
                window = pick(sum(self.load[first:end]))
                rec["share"] = (window / window.sum()).cpu()
            records.append(rec)
        return records

    def mean_dropped(self) -> torch.Tensor:
        """Share of assignments dropped, averaged over the steps: () or (R,)."""
        return torch.stack(self.dropped).mean(0) if self.dropped else torch.zeros(())


def classification_loss(model: nn.Module, log: RoutingLog):
    """``loss_fn`` for :func:`mpnn.infra.train.fit`: cross-entropy plus the layer's balancing loss, logged.

    For a :class:`mpnn.moe.StackedMoE` the batch is (R, B, ...) and the loss one value per replica.
    """
    def loss_fn(batch, step):
        x, y = batch
        logits, routed = model(x)
        if y.dim() == 1:
            ce = F.cross_entropy(logits, y)
        else:
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                 reduction="none").view(y.shape[0], -1).mean(1)
        log.record(ce, routed)
        return ce + routed.aux_loss
    return loss_fn


def predict_in_groups(model: nn.Module, x: torch.Tensor, group: int):
    """Predictions and assignments of ``x`` in consecutive groups of ``group`` rows (the routing
    group of expert choice and soft MoE), without gradients. A :class:`mpnn.moe.StackedMoE` gets
    every group once per replica and returns (R, N) predictions and (R, N, E) assignments."""
    replicas = model.replicas if isinstance(model, moe.StackedMoE) else None
    preds, assigns = [], []
    with torch.no_grad():
        for b in range(0, len(x), group):
            xb = x[b:b + group]
            logits, routed = model(xb if replicas is None else xb.unsqueeze(0).expand(replicas, *xb.shape))
            preds.append(logits.argmax(-1))
            if routed.assignment is not None:
                assigns.append(routed.assignment)
    axis = 0 if replicas is None else 1
    return torch.cat(preds, axis), (torch.cat(assigns, axis) if assigns else None)


def _evaluation(model: nn.Module, x: torch.Tensor, group: int):
    def evaluate(epoch):
        predictions, assignment = predict_in_groups(model, x, group)
        return {"predictions": predictions, "assignment": assignment}
    return evaluate


def _train(model, train, test, *, seed, epochs, batch_size, lr, progress, cpu_threads):
    """One :func:`mpnn.infra.train.fit` run of the recipe, evaluated on ``test`` after the last epoch."""
    (x, y), (xt, _) = train, test
    log = RoutingLog()
    with determinism.cpu_threads(cpu_threads, x.device):
        history = fit(model, classification_loss(model, log), (x, y), adam(model.parameters(), lr),
                      epochs=epochs, batch_size=batch_size, seed=seed, evaluate=_evaluation(model, xt, batch_size),
                      eval_every=epochs, progress=progress)
    return history, log


def _result(evaluation: dict, labels: torch.Tensor, records: list, dropped: torch.Tensor, seconds: float,
            replica: int | None = None) -> FitResult:
    """The :class:`FitResult` of a run (of replica ``replica`` of a stacked run) from its last evaluation."""
    pick = (lambda t: t) if replica is None else (lambda t: t[replica])
    predictions, assignment = pick(evaluation["predictions"]), evaluation["assignment"]
    return FitResult(float((predictions == labels).float().mean()), records,
                     pick(assignment).cpu() if assignment is not None else None, predictions.cpu(),
                     float(dropped), seconds)


def fit_classifier(model: nn.Module, train, test, *, epochs: int, batch_size: int = 128, lr: float = 1e-3,
                   seed: int = 0, log_every: int = 50, progress: str | None = None,
                   cpu_threads: int | None = 1) -> FitResult:
    """Adam on cross-entropy + the MoE balancing loss; logs expert shares every ``log_every`` steps.

    On CPU, training runs on ``cpu_threads`` threads (restored afterwards): these models are small,
    so one thread is fastest (no intra-op synchronisation, which is very slow on a busy machine)
    and the numbers do not depend on the machine's core count. ``None`` leaves torch's setting.
    A batch is also the routing group of expert-choice and soft MoE layers; the test set is evaluated
    in groups of ``batch_size`` images in a fixed order.
    """
    history, log = _train(model, train, test, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                          progress=progress, cpu_threads=cpu_threads)
    return _result(history.evals[-1], test[1], log.history(log_every, history.steps_per_epoch),
                   log.mean_dropped(), history.seconds)


def fit_replicas(models: list[nn.Module], train, test, *, seeds: list[int], epochs: int, batch_size: int = 128,
                 lr: float = 1e-3, log_every: int = 50, progress: str | None = None,
                 cpu_threads: int | None = 1) -> list[FitResult]:
    """:func:`fit_classifier` for R independent models at once (one :class:`mpnn.moe.StackedMoE` pass).

    Replica r trains exactly as ``fit_classifier(models[r], train, test, seed=seeds[r], ...)`` would:
    its own batch order (a generator seeded with ``seeds[r]``), its own Adam state (Adam is
    elementwise, and the summed loss gives each replica the gradient of its own loss), its own
    routing; only the random noise of noisy / Gumbel gates is drawn differently. The results agree
    with the loop up to float summation order (see ``tests/test_conditional_computation.py``). The trained
    parameters are written back into ``models`` (left in eval mode); ``seconds`` is the pass's
    time divided by R.
    """
    if len(seeds) != len(models):
        raise ValueError(f"one seed per model: got {len(seeds)} seeds for {len(models)} models")
    stacked = moe.StackedMoE(models).to(train[0].device)
    history, log = _train(stacked, train, test, seed=[int(s) for s in seeds], epochs=epochs,
                          batch_size=batch_size, lr=lr, progress=progress, cpu_threads=cpu_threads)
    stacked.write_back()
    for m in models:
        m.eval()
    dropped = log.mean_dropped().expand(len(models))
    return [_result(history.evals[-1], test[1], log.history(log_every, history.steps_per_epoch, r), dropped[r],
                    history.seconds / len(models), r) for r in range(len(models))]
