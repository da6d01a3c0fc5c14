"""The variants compared: dense layers, MoE layers of every router kind, the transformer blocks."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mpnn import moe
from mpnn.infra import determinism

from .training import CLASSES, PIXELS, fit_replicas


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
