"""The numbers behind the prose and the claims, and the claims of the MNIST sections: the framework,
width sparsity, balancing, specialisation and routing inside a batch (each ``claim_...`` returns the
keyword arguments of :meth:`mpnn.runtime.repro.Run.claim`)."""
from __future__ import annotations

import pandas as pd

from mpnn.runtime import stats, verdicts

from .training import UNIT


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


SEC_FRAMEWORK = "The framework: a learned mask over a set"
SEC_WIDTH = "Width sparsity: mixture-of-experts on MNIST"
SEC_BALANCE = "Routing collapse and the balancing loss"


def _gain_rule(a: str, b: str, margin: float) -> str:
    """The criterion of "``a`` beats ``b``" on a paired accuracy difference with a margin worth having."""
    return (f"supported if the 95% CI of {a} minus {b} (paired by seed) lies above 0; not supported if "
            f"it lies below +{100 * margin:.1f} points (no gain worth having); inconclusive otherwise")


def claim_mask_framework(check: dict) -> dict:
    """The claim "conditional computation is an input-dependent mask over a set", from :func:`framework_check`."""
    same_selection, framework_gap, st_ok = check["same_selection"], check["framework_gap"], check["straight_through"]
    return dict(
        id="mask-framework", kind="claim",
        document="Conditional computation subsamples a set (tokens, experts, layers) through an input-dependent mask m: "
                 "y = sum_i m_i(x) f_i(x)",
        criterion=("supported if a top-2 MoE gate selects exactly the LearnedSwitch mask, its sparse dispatch equals the dense "
                   "masked sum (every expert evaluated) within 1e-4, and the straight-through mask is binary in the forward "
                   "pass with the softmax's gradient; not supported otherwise"),
        measured=(f"top-2 MoE selection == LearnedSwitch mask: {same_selection}; sparse dispatch vs dense "
                  f"masked sum max gap {framework_gap:.1e}; straight-through forward binary, softmax gradient: {st_ok}"),
        verdict=bool(same_selection and framework_gap < 1e-4 and st_ok), expected="supported", section=SEC_FRAMEWORK)


def claim_gumbel_softmax(gumbel_z: float, n_experts: int, draws: int) -> dict:
    """The claim "Gumbel-softmax's hard sample is a draw from softmax(s)", from :func:`gumbel_max_check`."""
    return dict(
        id="gumbel-softmax", kind="claim",
        document="Differentiable sampling with Gumbel-softmax keeps the mask trainable; its hard sample is a draw from softmax(s)",
        criterion=(f"supported if every expert's selection frequency over the draws lies within 4.5 standard errors of "
                   f"softmax(s) (a bound for {n_experts} simultaneous comparisons); not supported otherwise"),
        measured=f"{draws} Gumbel top-1 draws: largest deviation from softmax(s) {gumbel_z:.2f} standard errors",
        verdict=bool(gumbel_z < 4.5), expected="supported", section=SEC_FRAMEWORK)


def _equal_compute(claim_id: str, document: str, moe: str, dense: str, gain, n_experts: int, margin: float,
                   expected: str) -> dict:
    measured, verdict = diff_claim(gain, above=0, refuted_below=margin)
    return dict(id=claim_id, kind="claim", document=document, criterion=_gain_rule(moe, dense, margin),
                measured=f"{moe} ({n_experts} experts of width h) minus {dense}: {measured}", verdict=verdict,
                expected=expected, needs="default", section=SEC_WIDTH)


def claim_moe_beats_equal_compute(gain_equal, n_experts: int, gain_margin: float) -> dict:
    """The claim "an MoE (two experts per input) beats a dense layer of the same active compute" (top-2 minus dense 2h)."""
    return _equal_compute("moe-beats-equal-compute",
                          "Dynamic width sparsity adds capacity without adding compute per input: an MoE (two experts "
                          "per input) beats a dense layer of the same active compute",
                          "top-2", "dense 2h", gain_equal, n_experts, gain_margin, "supported")


def claim_top1_vs_equal_compute(gain_top1, n_experts: int, gain_margin: float) -> dict:
    """The claim "an MoE running one small expert per input beats a dense layer of its active compute" (top-1 minus dense h)."""
    return _equal_compute("top1-vs-equal-compute",
                          "An MoE that runs one small expert per input does better than a dense layer of the same "
                          "active compute",
                          "top-1", "dense h", gain_top1, n_experts, gain_margin, "not supported")


def _near_big_dense(variant: str, gap, mf: pd.Series, accuracy_margin: float, expected: str) -> dict:
    measured, verdict = diff_claim(gap, above=-accuracy_margin)
    return dict(
        id=("moe" if variant == "top-2" else "top1") + "-near-big-dense", kind="claim",
        document=f"A sparse MoE approaches a dense layer with as many parameters at a fraction of its compute ({variant})",
        criterion=(f"supported if the 95% CI of {variant} minus dense E·h (paired by seed) lies above "
                   f"-{100 * accuracy_margin:.0f} points; not supported if it lies below; inconclusive otherwise"),
        measured=(f"{variant} minus dense E·h: {measured}, at {float(mf[variant] / mf['dense E·h']):.0%} of its "
                  "active FLOPs"),
        verdict=verdict, expected=expected, needs="default", section=SEC_WIDTH)


def claim_moe_near_big_dense(gap_big, mf: pd.Series, accuracy_margin: float) -> dict:
    """The claim "a sparse MoE approaches a dense layer with as many parameters" for top-2 (``mf``: active MFLOPs per variant)."""
    return _near_big_dense("top-2", gap_big, mf, accuracy_margin, "supported")


