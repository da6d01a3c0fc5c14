"""The figures the chapter shows."""
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
from mpnn.data import mnist
from mpnn.infra import determinism
from mpnn.infra.train import fit
from mpnn.runtime import stats
from mpnn.tokens import TokenViT, ViTConfig

from .tables import expert_digit_frame, routing_frame
from .training import UNIT, adam


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
