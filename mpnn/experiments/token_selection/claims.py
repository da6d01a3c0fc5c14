"""The document says / this book measured: the per-seed numbers the claims are decided on, and each claim's
statement, criterion, measurement and verdict, as the keyword arguments of :meth:`mpnn.runtime.repro.Run.claim`.

The accuracy claims read :func:`accuracy_numbers` (``acc``), the training-budget claims :func:`budget_numbers`
(``bud``), the timing claims the results of :func:`latency_claim` and :func:`train_step_claim`."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from mpnn.runtime import stats, verdicts
from mpnn.tokens import ViTConfig, keep_count

from .budget import ALL_TOKENS, SAME_FLOPS, SAME_STEPS, paired_gap
from .data import MERGING, RANDOM, SELECTION, relative_flops
from .training import per_seed

_BUDGET_SECTION = "Training on the kept tokens: does selection save training time?"
_ACCURACY_SECTION = "Accuracy against tokens and FLOPs"
_LATENCY_SECTION = "Predicted against measured speed-up"


def drop_within_margin(drop: pd.Series, margin: float) -> tuple[str, str]:
    """Verdict on "the accuracy drop is small" and its measurement: ``supported`` when the 95% CI of the
    per-seed drop (a difference of accuracies, unbounded interval) lies below ``margin``, ``not supported`` when
    it lies above it, ``inconclusive`` otherwise (the text then says how many seeds would decide it at the
    measured spread, :func:`mpnn.runtime.stats.seeds_to_decide`)."""
    m, lo, hi = stats.mean_ci(drop)
    verdict = verdicts.from_interval(lo, hi, below=margin)
    text = (f"drop {100*m:.2f} pp (95% CI {100*lo:.2f} to {100*hi:.2f}, {len(drop)} seeds; per seed "
            f"{100*drop.min():.2f} to {100*drop.max():.2f})")
    if verdict == "inconclusive":
        n = stats.seeds_to_decide(drop, margin) if len(drop) > 1 else None
        text += (f"; at this spread about {n} seeds would decide the {100*margin:.1f} pp margin" if n else
                 "; the mean sits on the margin")
    return verdict, text


def accuracy_numbers(sweep: pd.DataFrame, config: ViTConfig, *, rho_claim: float, rhos: Sequence[float],
                     merge_rs: Sequence[int]) -> dict:
    """Per seed (indexed by seed): all-token accuracy (``full_acc``), the drop from it of learned selection at
    ``rho_claim`` (``drop``), of random selection (``drop_rand``) and of ToMe at the largest r (``drop_m``), the
    learned drop as a share of the random one (``share``), learned minus random accuracy at the smallest keep
    ratio (``gain``) and ToMe's drop minus selection's (``excess``); with the settings they are read at
    (``rho_claim``, ``rho_min``, ``r_max``), the tokens kept at ``rho_claim`` (``k_claim``) and the relative FLOPs
    of selection at ``rho_claim`` (``fl``) and of ToMe (``fl_m``)."""
    rho_min, r_max = min(rhos), max(merge_rs)
    full_acc = per_seed(sweep, SELECTION, rho=1.0)
    drop = full_acc - per_seed(sweep, SELECTION, rho=rho_claim)
    drop_rand = full_acc - per_seed(sweep, RANDOM, rho=rho_claim)
    drop_m = full_acc - per_seed(sweep, MERGING, r=r_max)
    return {"rho_claim": rho_claim, "rho_min": rho_min, "r_max": r_max, "full_acc": full_acc, "drop": drop,
            "drop_rand": drop_rand, "share": drop / drop_rand, "drop_m": drop_m, "excess": drop_m - drop,
            "gain": per_seed(sweep, SELECTION, rho=rho_min) - per_seed(sweep, RANDOM, rho=rho_min),
            "k_claim": keep_count(config.n_tokens, rho_claim), "fl": relative_flops(config, dict(rho=rho_claim)),
            "fl_m": relative_flops(config, dict(r=r_max))}


def budget_numbers(final: pd.DataFrame, config: ViTConfig, budget_rho: float) -> dict:
    """From :func:`run_budget`'s ``final``, paired by seed: kept-token minus all-token accuracy at the same FLOPs
    (``same``; ``same_all`` with all tokens at inference) and at the same steps (``fewer``), the recipes' training
    FLOPs as a share of the budget (``frac_same``, ``frac_fewer``), the all-token accuracy (``acc_budget``), the
    number of seeds (``n``) and of tokens kept at ``budget_rho`` (``k_budget``)."""
    acc_budget = final[final.arm == ALL_TOKENS]["accuracy"]
    return {"n": len(acc_budget), "k_budget": keep_count(config.n_tokens, budget_rho),
            "same": paired_gap(final, SAME_FLOPS),
            "same_all": paired_gap(final, SAME_FLOPS, "accuracy, all tokens at inference"),
            "frac_same": final[final.arm == SAME_FLOPS]["budget fraction"].mean(), "acc_budget": acc_budget,
            "fewer": paired_gap(final, SAME_STEPS),
            "frac_fewer": final[final.arm == SAME_STEPS]["budget fraction"].mean()}


def same_flops_verdict(same: pd.Series) -> tuple[str, int | None]:
    """The verdict on "kept-token training is more accurate at the same training FLOPs" (the 95% CI of the paired
    gap ``same`` above 0) and, when it is inconclusive, how many seeds would decide it."""
    _, lo, hi = stats.mean_ci(same)
    verdict = verdicts.from_interval(lo, hi, above=0)
    return verdict, (stats.seeds_to_decide(same, 0) if verdict == "inconclusive" else None)


# ---------------------------------------------------------------- training on the kept tokens

def claim_kept_token_training_same_flops(bud: dict, *, budget_epochs: int, budget_selected_epochs: int) -> dict:
    """Decides the open question: does training on the kept tokens give a more accurate model for the same FLOPs?"""
    same, same_all, acc_budget = bud["same"], bud["same_all"], bud["acc_budget"]
    v_same, n_same = same_flops_verdict(same)
    return dict(
        id="kept-token-training-same-flops", kind="open question",
        document=("Token selection that improves training for a fixed compute budget is an open challenge: "
                  "does training on the kept tokens give a more accurate model for the same training FLOPs?"),
        criterion=(f"kept-token training ({budget_selected_epochs} epochs on {bud['k_budget']} gathered tokens) "
                   f"against all-token training ({budget_epochs} epochs), about the same training FLOPs, paired by "
                   "seed: supported if the 95% CI of the accuracy gap lies above 0, not supported if it lies below 0, "
                   "inconclusive otherwise"),
        measured=(f"at {bud['frac_same']:.3f} of the all-token training FLOPs: accuracy minus all-token training "
                  f"{stats.fmt_ci(same, 2, scale=100, unit=' pp')}; with all tokens at inference "
                  f"{stats.fmt_ci(same_all, 2, scale=100, unit=' pp')}; all-token training "
                  f"{stats.fmt_ci(acc_budget, 4, bounds=(0, 1))}"
                  + (f"; at this spread about {n_same} seeds would decide it" if n_same else "")),
        verdict=v_same, expected="inconclusive", needs="default", section=_BUDGET_SECTION)


def claim_kept_token_training_same_steps(bud: dict) -> dict:
    """Decides the control: training on the kept tokens for the same steps costs accuracy."""
    fewer = bud["fewer"]
    _, lo_fewer, hi_fewer = stats.mean_ci(fewer)
    return dict(
        id="kept-token-training-same-steps", kind="extension",
        document=("The book's control: training on the kept tokens for the same number of steps saves training "
                  "FLOPs and costs accuracy"),
        criterion=("paired by seed, kept-token minus all-token training, both for the same epochs: supported if "
                   "the 95% CI of the accuracy gap lies below 0, not supported if it lies above 0, "
                   "inconclusive otherwise"),
        measured=(f"at {bud['frac_fewer']:.3f} of the all-token training FLOPs: accuracy minus all-token training "
                  f"{stats.fmt_ci(fewer, 2, scale=100, unit=' pp')}"),
        verdict=verdicts.from_interval(lo_fewer, hi_fewer, below=0), expected="supported", needs="default",
        section=_BUDGET_SECTION)


def claim_training_step_time(step: dict, config: ViTConfig, large_config: ViTConfig, *, budget_rho: float,
                             speedup_margin: float) -> dict:
    """Decides the open question's premise: a training step on fewer tokens takes less time (both model sizes)."""
    return dict(
        id="training-step-time", timing=True, kind="open question",
        document=("Training on fewer tokens takes less time (the premise of the open question on training time: "
                  "fewer tokens, less computation)"),
        criterion=(f"one training step on all tokens against one on the kept tokens (rho={budget_rho:g}), for the "
                   f"chapter's model ({config.n_tokens} tokens of width {config.dim}) and the full profile's "
                   f"({large_config.n_tokens} of width {large_config.dim}): each part supported if the 95% CI of "
                   f"the speed-up lies above {speedup_margin:g}x, not supported if it lies below 1x, inconclusive "
                   "otherwise; both parts supported: supported, one: mixed"),
        measured=step["measured"], verdict=step["verdict"], expected="mixed", needs="default",
        note="decided by mpnn.experiments.token_selection.train_step_claim (interleaved rounds, one thread)",
        section="Training-step time: measured against the FLOP prediction")


