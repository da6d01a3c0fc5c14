"""The tables the chapter shows."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import torch
from torch import nn

from mpnn import moe
from mpnn.runtime import plots, stats
from mpnn.switch import topk_mask

from .training import CLASSES, UNIT, predict_in_groups
from .variants import Study, active_mflops


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
