"""The document says / this book measured: one function per claim of the chapter, each returning the
keyword arguments of :meth:`mpnn.runtime.repro.Run.claim` (``run.claim(**E.claim_...(...))``).

Every function takes the notebook's results it reads; per-seed arrays are (S,) over the run's seeds.
Accuracies and shares get intervals inside [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mpnn.data import demographics as D
from mpnn.runtime import stats, verdicts

from .data import MID, N_UNITS, SIZES, TRAIN
from .document import DocumentRun
from .scaling import paired_difference

_ACC = (0, 1)                     # the bounds of an accuracy or a share (stats.mean_ci's logit scale)
_fmt = stats.fmt_ci
_ISOLATION = "Isolation, checked"
_COLLECTIVE = "Collective evaluation over seeds, against centralised training"
_LEARNED = "A learned switch (open question 3)"


def _fmt01(x) -> str:
    """The 95% CI of an accuracy or a share, inside [0, 1]."""
    return stats.fmt_ci(x, bounds=_ACC)


def claim_disjoint_subsets(csv: pd.DataFrame, doc: DocumentRun, iso: dict) -> dict:
    """Decides "the 100 observations are split into five disjoint subsets of 20, 30, 10, 20 and 20"."""
    subset_sizes = iso["subset_sizes"]
    return dict(id="disjoint-subsets", kind="claim",
                document="The 100 observations are split into five disjoint subsets of 20, 30, 10, 20 and 20 "
                         "observations, one per neuron",
                criterion="supported if the switch routes each of the 100 shipped observations to exactly one neuron "
                          "and the subsets have the sizes 20, 30, 10, 20, 20; not supported otherwise",
                measured=f"the switch routes all {len(csv)} observations, subset sizes {subset_sizes} for neurons 1-5",
                verdict=subset_sizes == SIZES and len(csv) == 100 and bool((doc.train.A >= 0).all()),
                expected="supported", needs="smoke", section=_ISOLATION)


def claim_isolated_training(iso: dict) -> dict:
    """Decides "each neuron undergoes isolated training ... no cross-neuron gradient sharing"."""
    loop_gap, leak, moved = iso["loop_gap"], iso["leak"], iso["moved"]
    return dict(id="isolated-training", kind="claim",
                document="Each neuron undergoes isolated training, independent of the rest of the network, which "
                         "eliminates cross-neuron gradient sharing",
                criterion="supported if the vectorised training pass equals a per-neuron loop (nn.Linear + SGD each) "
                          "within 1e-6 in float64 and scrambling one neuron's data leaves every other neuron "
                          "bit-identical while the scrambled neuron moves; not supported otherwise",
                measured=f"vectorised pass = per-neuron loop within {loop_gap:.1e}; scrambling neuron 3's data changes "
                         f"the others by {leak:.1e} and neuron 3 by {moved:.2f}",
                verdict=loop_gap < 1e-6 and leak == 0.0 and moved > 0,
                expected="supported", needs="smoke", section=_ISOLATION)


def claim_collective_evaluation(acc_sw: np.ndarray, acc_seen: np.ndarray, acc_pool: np.ndarray,
                                bayes_id: np.ndarray) -> dict:
    """Decides "neurons trained in isolation ... evaluated collectively ... preserving task performance"."""
    d_pool100 = acc_sw - acc_pool
    _, lo, hi = stats.mean_ci(d_pool100)
    return dict(id="collective-evaluation", kind="claim",
                document="Neurons trained in isolation are integrated and evaluated collectively on shared test data "
                         "without joint fine-tuning, preserving task performance",
                criterion="supported if, on unseen people of the training groups, the collective network is more "
                          "accurate than one neuron of the same kind trained on all 100 observations (95% CI of the "
                          "paired difference above 0); not supported if the interval lies below 0; inconclusive "
                          "otherwise",
                measured=(f"switch network {_fmt01(acc_sw)} on unseen people ({_fmt01(acc_seen)} on its training "
                          f"samples), pooled neuron {_fmt01(acc_pool)}, paired difference {_fmt(d_pool100)}; true law "
                          f"{_fmt01(bayes_id)}"),
                verdict=verdicts.from_interval(lo, hi, above=0), expected="supported", needs="default",
                section=_COLLECTIVE)


def claim_neuron_4_specialises(spec: dict, doc: DocumentRun) -> dict:
    """Decides "neuron 4 exhibits a higher activation response to ... Mid-age - Mild Income (Mixed)"."""
    n4_act, n4_act_hits, S = spec["n4_act_margin"], spec["n4_act_hits"], len(spec["n4_act_margin"])
    most_active = sum(n == "neuron 4" for n in spec["most_active_on_mid"])
    csv_row = doc.activation[3, D.standard_world().index(TRAIN)]      # neuron 4 on the five groups, shipped CSV
    _, lo, hi = stats.mean_ci(n4_act)
    return dict(id="neuron-4-specialises", kind="claim",
                document="Neuron 4 exhibits a higher activation response to the demographic group characterized as "
                         "Mid-age - Mild Income (Mixed)",
                criterion="read as neuron 4's row of the activation heatmap: supported if its mean activation on that "
                          "group exceeds its highest mean activation on the other four training groups (95% CI over "
                          "seeds of this margin above 0); not supported if the interval lies below 0; inconclusive "
                          "otherwise",
                measured=(f"margin {_fmt(n4_act)}; the activation is highest on that group in {n4_act_hits}/{S} "
                          f"seeds; on the shipped CSV neuron 4's mean activation there is "
                          f"{float(csv_row[TRAIN.index(MID)]):.2f}, its highest {float(csv_row.max()):.2f} (on "
                          f"{TRAIN[int(csv_row.argmax())]}); read as a column instead, neuron 4 is the most active "
                          f"neuron on that group in {most_active}/{S} seeds"),
                verdict=verdicts.from_interval(lo, hi, above=0), expected="not supported", needs="default",
                note="a sigmoid neuron's mean output follows its own subset's response rate", section=_COLLECTIVE)


def claim_neuron_4_most_accurate(spec: dict) -> dict:
    """Decides the book's reading: neuron 4 is most accurate on its own group."""
    n4_acc, S = spec["n4_acc_margin"], len(spec["n4_acc_margin"])
    _, lo, hi = stats.mean_ci(n4_acc)
    return dict(id="neuron-4-most-accurate", kind="extension",
                document="The book's reading of specialisation: neuron 4 is more accurate on its own group, Mid-age - "
                         "Mild Income (Mixed), than on any other training group",
                criterion="supported if neuron 4's accuracy on that group exceeds its highest accuracy on the other "
                          "four training groups (95% CI over seeds of this margin above 0); not supported if the "
                          "interval lies below 0; inconclusive otherwise",
                measured=f"margin {_fmt(n4_acc)}; most accurate on that group in {spec['n4_acc_hits']}/{S} seeds",
                verdict=verdicts.from_interval(lo, hi, above=0), expected="supported", needs="default",
                section=_COLLECTIVE)


