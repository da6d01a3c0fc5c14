"""Conditional computation I (Scardapane et al. 2024, *Conditional computation in neural networks: principles
and research trends*): mixture-of-experts on MNIST.

The chapter's data (flattened, standardised MNIST), its one training recipe (Adam on the
cross-entropy plus the layer's balancing losses, through :func:`mpnn.infra.train.fit`), the variants it
compares, the checks of the framework, and the tables and figures of the notebook. The layers
themselves are :mod:`mpnn.moe`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import altair as alt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mpnn import moe
from mpnn.infra import determinism
from mpnn.data import mnist
from mpnn.runtime import plots, stats, verdicts
from mpnn.switch import LearnedSwitch, topk_mask
from mpnn.tokens import TokenViT, ViTConfig
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


# ---------------------------------------------------------------- data

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


# ---------------------------------------------------------------- the training recipe

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


# ---------------------------------------------------------------- the variants

def variant_spec(variant: str, *, hidden: int, n_experts: int, alpha: float, soft_slots: int):
    """``(make_moe kind, expert hidden width, keyword arguments)`` of a named variant.

    Besides the fixed names, ``"top-1 alpha=<a>"`` is top-1 with balancing weight a and
    ``"top-1 capacity=<c>"`` top-1 (weight ``alpha``) trained with capacity factor c.
    """
    if variant.startswith("top-1 alpha="):
        return "switch", hidden, {"alpha": float(variant.split("=")[1])}
    if variant.startswith("top-1 capacity="):
        return "switch", hidden, {"alpha": alpha, "capacity_factor": float(variant.split("=")[1])}
    specs = {
        "dense h": ("dense", hidden, {}), "dense 2h": ("dense", 2 * hidden, {}),
        "dense E·h": ("dense", n_experts * hidden, {}),
        "top-1": ("switch", hidden, {"alpha": alpha}), "top-2": ("top2", hidden, {"alpha": alpha}),
        "noisy top-2": ("noisy_top2", hidden, {"alpha": alpha}),
        "expert choice c=1": ("expert_choice", hidden, {"capacity_factor": 1.0}),
        "expert choice c=2": ("expert_choice", hidden, {"capacity_factor": 2.0}),
        "soft MoE": ("soft", hidden, {"slots_per_expert": soft_slots}),
    }
    if variant not in specs:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(specs)}, "
                         "'top-1 alpha=<a>' or 'top-1 capacity=<c>'")
    return specs[variant]


def active_mflops(model: nn.Module, tokens_per_group: int) -> float:
    """Active MFLOPs per image (soft MoE's depend on the routing group's size)."""
    if isinstance(model, moe.SoftMoE):
        return model.active_flops_per_token(tokens_per_group) / 1e6
    return model.active_flops_per_token() / 1e6


@dataclass
class Study:
    """The chapter's trained models: ``results`` / ``models`` keyed by (variant, seed index).

    Seed index i fixes a model's initialisation and its batch order whatever the variant, so
    differences between variants are paired by seed.
    """

    train: tuple
    test: tuple
    seeds: list[int]
    hidden: int
    n_experts: int
    alpha: float
    soft_slots: int
    epochs: int
    batch_size: int
    lr: float
    log_every: int
    results: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)

    def build(self, variant: str) -> nn.Module:
        kind, hidden, kwargs = variant_spec(variant, hidden=self.hidden, n_experts=self.n_experts,
                                            alpha=self.alpha, soft_slots=self.soft_slots)
        return moe.make_moe(kind, PIXELS, hidden, CLASSES, self.n_experts, **kwargs)

    def train_variant(self, variant: str, n: int) -> None:
        """Seeds 0..n-1 of a variant, those not trained yet, in one vectorised pass (:func:`fit_replicas`)."""
        todo = [i for i in range(n) if (variant, i) not in self.results]
        if not todo:
            return
        built = []
        for i in todo:
            determinism.seed_everything(self.seeds[i])       # the same initialisation as a seed-by-seed run
            built.append(self.build(variant).to(self.train[0].device))
        determinism.seed_everything(self.seeds[todo[0]])     # the routing noise of noisy / Gumbel gates
        fits = fit_replicas(built, self.train, self.test, seeds=[self.seeds[i] for i in todo], epochs=self.epochs,
                            batch_size=self.batch_size, lr=self.lr, log_every=self.log_every)
        for i, m, r in zip(todo, built, fits):
            self.results[(variant, i)], self.models[(variant, i)] = r, m

    def train_variants(self, counts: dict[str, int], progress: str | None = None) -> None:
        """:meth:`train_variant` for every ``{variant: number of seeds}``."""
        from tqdm.auto import tqdm
        for variant, n in tqdm(counts.items(), desc=progress, disable=progress is None):
            self.train_variant(variant, n)

    def seeds_of(self, variant: str) -> list[int]:
        return sorted(i for (v, i) in self.results if v == variant)

    def paired(self, a: str, b: str) -> list[float]:
        """Per-seed accuracy differences a - b (the same seed index trains both)."""
        return [self.results[(a, i)].accuracy - self.results[(b, i)].accuracy
                for i in self.seeds_of(a) if (b, i) in self.results]

    def balance_variant(self, a: float) -> str:
        """The top-1 variant trained with balancing weight ``a`` (``alpha`` itself is "top-1")."""
        return "top-1" if a == self.alpha else f"top-1 alpha={a}"


# ---------------------------------------------------------------- the framework

def framework_check(x: torch.Tensor, *, n_experts: int, hidden: int) -> dict:
    """Three checks of ``y = sum_i m_i(x) f_i(x)`` on tokens ``x`` (T, d) with a random top-2 MoE.

    ``same_selection``: the gate selects exactly the mask of a :class:`~mpnn.switch.LearnedSwitch`
    with its weights; ``framework_gap``: max |sparse dispatch - dense masked sum over all experts|;
    ``straight_through``: the switch's forward value is the hard top-2 mask and its gradient is the
    softmax's. Draws the layer, then a probe vector, from torch's global generator.
    """
    t, d = x.shape
    layer = moe.make_moe("top2", d, hidden, CLASSES, n_experts, alpha=0.0, z_coef=0.0)
    switch = LearnedSwitch(d, n_experts, mode="topk", k=2)
    switch.load_state_dict(layer.gate.switch.state_dict())
    mask_switch = switch(x)                                        # hard forward value, ST gradient
    routing = layer.gate(x)
    y_sparse, _ = layer(x)                                         # sort-based dispatch, grouped matmuls
    all_experts = layer.experts(x.expand(n_experts, t, d))         # (E, T, 10): every expert
    y_dense = torch.einsum("te,etc->tc", routing.combine(), all_experts)   # sum_i m_i(x) f_i(x)
    v = torch.randn(n_experts)
    g_st = torch.autograd.grad((switch(x) * v).sum(), switch.gate.weight)[0]
    g_soft = torch.autograd.grad((switch.probs(x) * v).sum(), switch.gate.weight)[0]
    hard = torch.allclose(mask_switch.detach(), topk_mask(switch.scores(x).detach(), 2))
    return {"same_selection": torch.allclose(routing.mask(), mask_switch.detach()),
            "framework_gap": float((y_sparse - y_dense).abs().max().detach()),
            "straight_through": bool(torch.allclose(g_st, g_soft, atol=1e-6)) and bool(hard)}


def gumbel_max_check(x_one: torch.Tensor, *, n_experts: int, tau: float, draws: int, seed: int):
    """Gumbel top-1 selections of one input, ``draws`` times, against ``softmax(s)``.

    A peaked router (weights x20, drawn from torch's global generator) makes the test sharp; the
    draws use the gate's training-time ``noise="gumbel"`` path after seeding with ``seed``. Returns
    the largest deviation in standard errors, ``max_i |freq_i - p_i| / sqrt(p_i (1 - p_i) / draws)``,
    and the long table of both distributions.
    """
    gate = moe.TopKGate(x_one.shape[-1], n_experts, k=1, noise="gumbel", tau=tau)
    with torch.no_grad():
        gate.switch.gate.weight.mul_(20)
        s_one = gate.switch.scores(x_one)                          # (1, E)
    torch.manual_seed(seed)
    freq = gate.select(s_one.expand(draws, n_experts)).mean(0)     # (draws, E) one-hot -> frequencies
    p_soft = torch.softmax(s_one[0], -1).detach()
    se = torch.sqrt(p_soft * (1 - p_soft) / draws)
    z = float(((freq - p_soft).abs() / se.clamp_min(1e-12)).max())
    table = pd.DataFrame({"expert": list(range(n_experts)) * 2,
                          "probability": torch.cat([p_soft, freq]).tolist(),
                          "source": ["softmax(s)"] * n_experts + [f"Gumbel top-1, {draws} draws"] * n_experts})
    return z, table


# ---------------------------------------------------------------- tables

def accuracy_table(study: Study, variants: list[str]):
    """Per-seed rows of the variants (accuracy, active MFLOPs, parameters, seconds, routing entropy,
    share of test images no expert processed), and their summary (accuracy mean and 95% CI, means)."""
    rows = []
    for (v, i), r in study.results.items():
        if v not in variants:
            continue
        m = study.models[(v, i)]
        share = r.history[-1].get("share")
        no_expert = float((r.assignment.sum(1) == 0).float().mean()) if r.assignment is not None else 0.0
        rows.append({"variant": v, "seed": i, "accuracy": r.accuracy,
                     "active MFLOPs": active_mflops(m, study.batch_size),
                     "parameters": sum(p.numel() for p in m.parameters()), "seconds": r.seconds,
                     "routing entropy": moe.routing_entropy(share) if share is not None else float("nan"),
                     "test images with no expert": no_expert})
    per_seed = pd.DataFrame(rows)
    means = per_seed.groupby("variant", sort=False)[["active MFLOPs", "parameters", "seconds", "routing entropy",
                                                     "test images with no expert"]].mean().reset_index()
    return per_seed, stats.summarise(per_seed, "variant", "accuracy", bounds=UNIT).merge(means, on="variant")


def balance_tables(study: Study, alphas: list[float]):
    """Routing over training for each balancing weight: ``curves`` (entropy and shares of every
    logged window), ``finals`` (per seed, at the end) and the summary ``balance`` (entropy mean and
    95% CI, max share, accuracy, effective experts ``E^entropy``)."""
    curves, finals = [], []
    for a in alphas:
        variant = study.balance_variant(a)
        for i in study.seeds_of(variant):
            r = study.results[(variant, i)]
            for h in r.history:
                curves.append({"alpha": str(a), "seed": i, "epoch": h["epoch"],
                               "entropy": moe.routing_entropy(h["share"]),
                               **{f"expert {e}": float(h["share"][e]) for e in range(study.n_experts)}})
            finals.append({"alpha": a, "seed": i, "entropy": moe.routing_entropy(r.history[-1]["share"]),
                           "max share": float(r.history[-1]["share"].max()), "accuracy": r.accuracy})
    curves, finals = pd.DataFrame(curves), pd.DataFrame(finals)
    balance = stats.summarise(finals, "alpha", "entropy", bounds=UNIT).merge(
        finals.groupby("alpha")[["max share", "accuracy"]].mean().reset_index(), on="alpha")
    balance["effective experts"] = study.n_experts ** balance["mean"]
    return curves, finals, balance


def capacity_tables(study: Study, capacity_factors: list[float], n: int, per_seed: pd.DataFrame):
    """Top-1 trained with each capacity factor (seeds 0..n-1): per-seed rows and the summary, with
    the dropless top-1 of ``per_seed`` as capacity factor inf."""
    cap = pd.DataFrame([{"capacity factor": c, "seed": i,
                         "dropped while training": study.results[(f"top-1 capacity={c}", i)].dropped,
                         "accuracy": study.results[(f"top-1 capacity={c}", i)].accuracy}
                        for c in capacity_factors for i in range(n)])
    summary = stats.summarise(cap, "capacity factor", "accuracy", bounds=UNIT).merge(
        cap.groupby("capacity factor")["dropped while training"].mean().reset_index(), on="capacity factor")
    dropless = stats.summarise(per_seed[per_seed.variant == "top-1"], "variant", "accuracy", bounds=UNIT)
    dropless = dropless.assign(**{"capacity factor": float("inf"), "dropped while training": 0.0})
    return cap, pd.concat([summary, dropless[summary.columns]])


def capacity_curves(summary: pd.DataFrame) -> pd.DataFrame:
    """Long table for one panel per quantity against the (finite) capacity factor: the dropped
    share (a mean, no interval) and the accuracy (mean and 95% CI)."""
    finite = summary[np.isfinite(summary["capacity factor"])]
    dropped = finite["dropped while training"]
    return pd.concat([
        pd.DataFrame({"capacity factor": finite["capacity factor"], "mean": dropped, "low": dropped,
                      "high": dropped, "quantity": "share of assignments dropped"}),
        finite[["capacity factor", "mean", "low", "high"]].assign(
            quantity="test accuracy (dropless shown in the table)")])


def figure_capacity(summary: pd.DataFrame, *, width: int = 270, height: int = 220) -> alt.FacetChart:
    """:func:`capacity_curves` against the capacity factor, one panel per quantity (each its own y scale;
    the panel headers name the quantity)."""
    chart = plots.line_ci(capacity_curves(summary), "capacity factor", facet="quantity", independent_y=True,
                          y_title="mean over seeds (95% CI)", width=width, height=height,
                          title="dropped assignments and accuracy (dropless shown in the table)")
    chart.facet = alt.Facet("quantity:N", title=None)
    return chart


def specialisation_table(study: Study, variants: list[str], labels: torch.Tensor) -> pd.DataFrame:
    """Per seed, NMI(digit; expert) of the test images' assignments (:func:`mpnn.moe.class_expert_nmi`)."""
    return pd.DataFrame([{"variant": v, "seed": i, "nmi": moe.class_expert_nmi(study.results[(v, i)].assignment, labels)}
                         for v in variants for i in study.seeds_of(v)])


def expert_digit_frame(assignment: torch.Tensor, labels: torch.Tensor) -> pd.DataFrame:
    """Long table of :func:`mpnn.moe.expert_digit_table`: the share of each digit per expert."""
    tab = moe.expert_digit_table(assignment, labels)
    return pd.DataFrame([{"digit": d, "expert": e, "share": float(tab[d, e])}
                         for d in range(tab.shape[0]) for e in range(tab.shape[1])])


def predictions_in_order(model: nn.Module, x: torch.Tensor, order: torch.Tensor, group: int) -> torch.Tensor:
    """Predictions of ``x`` evaluated in groups of ``group`` taken in ``order``, by original index."""
    predictions, _ = predict_in_groups(model.eval(), x[order], group)
    out = torch.empty(len(order), dtype=torch.long)
    out[order.cpu()] = predictions.cpu()
    return out


def predictions_changed(study: Study, variants: list[str], n: int, seed: int) -> pd.DataFrame:
    """Share of test predictions that change when the test batches are reshuffled (seeded
    permutation, same group size), per variant and seed 0..n-1."""
    x = study.test[0]
    shuffle = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    fixed = torch.arange(len(x), device=x.device)
    rows = []
    for v in variants:
        for i in range(n):
            m = study.models[(v, i)]
            changed = predictions_in_order(m, x, fixed, study.batch_size) != predictions_in_order(
                m, x, shuffle, study.batch_size)
            rows.append({"variant": v, "seed": i, "predictions changed": float(changed.float().mean())})
    return pd.DataFrame(rows)


def router_scores(model: moe.TokenChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """(N, E) scores ``s = x W + b`` of a trained token-choice router, on the CPU."""
    with torch.no_grad():
        return model.gate.switch.scores(x).cpu()


def routing_frame(scores: torch.Tensor, labels: torch.Tensor, digit: int, k: int) -> pd.DataFrame:
    """Share of one digit's images that reach each expert with a top-k selection over ``scores``."""
    m = topk_mask(scores[labels == digit], k)
    return pd.DataFrame({"expert": list(range(scores.shape[1])), "share": m.mean(0).tolist(), "digit": digit, "k": k})


def routing_overview(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 2)) -> pd.DataFrame:
    """:func:`routing_frame` of every digit and every k in ``ks``."""
    return pd.concat([routing_frame(scores, labels, d, k) for d in range(CLASSES) for k in ks])


# ---------------------------------------------------------------- figures

def figure_gumbel_max(table: pd.DataFrame) -> alt.Chart:
    """Grouped bars per expert: softmax probability next to the Gumbel top-1 selection frequency."""
    return alt.Chart(table).mark_bar().encode(
        x=alt.X("source:N", title=None, axis=alt.Axis(labels=False)),
        y=alt.Y("probability:Q", title="probability of selection"),
        color=alt.Color("source:N", title=None), column=alt.Column("expert:O", title="expert")).properties(
        width=40, height=200, title="Gumbel-max: selection frequency = softmax probability")


def figure_expert_shares(curves: pd.DataFrame, n_experts: int, title: str = "") -> alt.Chart:
    """Stacked areas of each expert's share of the training images over training, one row per alpha."""
    long = curves.melt(id_vars=["alpha", "epoch"], value_vars=[f"expert {e}" for e in range(n_experts)],
                       var_name="expert", value_name="share")
    return alt.Chart(long).mark_area().encode(
        x="epoch:Q", y=alt.Y("share:Q", stack="normalize", title="share of images"),
        color=alt.Color("expert:N", scale=alt.Scale(scheme="tableau10")),
        row=alt.Row("alpha:N", title="balancing weight α")).properties(width=420, height=90, title=title)


def figure_digit_routing(scores: torch.Tensor, labels: torch.Tensor, digit: int, k: int) -> alt.Chart:
    """Bars: the share of a digit's test images that reach each expert with top-k routing."""
    return alt.Chart(routing_frame(scores, labels, digit, k)).mark_bar().encode(
        x="expert:O", y=alt.Y("share:Q", scale=alt.Scale(domain=[0, 1]), title="share of the digit's images"),
        tooltip=["expert", "share"]).properties(width=320, height=200,
                                                title=f"digit {digit}: experts reached with top-{k}")


# ================================================================ MoE inside a vision transformer

VIT_VARIANTS = ["dense", "top-1", "expert choice", "soft MoE"]     # one block's MLP replaced
ROUTING_VARIANTS = ["layer-wise top-1", "global path"]              # every block's MLP an MoE


def prepare_images(n_train: int, n_test: int, *, seed: int = 0, device: str | torch.device = "cpu", root=None):
    """Standardised MNIST images ``((x, y), (x_test, y_test))``, x (N, 1, 28, 28), the same seeded subsets
    as :func:`prepare_mnist` (so both parts of the chapter see the same images)."""
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = mnist.load_mnist(split, root=root)
        if not 1 <= n <= len(labels):
            raise ValueError(f"n_{split} must be in 1..{len(labels)}, got {n}")
        idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
        out.append((mnist.to_tensor(images[idx], scale="standard", shape="image", device=device),
                    labels[idx].to(device)))
    return tuple(out)


def cosine_schedule(total_steps: int):
    """Learning-rate factor: linear warm-up over ``max(1, T // 20)`` steps times a cosine decay to 0."""
    warm = max(1, total_steps // 20)
    return lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(t, total_steps) / total_steps))


