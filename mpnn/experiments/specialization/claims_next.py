"""The claims of the chapter's second part: the document's next checks (nonlinear hidden layers,
regularisation, CMNIST with a varying compositional share) and the book's extensions (each
``claim_...`` returns the keyword arguments of :meth:`mpnn.runtime.repro.Run.claim`)."""
from __future__ import annotations

from typing import Callable

import pandas as pd
import torch

from mpnn.runtime import stats, verdicts

from .claims import SEC_PAPER, FAILS, GENERALISES, any_part, heldout_verdicts, parts_text, regularisation_verdicts
from .formats import ci_text
from .nonlinear import ACTIVATIONS
from .regularisation import best_strength, penalty_extremes

SEC_NL = "Beyond linear: a ReLU and a tanh hidden layer (the document's next check 1)"
SEC_REG = "Approximate modularity through regularisation (the document's next check 3)"
SEC_SHARE = "CMNIST with a varying compositional share (the document's first experiment 1)"
GENERIC_PENALTIES = ("weight_decay", "dropout", "l1")     # the penalties that leave the architecture alone


def claim_nonlinear_coupling_survives(coupling: dict[tuple[str, str], list[float]]) -> dict:
    """The next check "with a ReLU or tanh hidden layer, dense and split networks still couple Gamma_x to Omega_y"."""
    parts = {f"{act} {a}": verdicts.from_interval(*stats.mean_ci(coupling[act, a])[1:], above=0.2, refuted_below=0.05)
             for act in ("relu", "tanh") for a in ("dense", "split")}
    return dict(
        id="nonlinear-coupling-survives", kind="next check",
        document=("next check 1: the theory's predictions on small nonlinear networks; its first: a dense network, "
                  "and one partitioned only at the output, couple the names Gamma_x to the compositional outputs Omega_y"),
        criterion=("for ReLU and tanh, dense and split: the lower 95% CI end of the Jacobian's Gamma_x->Omega_y norm "
                   "is above 0.2 (linear: about 0.445); a case is refuted if its upper end is below 0.05; all four "
                   "cases: supported, some: mixed"),
        measured=("; ".join(f"{act}: Gamma_x->Omega_y dense {stats.fmt_ci(coupling[act, 'dense'], 4)}, "
                            f"split {stats.fmt_ci(coupling[act, 'split'], 4)}" for act in ("relu", "tanh"))
                  + f"; linear in the same pass: dense {stats.mean_ci(coupling['linear', 'dense'])[0]:.4f}"),
        verdict=verdicts.combine(parts), expected="supported", section=SEC_NL)


def claim_nonlinear_partitioned_zero(nl_norms: dict[tuple[str, str], torch.Tensor]) -> dict:
    """The next check "with a nonlinear hidden layer the fully partitioned network has no Gamma_x -> Omega_y coupling"."""
    nl_part = max(float(nl_norms[act, "partitioned"][:, 1].abs().max()) for act in ACTIVATIONS)
    return dict(
        id="nonlinear-partitioned-zero", kind="next check",
        document="next check 1: with a nonlinear hidden layer the fully partitioned network still has no Gamma_x -> Omega_y coupling",
        criterion="supported if the Jacobian's Gamma_x->Omega_y norm is below 1e-12 in every run (structural: the masks cut every path)",
        measured=f"max Jacobian Gamma_x->Omega_y norm over activations and runs: {nl_part}",
        verdict=nl_part < 1e-12, expected="supported", section=SEC_NL)


def _nonlinear_heldout(held_loss: Callable[[str, str], pd.Series], act: str, name: str, expected: str,
                       claim_id: str, note: str = "") -> dict:
    part_l, dense_l = held_loss(act, "partitioned"), held_loss(act, "dense")
    parts = heldout_verdicts(part_l.tolist(), dense_l.tolist())
    return dict(
        id=claim_id, kind="next check",
        document=(f"next check 1: with a {name} hidden layer, only the fully partitioned network generalises "
                  "systematically to held-out patterns"),
        criterion=(f"on the runs whose training patterns span Omega, setting (3,2,1,1,2): the partitioned network "
                   f"generalises (upper 95% CI end of the held-out compositional loss < {GENERALISES:g}; refuted if the "
                   f"lower end > {FAILS:g}) and the dense one with the same activation does not (lower end > {FAILS:g}; "
                   f"refuted if the upper end < {GENERALISES:g}); both parts: supported, one: mixed"),
        measured=(f"{len(part_l)} runs span Omega: held-out compositional loss, partitioned {name} "
                  f"{ci_text(part_l.tolist())} (max {float(part_l.max()):.2e}), dense {name} "
                  f"{ci_text(dense_l.tolist())}; " + parts_text(parts)),
        verdict=verdicts.combine(parts), expected=expected, section=SEC_NL, note=note)