def claim_specialisation_heatmap(spec: dict) -> dict:
    """Decides "neurons trained in isolation ... show clear specialization patterns via activation heatmaps"."""
    top_act = spec["top_share_activation"]
    _, lo, hi = stats.mean_ci(top_act, bounds=_ACC)
    return dict(id="specialisation-heatmap", kind="claim",
                document="Neurons trained in isolation on disjoint data subsets show clear specialization patterns via "
                         "activation heatmaps",
                criterion="supported if, in the activation heatmap of unseen people, a training group's own neuron is "
                          "the most active neuron on it for more than half of the groups (95% CI over seeds of that "
                          "share above 1/2); not supported if the interval lies below 1/2; inconclusive otherwise",
                measured=(f"share of groups whose own neuron is the most active {_fmt01(top_act)} (chance: "
                          f"1/{N_UNITS}); specialisation index of the activation heatmap "
                          f"{_fmt(spec['si_activation'])}"),
                verdict=verdicts.from_interval(lo, hi, above=0.5), expected="not supported", needs="default",
                section=_COLLECTIVE)


def claim_specialisation_accuracy(spec: dict) -> dict:
    """Decides the book's measure: the accuracy heatmap's specialisation index lies above 0."""
    si = spec["si"]
    _, lo, hi = stats.mean_ci(si)
    return dict(id="specialisation-accuracy", kind="extension",
                document="The book's measure: in the accuracy heatmap, the neuron the switch routes a group to is more "
                         "accurate on it than the other neurons (specialisation index above 0)",
                criterion="supported if the 95% CI over seeds of the accuracy heatmap's specialisation index lies "
                          "above 0; not supported if it lies below 0; inconclusive otherwise",
                measured=(f"specialisation index {_fmt(si)}; share of groups whose own neuron is the most accurate "
                          f"{_fmt01(spec['top_share_accuracy'])}"),
                verdict=verdicts.from_interval(lo, hi, above=0), expected="supported", needs="default",
                section=_COLLECTIVE)