def claim_top1_near_big_dense(gap_big_top1, mf: pd.Series, accuracy_margin: float) -> dict:
    """The claim "a sparse MoE approaches a dense layer with as many parameters" for top-1 (``mf``: active MFLOPs per variant)."""
    return _near_big_dense("top-1", gap_big_top1, mf, accuracy_margin, "not supported")


def claim_collapse_without_balancing(ent_by_alpha: dict[float, list[float]], n_experts: int) -> dict:
    """The claim "without balancing, routing collapses onto a few experts" (normalised routing entropy per alpha)."""
    measured, verdict = level_claim(ent_by_alpha[0.0], below=0.6)
    return dict(
        id="collapse-without-balancing", kind="claim",
        document="Failure signature: expert starvation, routing collapse (only a few experts are consistently activated)",
        criterion=("supported if the 95% CI (inside [0, 1]) of top-1's normalised routing entropy H(share)/log E at the end "
                   "of training without a balancing loss lies below 0.6; not supported if it lies above; inconclusive otherwise"),
        measured=(f"top-1, alpha=0: normalised routing entropy {measured} (about "
                  f"{n_experts ** stats.mean_ci(ent_by_alpha[0.0])[0]:.1f} effective experts of {n_experts})"),
        verdict=verdict, expected="supported", needs="default", section=SEC_BALANCE)


def claim_balancing_prevents_collapse(ent_by_alpha: dict[float, list[float]]) -> dict:
    """The claim "a balancing loss keeps the experts in use", at the largest balancing weight."""
    _, _, hi_col = stats.mean_ci(ent_by_alpha[0.0], bounds=UNIT)
    top = max(ent_by_alpha)
    measured, verdict = level_claim(ent_by_alpha[top], above=max(0.8, hi_col))
    return dict(
        id="balancing-prevents-collapse", kind="claim",
        document="Expert balancing (a balancing loss) keeps the experts in use",
        criterion=("supported if, with the largest balancing weight, the 95% CI of the normalised routing entropy lies above "
                   "0.8 and above the CI without balancing; not supported if it lies below that; inconclusive otherwise"),
        measured=(f"top-1, alpha={top}: normalised routing entropy {measured} "
                  f"(alpha=0: {level_claim(ent_by_alpha[0.0], below=0.6)[0]})"),
        verdict=verdict, expected="supported", needs="default", section=SEC_BALANCE)


def claim_switch_alpha_one_layer(ent_by_alpha: dict[float, list[float]]) -> dict:
    """The extension "the Switch Transformer's alpha = 0.01 keeps one top-1 MoE layer balanced" (needs 0.01 in the alphas)."""
    measured, verdict = level_claim(ent_by_alpha[0.01], above=0.8)
    return dict(
        id="switch-alpha-one-layer", kind="extension",
        document="The Switch Transformer's balancing weight alpha=0.01 (Fedus et al. 2022) keeps a top-1 MoE layer "
                 "balanced (here: one MoE layer routing raw pixels)",
        criterion=("supported if the 95% CI of the normalised routing entropy with alpha=0.01 lies above 0.8; "
                   "not supported if it lies below; inconclusive otherwise"),
        measured=f"top-1, alpha=0.01: normalised routing entropy {measured}",
        verdict=verdict, expected="not supported", needs="default", section=SEC_BALANCE)


def claim_experts_specialise(spec: pd.DataFrame) -> dict:
    """The claim "routed experts specialise on kinds of input", from :func:`specialisation_table`."""
    measured, verdict = level_claim(spec[spec.variant == "top-1"]["nmi"].tolist(), above=0.1)
    return dict(
        id="experts-specialise", kind="claim",
        document="Modular designs let sub-components specialise: routed experts specialise on kinds of input (here: digits)",
        criterion=("supported if the 95% CI (inside [0, 1]) of the top-1 router's NMI(digit; expert) on the test images lies "
                   "above 0.1; not supported if it lies below; inconclusive otherwise"),
        measured=f"top-1: NMI(digit; expert) {measured} (0: routing ignores the digit)",
        verdict=verdict, expected="supported", needs="default", section="What the experts specialise on")


def changed_range(changed: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per variant, the smallest and the largest share of predictions that reshuffling the test
    batches changed, over seeds (:func:`predictions_changed`)."""
    ch = changed.groupby("variant")["predictions changed"]
    return ch.min(), ch.max()


def claim_batch_dependent_routing(changed: pd.DataFrame, n_seeds_detail: int) -> dict:
    """The extension "expert choice and soft MoE route within a batch; dropless token choice does not"."""
    ch_min, ch_max = changed_range(changed)
    return dict(
        id="batch-dependent-routing", kind="extension",
        document="Routing decisions are local to a routing group: expert choice and soft MoE route within a batch, so a "
                 "prediction depends on the other images; dropless token choice does not",
        criterion=("supported if reshuffling the test batches changes at most one prediction in a thousand of top-1 and top-2 "
                   "in every seed, and more than that of expert choice (c=1) and soft MoE in every seed; not supported otherwise"),
        measured=(f"predictions changed ({n_seeds_detail} seeds): top-1 at most {ch_max['top-1']:.2%}, top-2 at most "
                  f"{ch_max['top-2']:.2%}; expert choice c=1 {ch_min['expert choice c=1']:.2%} to "
                  f"{ch_max['expert choice c=1']:.2%}, soft MoE {ch_min['soft MoE']:.2%} to {ch_max['soft MoE']:.2%}"),
        verdict=bool(ch_max["top-1"] <= 1e-3 and ch_max["top-2"] <= 1e-3 and ch_min["expert choice c=1"] > 1e-3
                     and ch_min["soft MoE"] > 1e-3),
        expected="supported", section="Routing inside a batch")