@dataclass(frozen=True)
class ViTSetup:
    """The chapter's small ViT (:class:`mpnn.tokens.ViTConfig`) and its MoE layers: ``n_experts`` experts
    ``d -> mlp_hidden -> d`` each (ReLU), the Switch balancing weight ``alpha``, the block whose MLP the
    first part replaces (``moe_block``) and the blocks that are MoE layers in the routing comparison."""

    patch: int = 7
    dim: int = 32
    depth: int = 2
    heads: int = 2
    mlp_ratio: float = 2.0
    n_experts: int = 4
    alpha: float = 0.01
    moe_block: int = 1
    routed_blocks: tuple = (0, 1)

    def __post_init__(self):
        if not 0 <= self.moe_block < self.depth or not all(0 <= b < self.depth for b in self.routed_blocks):
            raise ValueError(f"moe_block and routed_blocks must be blocks 0..{self.depth - 1}, got "
                             f"{self.moe_block} and {self.routed_blocks}")
        if self.config.n_tokens % self.n_experts:
            raise ValueError(f"n_experts ({self.n_experts}) must divide the {self.config.n_tokens} tokens "
                             "(expert choice and soft MoE give every expert n/E tokens or slots per image)")

    @property
    def config(self) -> ViTConfig:
        return ViTConfig(patch=self.patch, dim=self.dim, depth=self.depth, heads=self.heads,
                         mlp_ratio=self.mlp_ratio, select_after=0)