def claim_specialisation_from_data(si: np.ndarray, si_h0: np.ndarray, heterogeneity: float,
                                   heterogeneity_levels: Sequence[float]) -> dict:
    """Decides the book's control: the index grows with heterogeneity and vanishes at one shared law."""
    h_min = min(heterogeneity_levels)
    _, g_lo, g_hi = stats.mean_ci(si - si_h0)
    _, z_lo, z_hi = stats.mean_ci(si_h0)
    return dict(id="specialisation-from-data", kind="extension",
                document="The book's control: specialisation comes from the groups' different laws; the "
                         "specialisation index grows with the heterogeneity between groups and vanishes when every "
                         "group obeys one law",
                criterion="two parts. Grows: supported if the paired difference of the index at the chapter's "
                          "heterogeneity and at heterogeneity 0 has its 95% CI above 0. Vanishes: supported if the 95% "
                          "CI of the index at heterogeneity 0 lies below 0.02, not supported if it lies above 0. Both: "
                          "supported; one: mixed",
                measured=(f"index at heterogeneity {heterogeneity:g} minus at {h_min:g}: {_fmt(si - si_h0)}; "
                          f"index at {h_min:g}: {_fmt(si_h0)}"),
                verdict=lambda: verdicts.combine({
                    "grows": verdicts.from_interval(g_lo, g_hi, above=0),
                    "vanishes": verdicts.from_interval(z_lo, z_hi, below=0.02, refuted_above=0)}),
                expected="mixed", needs="default", section="Where does specialisation come from?")


def claim_centralised_baseline(acc_sw: np.ndarray, acc_mlp: np.ndarray, acc_pool: np.ndarray,
                               mlp_params: int) -> dict:
    """Decides the next check: the switch network against a centralised MLP of the same budget."""
    d_mlp100 = acc_sw - acc_mlp
    _, lo, hi = stats.mean_ci(d_mlp100)
    return dict(id="centralised-baseline", kind="next check",
                document="Benchmark the collective model's accuracy against a centralised baseline trained on the full "
                         "dataset (the document claims an advantage over centralised training but reports no baseline)",
                criterion="supported if, on unseen people of the training groups, the switch network is more accurate "
                          "than a centralised MLP with the same parameter budget trained on all 100 observations (95% "
                          "CI of the paired difference above 0); not supported if the interval lies below 0; "
                          "inconclusive otherwise",
                measured=(f"switch {_fmt01(acc_sw)}, centralised MLP ({mlp_params} params) "
                          f"{_fmt01(acc_mlp)}, pooled neuron {_fmt01(acc_pool)}; paired difference "
                          f"switch - MLP {_fmt(d_mlp100)}"),
                verdict=verdicts.from_interval(lo, hi, above=0), expected="supported", needs="default",
                note="the switch is given the groups by its rule table; the MLP has to find them in the features",
                section=_COLLECTIVE)


def claim_small_subsets_overfit(gap_small: np.ndarray, gap_large: np.ndarray, ablation_sizes: Sequence[int]) -> dict:
    """Decides the ablation: small subsets give overfitting micro-models."""
    _, lo, hi = stats.mean_ci(gap_small - gap_large)
    return dict(id="small-subsets-overfit", kind="next check",
                document="Ablation on subset size: small subsets give overfitting micro-models (high training "
                         "accuracy, low collective test accuracy)",
                criterion="supported if the seen-minus-unseen accuracy gap with the smallest subsets exceeds the gap "
                          "with the largest (95% CI of the paired difference above 0); not supported if it lies below "
                          "0; inconclusive otherwise",
                measured=(f"seen-unseen gap {_fmt(gap_small)} with {min(ablation_sizes)} per neuron, {_fmt(gap_large)} "
                          f"with {max(ablation_sizes)}; paired difference {_fmt(gap_small - gap_large)}"),
                verdict=verdicts.from_interval(lo, hi, above=0), expected="supported", needs="default",
                section="Subset-size ablation")