# ---------------------------------------------------------------- selection and merging at inference

def claim_selection_keeps_accuracy(acc: dict, config: ViTConfig, accuracy_margin: float) -> dict:
    """Decides "keeping only the most relevant tokens saves compute at a small loss of accuracy"."""
    v_drop, drop_text = drop_within_margin(acc["drop"], accuracy_margin)
    return dict(
        id="selection-keeps-accuracy", kind="claim",
        document="Keeping only the most relevant tokens saves compute at a small loss of accuracy",
        criterion=(f"learned selection at rho={acc['rho_claim']:g}, accuracy drop from all tokens per seed: supported "
                   f"if its 95% CI lies below {100*accuracy_margin:.1f} pp (the book's reading of \"small\"; the "
                   "document gives no number), not supported if it lies above, inconclusive otherwise"),
        measured=(f"{acc['k_claim']} of {config.n_tokens} tokens, {acc['fl']:.3f} of the FLOPs: {drop_text}; "
                  f"all-token accuracy {stats.fmt_ci(acc['full_acc'], 4, bounds=(0, 1))}"),
        verdict=v_drop, expected="inconclusive", needs="default", section=_ACCURACY_SECTION)


def claim_selection_loss_vs_random(acc: dict, small_share: float) -> dict:
    """Decides the control: the learned selection's loss is small next to random dropping's."""
    share = acc["share"]      # per seed: the learned selection's loss as a share of random selection's
    _, lo_s, hi_s = stats.mean_ci(share)
    return dict(
        id="selection-loss-vs-random", kind="extension",
        document=("The book's control: the learned selection's accuracy loss is small next to what dropping the "
                  "same number of tokens at random costs"),
        criterion=(f"per seed, at rho={acc['rho_claim']:g}, the learned selection's drop as a share of random "
                   f"selection's: supported if its 95% CI lies below {small_share:g}, not supported if it lies above, "
                   "inconclusive otherwise"),
        measured=(f"random selection loses {stats.fmt_ci(acc['drop_rand'], 2, scale=100, unit=' pp')}; the learned "
                  f"loss is {stats.fmt_ci(share, 3)} of it"),
        verdict=verdicts.from_interval(lo_s, hi_s, below=small_share), expected="supported", needs="default",
        section=_ACCURACY_SECTION)