def claim_nonlinear_heldout_tanh_partitioned_only(held_loss: Callable[[str, str], pd.Series]) -> dict:
    """The next check "with a tanh hidden layer only the fully partitioned network generalises to held-out
    patterns"; ``held_loss(activation, architecture)``: the held-out compositional losses of the spanning runs."""
    return _nonlinear_heldout(held_loss, "tanh", "tanh", "supported", "nonlinear-heldout-tanh-partitioned-only")


def claim_nonlinear_heldout_relu_partitioned_fails(held_loss: Callable[[str, str], pd.Series]) -> dict:
    """The next check "with a ReLU hidden layer only the fully partitioned network generalises to held-out
    patterns" (its partitioned half fails); ``held_loss`` as for the tanh claim."""
    return _nonlinear_heldout(held_loss, "relu", "ReLU", "mixed", "nonlinear-heldout-relu-partitioned-fails",
                              note=("a bias-free ReLU module fitted on 3 patterns is piecewise linear and does not "
                                    "extrapolate: the partition is necessary, not sufficient"))


def generic_floors(reg: pd.DataFrame) -> tuple[dict[str, float], float]:
    """Per generic penalty (:data:`GENERIC_PENALTIES`) the lowest lower 95% CI end of the held-out
    compositional loss over its strengths, and the lowest of the coupling under weight decay or dropout."""
    soft = {p: penalty_extremes(reg, p, "test_comp")[0] for p in GENERIC_PENALTIES}
    return soft, min(penalty_extremes(reg, p, "coupling")[0] for p in ("weight_decay", "dropout"))


def claim_regularisation_no_systematicity(reg: pd.DataFrame) -> dict:
    """The next check "regularisation (weight decay, dropout) gives systematic generalisation without a partition"."""
    generic = regularisation_verdicts(reg, GENERIC_PENALTIES)
    soft, soft_coupling = generic_floors(reg)
    return dict(
        id="regularisation-no-systematicity", kind="next check",
        document=("next check 3 (on the limitation that perfect modularity may not be required): approximate "
                  "modularity through regularisation (weight decay, dropout) achieves systematic generalisation "
                  "without a fully partitioned architecture"),
        criterion=(f"a dense linear network, setting (3,2,1,1,2), runs spanning Omega, each of weight decay, dropout "
                   f"and L1 on all weights at four strengths: supported if for some penalty and strength the upper "
                   f"95% CI end of the held-out compositional loss is below {GENERALISES:g} (the partitioned "
                   f"network's level); not supported if for every penalty and strength the lower end stays above "
                   f"{FAILS:g}; inconclusive otherwise"),
        measured=("lowest lower 95% CI end of the held-out compositional loss over the strengths: "
                  + ", ".join(f"{p} {v:.3f}" for p, v in soft.items())
                  + f" (unregularised {best_strength(reg, 'none').loc['mean']:.3f}); coupling under weight decay / "
                  f"dropout never below {soft_coupling:.3f}; " + parts_text(generic)),
        verdict=any_part(generic), expected="not supported", section=SEC_REG)


def claim_regularisation_cross_block_l1_systematic(reg: pd.DataFrame) -> dict:
    """The extension "an L1 penalty on the Gamma_x -> Omega_y block gives systematic generalisation"."""
    best_x = best_strength(reg, "cross_l1")
    best_xc = reg[(reg.penalty == "cross_l1") & (reg.strength == best_x.strength) & (reg.metric == "coupling")].iloc[0]
    return dict(
        id="regularisation-cross-block-l1-systematic", kind="extension",
        document=("an L1 penalty on the Gamma_x -> Omega_y block of the map (a soft partition that is told which "
                  "block is the shortcut) gives systematic generalisation without a hard partition"),
        criterion=(f"at the best of five strengths: supported if the upper 95% CI end of the held-out compositional "
                   f"loss is below 0.01 and that of the coupling below 0.05; not supported if the loss's lower end is "
                   f"above {FAILS:g} at every strength; inconclusive otherwise"),
        measured=(f"strength {best_x.strength:g}: held-out compositional loss {best_x['mean']:.2e} (95% CI "
                  f"{best_x['low']:.2e} to {best_x['high']:.2e}), coupling {best_xc['mean']:.4f} (95% CI "
                  f"{best_xc['low']:.4f} to {best_xc['high']:.4f}; unregularised "
                  f"{best_strength(reg, 'none', 'coupling').loc['mean']:.4f})"),
        verdict=("supported" if best_x["high"] < 0.01 and best_xc["high"] < 0.05 else
                 "not supported" if penalty_extremes(reg, "cross_l1", "test_comp")[0] > FAILS else "inconclusive"),
        expected="supported", section=SEC_REG)