def vit_mlp(kind: str, setup: ViTSetup) -> nn.Module:
    """One block's MLP as a :class:`mpnn.moe.TokenMoE`: ``dense`` (one ReLU MLP of the experts' width),
    ``top-1`` (Switch router), ``expert choice`` (capacity 1: each expert takes n/E tokens of each image),
    ``soft MoE`` (n/E slots per expert: E*S = n slots per image)."""
    c = setup.config
    d, h, E = c.dim, c.mlp_hidden, setup.n_experts
    specs = {"dense": ("dense", {}), "top-1": ("switch", {"alpha": setup.alpha}),
             "expert choice": ("expert_choice", {"capacity_factor": 1.0}),
             "soft MoE": ("soft", {"slots_per_expert": c.n_tokens // E})}
    if kind not in specs:
        raise ValueError(f"unknown MLP kind {kind!r}; choose one of {list(specs)}")
    name, kwargs = specs[kind]
    return moe.TokenMoE(moe.make_moe(name, d, h, d, E, **kwargs))


def build_vit(variant: str, setup: ViTSetup) -> nn.Module:
    """The ViT of a variant: one of :data:`VIT_VARIANTS` (block ``moe_block``'s MLP replaced by
    :func:`vit_mlp`) or :data:`ROUTING_VARIANTS` (every block of ``routed_blocks`` an MoE layer: layer-wise
    top-1 routers, or :class:`mpnn.moe.PathMoE` layers sharing one :class:`mpnn.moe.GlobalRouter` that
    decides on the first of them)."""
    c = setup.config
    if variant in VIT_VARIANTS:
        return TokenViT(c, lambda i: vit_mlp(variant, setup) if i == setup.moe_block else None)
    if variant == "layer-wise top-1":
        return TokenViT(c, lambda i: vit_mlp("top-1", setup) if i in setup.routed_blocks else None)
    if variant == "global path":
        router = moe.GlobalRouter(c.dim, setup.n_experts, alpha=setup.alpha)
        first = min(setup.routed_blocks)
        return TokenViT(c, lambda i: moe.PathMoE(moe.Experts(setup.n_experts, c.dim, c.mlp_hidden, c.dim), router,
                                                 decide=i == first) if i in setup.routed_blocks else None)
    raise ValueError(f"unknown ViT variant {variant!r}; choose one of {VIT_VARIANTS + ROUTING_VARIANTS}")


def moe_layers(model: nn.Module) -> list[nn.Module]:
    """The model's :class:`mpnn.moe.TokenMoE` / :class:`mpnn.moe.PathMoE` layers, in block order."""
    return [m for m in model.modules() if isinstance(m, (moe.TokenMoE, moe.PathMoE))]


def mlp_mflops(model: nn.Module) -> float:
    """Active MFLOPs per image of the model's MoE layers (experts, routers, soft MoE's dispatch/combine)."""
    c = model.config
    n, total = c.n_tokens, 0.0
    for m in moe_layers(model):
        if isinstance(m, moe.PathMoE):
            total += n * m.experts.flops_per_token() + 2 * c.dim * m.experts.n_experts * (m.decide)
        elif isinstance(m.layer, moe.SoftMoE):
            total += n * m.layer.active_flops_per_token(n)
        elif isinstance(m.layer, moe.ExpertChoiceMoE):
            E = m.layer.experts.n_experts
            total += E * (n // E) * m.layer.experts.flops_per_token() + n * 2 * c.dim * E
        else:
            total += n * m.layer.active_flops_per_token()
    return total / 1e6


@dataclass
class ViTResult:
    accuracy: float
    load: torch.Tensor                # (steps, L, E) tokens per expert of every MoE layer at every training step
    assignment: list                  # L tensors (N_test, n, E): expert mass of every test token
    predictions: torch.Tensor         # (N_test,)
    seconds: float


@torch.no_grad()
def vit_routing(model: nn.Module, x: torch.Tensor, batch_size: int = 1000):
    """Predictions (N,) and, per MoE layer, the test tokens' expert mass (N, n, E) (eval mode, in batches)."""
    model.eval()
    preds, per_layer = [], []
    for xb in x.split(batch_size):
        preds.append(model(xb).argmax(-1).cpu())
        per_layer.append([s.assignment.reshape(len(xb), -1, s.assignment.shape[-1]).cpu()
                          for s in moe.routing_stats(model) if s.assignment is not None])
    layers = [torch.cat([b[l] for b in per_layer]) for l in range(len(per_layer[0]))] if per_layer[0] else []
    return torch.cat(preds), layers


def fit_vit(model: nn.Module, train, test, *, epochs: int, batch_size: int, lr: float, seed: int,
            progress: str | None = None, cpu_threads: int | None = 1) -> ViTResult:
    """Adam (fused) with :func:`cosine_schedule` on cross-entropy + the MoE layers' balancing losses,
    through :func:`mpnn.infra.train.fit`; logs every step's expert load per MoE layer; evaluates on ``test``."""
    (x, y), (xt, yt) = train, test
    loads = []

    def loss_fn(batch, step):
        ce = F.cross_entropy(model(batch[0]), batch[1])
        routed = moe.routing_stats(model)
        if any(s.assignment is not None for s in routed):
            loads.append(torch.stack([s.assignment.sum(0) for s in routed if s.assignment is not None]))
        return ce + sum((s.aux_loss for s in routed), 0.0)
    total = epochs * math.ceil(len(x) / batch_size)
    with determinism.cpu_threads(cpu_threads, x.device):
        history = fit(model, loss_fn, (x, y), adam(model.parameters(), lr), epochs=epochs, batch_size=batch_size,
                      seed=seed, schedule=cosine_schedule(total), progress=progress)
        predictions, assignment = vit_routing(model, xt)
    load = torch.stack(loads).cpu() if loads else torch.zeros(0)
    return ViTResult(float((predictions == yt.cpu()).float().mean()), load, assignment, predictions, history.seconds)


@dataclass
class ViTStudy:
    """The transformer part's trained models, ``results`` keyed by (variant, seed index); seed index i fixes
    the initialisation and the batch order of every variant (differences are paired by seed)."""

    train: tuple
    test: tuple
    seeds: list[int]
    setup: ViTSetup
    epochs: int
    batch_size: int
    lr: float
    results: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)

    def train_variants(self, variants: list[str], n: int, progress: str | None = None) -> None:
        """Seeds 0..n-1 of every variant (those not trained yet), one after the other."""
        from tqdm.auto import tqdm
        todo = [(v, i) for v in variants for i in range(n) if (v, i) not in self.results]
        for v, i in tqdm(todo, desc=progress, disable=progress is None):
            determinism.seed_everything(self.seeds[i])
            model = build_vit(v, self.setup).to(self.train[0].device)
            self.results[(v, i)] = fit_vit(model, self.train, self.test, epochs=self.epochs,
                                           batch_size=self.batch_size, lr=self.lr, seed=self.seeds[i])
            self.models[(v, i)] = model

    def seeds_of(self, variant: str) -> list[int]:
        return sorted(i for (v, i) in self.results if v == variant)

    def paired(self, a: str, b: str) -> list[float]:
        """Per-seed accuracy differences a - b."""
        return [self.results[(a, i)].accuracy - self.results[(b, i)].accuracy
                for i in self.seeds_of(a) if (b, i) in self.results]


def token_nmi(assignment: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    """NMI(label; expert) of token masses (N, n, E) with one label per token (N, n)."""
    return moe.class_expert_nmi(assignment.reshape(-1, assignment.shape[-1]), labels.reshape(-1), n_classes)


def vit_table(study: ViTStudy, variants: list[str]):
    """Per-seed rows (accuracy, active MLP MFLOPs, parameters, seconds, and per MoE layer the routing entropy of
    the last tenth of training, NMI(patch position; expert) and NMI(digit; expert) of the test tokens' expert
    mass, experts an image's tokens use) and the accuracy summary (mean, 95% CI) with the means of the other columns."""
    labels = study.test[1].cpu()
    rows = []
    for (v, i), r in study.results.items():
        if v not in variants:
            continue
        m = study.models[(v, i)]
        base = {"variant": v, "seed": i, "accuracy": r.accuracy, "MoE/MLP MFLOPs": mlp_mflops(m),
                "parameters": sum(p.numel() for p in m.parameters()), "seconds": r.seconds}
        if not r.assignment:
            rows.append(base | {"layer": -1})
        for l, a in enumerate(r.assignment):
            N, n, E = a.shape
            tail = r.load[-max(1, len(r.load) // 10):, l].sum(0)
            pos = torch.arange(n).expand(N, n)
            rows.append(base | {"layer": l, "routing entropy": moe.routing_entropy(tail),
                                "NMI position": token_nmi(a, pos, n),
                                "NMI digit": moe.class_expert_nmi(a.sum(1), labels),
                                "experts per image": float((a.sum(1) > 0).sum(-1).float().mean())})
    per_seed = pd.DataFrame(rows)
    first = per_seed.drop_duplicates(["variant", "seed"])
    means = per_seed.groupby("variant", sort=False).mean(numeric_only=True).drop(columns=["seed", "accuracy", "layer"])
    summary = stats.summarise(first, "variant", "accuracy", bounds=UNIT).merge(means.reset_index(), on="variant")
    return per_seed, summary


def position_frame(study: ViTStudy, variants: list[str], seed: int = 0, layer: int = 0) -> pd.DataFrame:
    """Long table: share of the test tokens at each patch position (row, column of the grid) that each expert
    processes (expert mass, summed to 1 over experts), for one seed and MoE layer of each variant."""
    rows = []
    for v in variants:
        a = study.results[(v, seed)].assignment[layer]          # (N, n, E)
        share = a.sum(0) / a.sum((0, 2)).clamp_min(1e-12)[:, None]   # (n, E)
        g = int(round(share.shape[0] ** 0.5))
        rows += [{"variant": v, "expert": f"expert {e}", "row": j // g, "column": j % g, "share": float(share[j, e])}
                 for j in range(share.shape[0]) for e in range(share.shape[1])]
    return pd.DataFrame(rows)


def digit_frame(study: ViTStudy, variants: list[str], seed: int = 0, layer: int = 0) -> pd.DataFrame:
    """Long table: share of each digit's token mass per expert (:func:`mpnn.moe.expert_digit_table`)."""
    labels = study.test[1].cpu()
    return pd.concat([expert_digit_frame(study.results[(v, seed)].assignment[layer].sum(1), labels).assign(variant=v)
                      for v in variants])


def load_curves(study: ViTStudy, variants: list[str], windows: int = 20) -> pd.DataFrame:
    """Per variant, seed, MoE layer and training window (``windows`` equal windows of steps): the routing
    entropy of the window's load and each expert's share."""
    rows = []
    for (v, i), r in study.results.items():
        if v not in variants or not len(r.load):
            continue
        steps = len(r.load)
        for l in range(r.load.shape[1]):
            for w, chunk in enumerate(r.load[:, l].chunk(windows)):
                load = chunk.sum(0)
                share = load / load.sum()
                rows.append({"variant": v, "seed": i, "layer": f"MoE layer {l}", "epoch":
                             (w + 1) * study.epochs / min(windows, steps), "entropy": moe.routing_entropy(load),
                             **{f"expert {e}": float(share[e]) for e in range(len(share))}})
    return pd.DataFrame(rows)


def layer_agreement(result: ViTResult) -> float:
    """NMI between the experts of a test token in the first and the second MoE layer (hard argmax experts):
    1 = the second layer's expert is a function of the first's (as on a global path), 0 = independent."""
    a0, a1 = (a.reshape(-1, a.shape[-1]).argmax(-1) for a in result.assignment[:2])
    used, first = torch.unique(a0, return_inverse=True)      # the first layer's experts in use, as classes
    return moe.class_expert_nmi(F.one_hot(a1, result.assignment[1].shape[-1]).double(), first, len(used))


def routing_comparison(study: ViTStudy, variants: list[str]) -> pd.DataFrame:
    """Per variant and seed: accuracy, experts per image (mean over MoE layers), NMI(digit; expert)
    (mean over layers), agreement of the two layers' experts (:func:`layer_agreement`)."""
    labels = study.test[1].cpu()
    rows = []
    for v in variants:
        for i in study.seeds_of(v):
            r = study.results[(v, i)]
            rows.append({"variant": v, "seed": i, "accuracy": r.accuracy,
                         "experts per image": float(np.mean([(a.sum(1) > 0).sum(-1).float().mean() for a in r.assignment])),
                         "NMI digit": float(np.mean([moe.class_expert_nmi(a.sum(1), labels) for a in r.assignment])),
                         "layer agreement": layer_agreement(r)})
    return pd.DataFrame(rows)


def figure_position_routing(frame: pd.DataFrame) -> alt.Chart:
    """Grid heatmaps: rows = variants, columns = experts, each a patch-grid map of the share of tokens."""
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("column:O", title=None, axis=None), y=alt.Y("row:O", title=None, axis=None),
        color=alt.Color("share:Q", scale=alt.Scale(scheme="viridis", domain=[0, 1]), title="share"),
        tooltip=["variant", "expert", "row", "column", alt.Tooltip("share:Q", format=".2f")]).properties(
        width=90, height=90).facet(row=alt.Row("variant:N", title=None), column=alt.Column("expert:N", title=None)
                                   ).properties(title="share of the tokens at each patch position per expert")


def figure_load_shares(curves: pd.DataFrame, n_experts: int, title: str = "") -> alt.Chart:
    """Stacked areas of each expert's share of the tokens over training, one row per variant and layer."""
    long = curves.assign(panel=curves["variant"] + ", " + curves["layer"]).melt(
        id_vars=["panel", "epoch"], value_vars=[f"expert {e}" for e in range(n_experts)], var_name="expert",
        value_name="share")
    return alt.Chart(long).mark_area().encode(
        x="epoch:Q", y=alt.Y("share:Q", stack="normalize", title="share of tokens"),
        color=alt.Color("expert:N", scale=alt.Scale(scheme="tableau10")),
        row=alt.Row("panel:N", title=None)).properties(width=420, height=70, title=title)


def check_vit_seeds(vit_n_seeds: int, n_seeds: int) -> None:
    """Raise unless the transformer part has 2..n_seeds seeds (intervals need two; seeds come from the chapter's list)."""
    if not 2 <= vit_n_seeds <= n_seeds:
        raise ValueError(f"need 2 <= vit_n_seeds <= n_seeds (= {n_seeds}) for confidence intervals, got {vit_n_seeds}")


def layer_digit_frame(study: ViTStudy, variants: list[str], seed: int = 0) -> pd.DataFrame:
    """:func:`digit_frame` of every MoE layer of the variants, with a ``model and MoE layer`` column
    "variant, MoE layer l" (one panel each)."""
    layers = len(study.results[(variants[0], seed)].assignment)
    frame = pd.concat([digit_frame(study, variants, seed, l).assign(layer=f"MoE layer {l}") for l in range(layers)])
    return frame.assign(**{"model and MoE layer": frame["variant"] + ", " + frame["layer"]})


def figure_routing_bars(grid: pd.DataFrame) -> alt.Chart:
    """Bars of :func:`routing_overview`'s share per expert (the site explorer filters one digit and k)."""
    return alt.Chart(grid).mark_bar().encode(
        x="expert:O", y=alt.Y("share:Q", scale=alt.Scale(domain=[0, 1]), title="share of the digit's images"),
        tooltip=["digit", "k", "expert", alt.Tooltip("share:Q", format=".2f")]).properties(
        width=320, height=200, title="experts reached by a digit's test images with top-k routing")


# ---------------------------------------------------------------- numbers for the prose and the claims

def points(diffs) -> str:
    """A paired accuracy difference in percentage points: ``"+0.69 points (95% CI +0.53 to +0.84)"``
    (Student t over seeds; a difference is not bounded)."""
    m, lo, hi = stats.mean_ci(diffs)
    return f"{100 * m:+.2f} points (95% CI {100 * lo:+.2f} to {100 * hi:+.2f})"


def ci_text(values, digits: int = 2, bounds=UNIT, scale: float = 1.0, unit: str = "") -> str:
    """A bounded quantity's mean and 95% CI inside its range: ``"0.19 (95% CI 0.14-0.24)"``."""
    m, lo, hi = stats.mean_ci(values, bounds=bounds)
    return f"{scale * m:.{digits}f}{unit} (95% CI {scale * lo:.{digits}f}-{scale * hi:.{digits}f}{unit})"


def decide_text(values, thresholds) -> str:
    """For an undecided interval: how many seeds would put it on one side of each threshold, if its
    mean and spread stayed as measured (:func:`mpnn.runtime.stats.seeds_to_decide`)."""
    values = list(values)
    need = [n for n in (stats.seeds_to_decide(values, t) for t in thresholds) if n is not None]
    return (f"about {min(need)} seeds would decide it ({len(values)} measured)" if need
            else "its mean sits on the threshold: more seeds alone would not decide it")


def diff_claim(diffs, *, above: float, refuted_below: float | None = None) -> tuple[str, str]:
    """The measurement and the verdict on "the paired difference lies above ``above``" (not supported
    when its 95% CI lies below ``refuted_below``, default ``above``), with the seeds that would decide
    an undecided interval."""
    diffs = list(diffs)
    _, lo, hi = stats.mean_ci(diffs)
    verdict = verdicts.from_interval(lo, hi, above=above, refuted_below=refuted_below)
    edges = [above] if refuted_below is None else [above, refuted_below]
    extra = f"; {decide_text(diffs, edges)}" if verdict == "inconclusive" else ""
    return f"{points(diffs)}, n={len(diffs)}{extra}", verdict


def level_claim(values, *, above: float | None = None, below: float | None = None, bounds=UNIT,
                digits: int = 2) -> tuple[str, str]:
    """The measurement and the verdict on "the bounded quantity lies above ``above``" (or below
    ``below``), decided on its 95% CI inside ``bounds``."""
    values = list(values)
    _, lo, hi = stats.mean_ci(values, bounds=bounds)
    verdict = verdicts.from_interval(lo, hi, above=above, below=below)
    extra = f"; {decide_text(values, [above if below is None else below])}" if verdict == "inconclusive" else ""
    return f"{ci_text(values, digits, bounds)}, n={len(values)}{extra}", verdict