def claim_data_scaling(d_small: np.ndarray, d_big: np.ndarray, small: int, big: int) -> dict:
    """Decides the open question: the switch network against end-to-end training as the data grows."""
    _, lo, hi = stats.mean_ci(d_big)
    return dict(id="data-scaling", kind="open question",
                document="How does the framework's accuracy compare with standard end-to-end training as the dataset "
                         "grows?",
                criterion="the document implies the framework keeps up: supported if with the most data the switch "
                          "network is more accurate than the centralised MLP of the same size (95% CI of the paired "
                          "difference above 0); not supported if the interval lies below 0; inconclusive otherwise",
                measured=(f"switch minus centralised MLP: {_fmt(d_small)} at {small:,} observations, {_fmt(d_big)} "
                          f"at {big:,}"),
                verdict=verdicts.from_interval(lo, hi, above=0), expected="supported", needs="default",
                note=f"five features and at most {big:,} observations, not the large high-dimensional data the "
                     f"question has in mind; convergence speed is not compared",
                section="Scaling the data")


def claim_neuron_scaling(ns_df: pd.DataFrame, ns_time: dict, d_nmax: np.ndarray, n_max: int, S: int) -> dict:
    """Decides "the framework scales to more neurons, with improved scalability compared with centralised training"."""
    n_mlp = int(ns_df[ns_df.method == "centralised MLP"].neurons.max())
    d_nmlp = paired_difference(ns_df, f"neurons == {n_mlp}", "accuracy", "switch network", "centralised MLP")
    _, p_lo, p_hi = stats.mean_ci(d_nmax)
    _, m_lo, m_hi = stats.mean_ci(d_nmlp)
    return dict(id="neuron-scaling", kind="claim",
                document="The framework scales to more neurons, with improved scalability compared with centralised "
                         "training",
                criterion="two parts: with the most neurons the switch network is more accurate than the pooled "
                          "neuron, and with the most neurons the centralised MLP is run at it is more accurate than "
                          "the MLP of the same budget (95% CIs of the paired differences above 0). Both: supported; "
                          "one: mixed; neither: not supported",
                measured=(f"switch minus pooled neuron at {n_max:,} neurons: {_fmt(d_nmax)}; switch minus centralised "
                          f"MLP at {n_mlp:,} neurons: {_fmt(d_nmlp)}; {n_max * S:,} neurons (all seeds) trained in one "
                          f"pass in {ns_time[n_max]:.2f} s"),
                verdict=lambda: verdicts.combine({"vs pooled": verdicts.from_interval(p_lo, p_hi, above=0),
                                                  "vs MLP": verdicts.from_interval(m_lo, m_hi, above=0)}),
                expected="supported", needs="default",
                note="training time is reported, not compared with the centralised model's",
                section="Scaling the neurons")


def claim_misalignment(acc_sw: np.ndarray, acc_shift: np.ndarray, si: np.ndarray, si_shift: np.ndarray,
                       si_noise1: np.ndarray, noise_levels: Sequence[float]) -> dict:
    """Decides the alignment test: a misconfigured switch degrades accuracy and specialisation."""
    _, a_lo, a_hi = stats.mean_ci(acc_sw - acc_shift)
    _, s_lo, s_hi = stats.mean_ci(si - si_shift)
    return dict(id="misalignment", kind="next check",
                document="Switch alignment test: misconfigured switch assignments degrade specialisation, visible in "
                         "the heatmap",
                criterion="supported if sending all five groups to the wrong neuron lowers both the accuracy and the "
                          "specialisation index (95% CIs of the paired drops above 0); mixed if only one drops; not "
                          "supported if neither does",
                measured=(f"all 5 groups sent to the wrong neuron: accuracy drops by {_fmt(acc_sw - acc_shift)}, the "
                          f"index by {_fmt(si - si_shift)} (aligned index {_fmt(si)}); random training routing "
                          f"p={max(noise_levels):g}: index {_fmt(si_noise1)}"),
                verdict=lambda: verdicts.combine({"accuracy": verdicts.from_interval(a_lo, a_hi, above=0),
                                                  "index": verdicts.from_interval(s_lo, s_hi, above=0)}),
                expected="supported", needs="default", note="differences paired over seeds",
                section="A misaligned switch")