def claim_scorer_picks_informative_tokens(acc: dict, config: ViTConfig) -> dict:
    """Decides "routing decisions are meaningful": learned beats random selection at the smallest keep ratio."""
    rho_min, gain = acc["rho_min"], acc["gain"]
    _, lo_g, hi_g = stats.mean_ci(gain)
    return dict(
        id="scorer-picks-informative-tokens", kind="next check",
        document=("Routing decisions reflect meaningful patterns in the data rather than arbitrary selections: "
                  "the learned subsampling keeps the relevant part of the input"),
        criterion=(f"at the smallest keep ratio, rho={rho_min:g}, learned minus random selection accuracy per seed "
                   "(same model): supported if its 95% CI lies above 0, not supported if it lies below 0, "
                   "inconclusive otherwise"),
        measured=(f"{keep_count(config.n_tokens, rho_min)} of {config.n_tokens} tokens: learned minus random "
                  f"{stats.fmt_ci(gain, 2, scale=100, unit=' pp')}"),
        verdict=verdicts.from_interval(lo_g, hi_g, above=0), expected="supported", needs="default",
        section="Which patches are kept")


def claim_merging_without_training(acc: dict, accuracy_margin: float) -> dict:
    """Decides "merging similar tokens (ToMe) saves compute at a small loss of accuracy without retraining"."""
    v_merge, merge_text = drop_within_margin(acc["drop_m"], accuracy_margin)
    return dict(
        id="merging-without-training", kind="claim",
        document=("Similar tokens can be merged (ToMe) instead of dropped, saving compute at a small loss of "
                  "accuracy without retraining"),
        criterion=(f"ToMe with r={acc['r_max']} tokens merged per block on the trained models, accuracy drop from "
                   f"all tokens per seed: supported if its 95% CI lies below {100*accuracy_margin:.1f} pp (the same "
                   "margin as selection), not supported if it lies above, inconclusive otherwise"),
        measured=f"{acc['fl_m']:.3f} of the FLOPs: {merge_text}",
        verdict=v_merge, expected="inconclusive", needs="default", section=_ACCURACY_SECTION)