def share_ends(share_diff: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The rows of :func:`sweep_differences` at no non-compositional target (scale 0) and at the paper's scale 10."""
    d_by = share_diff.set_index("scale")
    return d_by.loc[0.0], d_by.loc[10.0]


def claim_cmnist_share_advantage_grows(share_diff: pd.DataFrame, share_contrast: tuple[float, float, float], *,
                                       train_size: int, epochs: int, n_seeds: int) -> dict:
    """The next check "the split model's advantage appears, and grows, as the compositional share falls"
    (CPU scale; :func:`share_contrast` from the paper's scale to no non-compositional target)."""
    flat_d, paper_d = share_ends(share_diff)
    dd = share_contrast
    parts = {"split lower at the paper's share": verdicts.from_interval(paper_d["low"], paper_d["high"], below=0),
             "advantage larger there than at share 1": verdicts.from_interval(dd[1], dd[2], below=0)}
    return dict(
        id="cmnist-share-advantage-grows", kind="next check",
        document=("first experiment 1: CMNIST with varying levels of compositional structure, to see when "
                  "specialisation pays; read here as: the split model's advantage appears, and grows, as the "
                  "compositional share of the target falls"),
        criterion=("paired seeds at CPU scale: the 95% CI of split minus dense compositional test error at the paper's "
                   "share (scale 10) lies below 0, and the paired change of that difference from share 1 (no "
                   "non-compositional target) to the paper's share lies below 0; both: supported, one: mixed, a CI "
                   "wholly above 0: that part not supported, otherwise inconclusive"),
        measured=lambda: (f"split minus dense, paired: share 1.0 {flat_d['mean']:+.3f} (95% CI {flat_d['low']:+.3f} to "
                          f"{flat_d['high']:+.3f}); share {paper_d.share:.3g} (paper) {paper_d['mean']:+.3f} "
                          f"({paper_d['low']:+.3f} to {paper_d['high']:+.3f}); paired change from share 1 to "
                          f"{paper_d.share:.3g}: {dd[0]:+.3f} ({dd[1]:+.3f} to {dd[2]:+.3f}); all: "
                          + ", ".join(f"{r.share:.3g}: {r['mean']:+.3f}" for _, r in share_diff.iterrows())
                          + "; " + parts_text(parts)),
        verdict=lambda: verdicts.combine(parts), expected="supported", needs="default",
        note=(f"CPU scale ({train_size} images, {epochs} epochs, {n_seeds} seeds); the smoke profile "
              "is too small to decide it"), section=SEC_SHARE)


def claim_cmnist_share_split_independent(share_rows: pd.DataFrame) -> dict:
    """The book's check "the split model's compositional error does not depend on the non-compositional target"."""
    split_spread = float(share_rows[share_rows.model == "split"].groupby("run").comp_error
                         .agg(lambda v: v.max() - v.min()).max())
    return dict(
        id="cmnist-share-split-independent", kind="book",
        document="split towers share nothing, so the compositional tower's error does not depend on the non-compositional target",
        criterion="supported if, for every seed, the split model's compositional test error varies by less than 1e-5 across shares",
        measured=f"max over seeds of the spread of the split model's compositional test error across shares: {split_spread:.2e}",
        verdict=split_spread < 1e-5, expected="supported", section=SEC_SHARE)


def claim_cmnist_share_paper_scale(paper_share_diff: pd.DataFrame | None) -> dict:
    """The next check "the split model's advantage appears as the compositional share falls" with the
    paper's conv towers (:func:`sweep_differences` of that sweep; ``None`` where it did not run)."""
    if paper_share_diff is not None:
        pd_ = paper_share_diff.set_index("scale")
        measured = ", ".join(f"share {r.share:.3g}: {r['mean']:+.4f} ({r['low']:+.4f} to {r['high']:+.4f})"
                             for _, r in paper_share_diff.iterrows())
    else:
        measured = "not run in this profile (share_paper_seeds = 0)"
    return dict(
        id="cmnist-share-paper-scale", kind="next check",
        document=("first experiment 1 at the paper's scale: the split model's advantage appears as the compositional "
                  "share of the target falls"),
        criterion=("the paper's conv towers: supported if the 95% CI of split minus dense at the paper's share lies "
                   "below 0 and wholly below the CI at share 1; not supported if it lies above 0; inconclusive otherwise"),
        measured="paper's conv towers, split minus dense compositional test error: " + measured,
        verdict=lambda: ("supported" if pd_.loc[10.0, "high"] < 0 and pd_.loc[10.0, "high"] < pd_.loc[0.0, "low"] else
                         "not supported" if pd_.loc[10.0, "low"] > 0 else "inconclusive"),
        expected="supported", needs="full",
        note="needs the full profile (GPU): the paper's conv towers at every share, 20,000 images, 300 epochs",
        section=SEC_PAPER)