def claim_out_of_distribution(ood_res: dict, best_fb: str, ood_gap: np.ndarray, id_gap: np.ndarray) -> dict:
    """Decides the generalization analysis: specialised neurons may fail on out-of-distribution inputs."""
    _, lo, hi = stats.mean_ci(ood_gap - id_gap)
    return dict(id="out-of-distribution", kind="next check",
                document="Generalization analysis: highly specialised neurons may fail on out-of-distribution inputs "
                         "not covered by their training subsets",
                criterion="supported if, on the four cells no neuron was trained on, the better of two fall-backs "
                          "stays further below the true law's accuracy than the switch network does in distribution "
                          "(95% CI of the paired difference of the two gaps above 0); not supported if it lies below "
                          "0; inconclusive otherwise",
                measured=(f"OOD accuracy: switch+average {_fmt01(ood_res['switch + average'])}, "
                          f"switch+nearest {_fmt01(ood_res['switch + nearest'])}, centralised MLP "
                          f"{_fmt01(ood_res['centralised MLP'])}, true law "
                          f"{_fmt01(ood_res['Bayes (true law)'])}; gap to the true law OOD ({best_fb}) "
                          f"{_fmt(ood_gap)} vs in distribution {_fmt(id_gap)}"),
                verdict=verdicts.from_interval(lo, hi, above=0), expected="supported", needs="default",
                note="the centralised models fail on these cells too", section="Out-of-distribution groups")


def claim_learned_switch(acc_sw: np.ndarray, acc_gate: np.ndarray) -> dict:
    """Decides open question 3: can the switch be learned instead of partitioning the data by hand?"""
    _, lo, hi = stats.mean_ci(acc_sw - acc_gate)
    return dict(id="learned-switch", kind="open question",
                document="Can the switch be learned, a trainable router assigning data to specialised neurons, instead "
                         "of partitioning the data by hand?",
                criterion="supported if a gate learned jointly with five neurons from the same 100 observations comes "
                          "within 2 points of the hand-made switch's accuracy on unseen people of the training groups "
                          "(95% CI of manual minus learned below 0.02); not supported if the interval lies above 0.02; "
                          "inconclusive otherwise",
                measured=(f"learned gate {_fmt01(acc_gate)} vs hand-made table {_fmt01(acc_sw)}; "
                          f"paired difference manual - learned {_fmt(acc_sw - acc_gate)}"),
                verdict=verdicts.from_interval(lo, hi, below=0.02), expected="not supported", needs="default",
                section=_LEARNED)


def claim_learned_switch_groups(purity: np.ndarray) -> dict:
    """Decides the book's check: a gate learned from the 100 observations rediscovers the groups."""
    _, lo, hi = stats.mean_ci(purity, bounds=_ACC)
    return dict(id="learned-switch-groups", kind="extension",
                document="The book's check: a gate learned from the 100 observations rediscovers the demographic "
                         "groups",
                criterion="supported if the routing purity (the share of people whose neuron's majority group is their "
                          "own; 1 for the hand-made table) has its 95% CI above 0.9; not supported if it lies below "
                          "0.9; inconclusive otherwise",
                measured=f"purity {_fmt01(purity)}",
                verdict=verdicts.from_interval(lo, hi, above=0.9), expected="not supported", needs="default",
                section=_LEARNED)


def claim_explorer_retrain(retrain: dict) -> dict:
    """Decides the book's explorer timing: five neurons retrain in under a second (a time on this machine)."""
    return dict(id="explorer-retrain", kind="book", timing=True,
                document="The book's explorer: edit the switch and the subset sizes, and the five neurons retrain in "
                         "under a second",
                criterion="supported if the median of five explorer updates (draw the subsets, train five neurons, "
                          "evaluate) on one CPU thread is below 1 s; not supported otherwise",
                measured=retrain["measured"], verdict=retrain["verdict"], expected="supported", needs="smoke",
                section="Explorer: edit the switch and the subset sizes")