def claim_merging_vs_selection(acc: dict) -> dict:
    """Decides the comparison: merging without retraining loses more accuracy than trained selection."""
    rho_claim, fl, fl_m = acc["rho_claim"], acc["fl"], acc["fl_m"]
    _, lo_x, hi_x = stats.mean_ci(acc["excess"])
    return dict(
        id="merging-vs-selection", kind="extension",
        document=("The book's comparison: merging without retraining loses more accuracy than trained selection "
                  f"at rho={rho_claim:g}" + (", which costs fewer FLOPs" if fl <= fl_m else "")),
        criterion=(f"per seed, ToMe r={acc['r_max']} drop minus learned selection's drop at rho={rho_claim:g}: "
                   "supported if its 95% CI lies above 0, not supported if it lies below 0, inconclusive otherwise"),
        measured=(f"merging ({fl_m:.3f} of the FLOPs) minus selection ({fl:.3f}): "
                  f"{stats.fmt_ci(acc['excess'], 2, scale=100, unit=' pp')}"),
        verdict=verdicts.from_interval(lo_x, hi_x, above=0), expected="supported", needs="default",
        section=_ACCURACY_SECTION)


def _latency(id: str, document: str, setting: str, result: dict, expected: str, speedup_margin: float) -> dict:
    """A latency claim on :func:`latency_claim`'s ``result`` for the reduction ``setting``."""
    return dict(
        id=id, timing=True, kind="claim", document=document,
        criterion=(f"{setting}; speed-up = all-token latency / reduced latency, median of paired interleaved rounds "
                   f"on one thread: supported if its 95% CI lies above {speedup_margin:g}x, not supported if it lies "
                   "below 1x, inconclusive otherwise"),
        measured=result["measured"], verdict=result["verdict"], expected=expected, needs="default",
        note="decided by mpnn.experiments.token_selection.latency_claim", section=_LATENCY_SECTION)


def claim_latency_follows_flops(lat: dict, *, rho_claim: float, speedup_margin: float) -> dict:
    """Decides "keeping fewer tokens lowers the latency at inference" on :func:`latency_claim`'s result."""
    return _latency("latency-follows-flops", "Keeping fewer tokens means less computation, and so lower latency at "
                    "inference", f"learned selection at rho={rho_claim:g}", lat, "supported", speedup_margin)


def claim_merging_latency(lat_merge: dict, *, r: int, speedup_margin: float) -> dict:
    """Decides "merging similar tokens (ToMe) saves latency at inference" on :func:`latency_claim`'s result."""
    return _latency("merging-latency", "Merging similar tokens (ToMe) saves compute, and so latency, at inference",
                    f"ToMe with r={r}", lat_merge, "not supported", speedup_margin)
