"""What we found: the chapter's prose, written from the run's numbers (the claims' per-seed numbers, the timing
claims' results), and the verdict paragraph's words on time."""
from __future__ import annotations

import pandas as pd

from mpnn.runtime import stats
from mpnn.tokens import ViTConfig, keep_count

from .claims import drop_within_margin, same_flops_verdict
from .data import relative_flops


def timing_sentences(selection: dict, merging: dict, step: dict) -> dict[str, str]:
    """The verdict paragraph's words on time, from this run's timing claims (:func:`latency_claim` for
    learned selection and for ToMe, :func:`train_step_claim`): the same code may decide differently on
    another CPU, so these sentences are generated, never typed."""
    v = selection["verdict"]
    if v == "supported":
        sel = "Keeping fewer tokens lowers the measured latency at inference" + (
            ", though by less than the FLOPs predict" if selection["efficiency_high"] < 1 else "")
    elif v == "not supported":
        sel = "Keeping fewer tokens does not lower the measured latency at inference on this machine"
    else:
        sel = ("Whether keeping fewer tokens lowers the measured latency at inference is not decided on this "
               "machine")
    v = merging["verdict"]
    if v == "not supported":
        merge = ("on this machine it is slower than keeping every token: its bookkeeping costs more than the "
                 "tokens it removes, which a FLOP count leaves out")
    elif v == "inconclusive":
        merge = ("on this machine it is not measurably faster than keeping every token, although the FLOPs "
                 "predict a saving: its bookkeeping eats what the removed tokens save, which a FLOP count "
                 "leaves out")
    else:
        merge = "on this machine it is faster than keeping every token, by less than the FLOPs predict" if (
            merging["efficiency_high"] < 1) else "on this machine it is faster than keeping every token"
    small, large = step["parts"]["chapter's model"], step["parts"]["larger model"]
    if small == large == "supported":
        train = "a training step on fewer tokens is shorter, for the chapter's model and for the larger one"
    elif large == "supported":
        train = ("a training step on fewer tokens is only shorter once the model is large enough for its matrix "
                 "products to set the step time")
    elif small == "supported":
        train = "a training step on fewer tokens is shorter for the chapter's model but not measurably for the larger one"
    else:
        train = "a training step on fewer tokens is not measurably shorter on this machine, for either model size"
    return {"ts_selection_latency": sel, "ts_merging_latency": merge, "ts_training_step": train}


def _ci_pp(v: pd.Series) -> str:
    m_, lo_, hi_ = stats.mean_ci(v)
    return f"{100*m_:.2f} pp (95% CI {100*lo_:.2f} to {100*hi_:.2f})"


def _change(v: pd.Series) -> str:
    """ "loses X pp (CI)" or "gains X pp (CI)" for a per-seed accuracy drop ``v``."""
    return f"loses {_ci_pp(v)}" if v.mean() >= 0 else f"gains {_ci_pp(-v)}"


def _speed(r: dict) -> str:
    return f"{r['speedup']:.2f}x (95% CI {r['speedup_low']:.2f}-{r['speedup_high']:.2f}x)"


def _faster(r: dict) -> str:
    if r["speedup_low"] > 1:
        return "faster"
    return "slower" if r["speedup_high"] < 1 else "not measurably faster or slower"


def _margin_lines(drop: pd.Series, accuracy_margin: float, patch: int) -> list[str]:
    """Whether learned selection's drop stays within the book's margin for a small loss, in words."""
    v_drop, _ = drop_within_margin(drop, accuracy_margin)
    margin_pp = 100 * accuracy_margin
    if v_drop == "supported":
        return [f"  The drop stays within the book's {margin_pp:.1f} pp margin for a small loss."]
    if v_drop == "not supported":
        return [f"  The drop exceeds the book's {margin_pp:.1f} pp margin for a small loss."]
    n_dec = stats.seeds_to_decide(drop, accuracy_margin)
    return [
        f"  **The book's {margin_pp:.1f} pp margin for a small loss is not established at this scale**: per-seed "
        f"drops range from {100*drop.min():.2f} to {100*drop.max():.2f} pp (standard deviation "
        f"{100*drop.std():.2f} pp), so the interval reaches {100*stats.mean_ci(drop)[2]:.2f} pp"
        + (f"; at this spread about {n_dec} seeds would decide it." if n_dec else ".")
        + f" A likely reason: with {patch}x{patch}-pixel patches most tokens hold part of the digit, so dropping "
        "half of them loses ink."]


def _budget_line(bud: dict, config: ViTConfig, *, budget_rho: float, budget_epochs: int,
                 budget_selected_epochs: int) -> str:
    """Training on the kept tokens (the open question), in words."""
    same = bud["same"]
    v_same, n_same = same_flops_verdict(same)
    fl_b = relative_flops(config, dict(rho=budget_rho))
    return (
        f"* **Training on the kept tokens** (the open question). At {bud['frac_same']:.2f} of the all-token training "
        f"FLOPs ({budget_selected_epochs} epochs on {bud['k_budget']} gathered tokens against {budget_epochs} on all "
        f"{config.n_tokens}, {bud['n']} seeds) kept-token minus all-token training accuracy is {_ci_pp(same)}, and "
        f"its inference costs {fl_b:.2f} of the FLOPs; all-token training reaches "
        f"{stats.fmt_ci(bud['acc_budget'], 3, bounds=(0, 1))}. "
        + {"supported": "At equal training FLOPs, training on the kept tokens gives the more accurate model here.",
           "not supported": "At equal training FLOPs, training on the kept tokens gives the less accurate model here.",
           "inconclusive": "The interval includes 0: at equal training FLOPs selection neither clearly gains nor loses "
                           "accuracy at this scale"
                           + (f" (about {n_same} seeds would decide it at this spread)." if n_same else ".")}[v_same]
        + f" Run with all tokens at inference, the kept-token model's gap is {_ci_pp(bud['same_all'])}. With the same "
        f"number of steps ({bud['frac_fewer']:.2f} of the FLOPs) kept-token training {_change(-bud['fewer'])}.")


def _step_line(step: dict, config: ViTConfig, large_config: ViTConfig, *, k_budget: int, batch_size: int,
               budget_epochs: int, budget_selected_epochs: int) -> str:
    """Training-step time against the FLOP prediction, for both model sizes, in words."""
    step_small, step_large = step["small"], step["large"]
    steps_ratio = budget_selected_epochs / budget_epochs
    time_ratio = steps_ratio * step_small["kept_s"] / step_small["all_s"]
    return (
        f"* **Training-step time.** A step on {k_budget} of {config.n_tokens} tokens of width {config.dim} (batch "
        f"{batch_size}, one thread) is {_faster(step_small)} than one on all tokens: {_speed(step_small)} against "
        f"{step_small['predicted']:.2f}x predicted by the FLOPs, {step_small['efficiency']:.2f} of the prediction. "
        + ("Steps this small are dominated by per-operation overhead, and the scorer, the Gumbel top-k and the gathers "
           "add operations. " if step["parts"]["chapter's model"] != "supported" else "")
        + f"The same-FLOPs recipe takes {steps_ratio:.1f}x the steps, so about {time_ratio:.1f}x the all-token "
        f"training time. For the full profile's model ({large_config.n_tokens} tokens of width {large_config.dim}) "
        f"the step is {_faster(step_large)}: {_speed(step_large)} against {step_large['predicted']:.2f}x predicted, "
        f"{step_large['efficiency']:.2f} of the prediction"
        + (": the saving appears once the matrix products, not the number of operations, set the step time."
           if step["parts"]["larger model"] == "supported" else "."))


def findings(acc: dict, bud: dict, lat: dict, lat_merge: dict, step: dict, config: ViTConfig,
             large_config: ViTConfig, *, epochs: int, n_train: int, accuracy_margin: float, timing_batch: int,
             batch_size: int, budget_rho: float, budget_epochs: int, budget_selected_epochs: int) -> str:
    """The chapter's "What we found", every number and every comparison word from this run.

    ``acc`` is :func:`accuracy_numbers`'s, ``bud`` :func:`budget_numbers`'s, ``lat`` and ``lat_merge``
    :func:`latency_claim`'s (learned selection, ToMe) and ``step`` :func:`train_step_claim`'s."""
    N = config.n_tokens
    rho_claim, k_claim, fl, fl_m, r_max = acc["rho_claim"], acc["k_claim"], acc["fl"], acc["fl_m"], acc["r_max"]
    rho_min = acc["rho_min"]
    m_s, lo_s, hi_s = stats.mean_ci(acc["share"])
    lines = [
        f"* **The models.** With all tokens they reach {stats.fmt_ci(acc['full_acc'], 3, bounds=(0, 1))} test "
        f"accuracy ({epochs} epoch{'s' if epochs > 1 else ''} on {n_train} images, most steps with some tokens "
        "removed; small vision transformers learn MNIST slowly, and the selection training costs the backbone some "
        "accuracy).",
        f"* **Learned selection against random dropping.** At rho={rho_claim:g} ({k_claim} of {N} "
        f"tokens, {fl:.2f} of the FLOPs) learned selection {_change(acc['drop'])}, where keeping {k_claim} random "
        f"tokens {_change(acc['drop_rand'])}: the learned loss is {m_s:.3f} (95% CI {lo_s:.3f} to {hi_s:.3f}) of the "
        "random one.",
    ]
    lines += _margin_lines(acc["drop"], accuracy_margin, config.patch)
    lines.append(f"* **Which tokens the scorer keeps.** At rho={rho_min:g} ({keep_count(N, rho_min)} of {N} tokens) "
                 f"learned minus random selection accuracy is {_ci_pp(acc['gain'])}.")
    lines.append(
        f"* **Merging with ToMe** needs no training, but these models saw only selection while training: at "
        f"r={r_max} ({fl_m:.2f} of the FLOPs) it {_change(acc['drop_m'])}; its drop minus learned selection's at "
        f"rho={rho_claim:g}" + (" (fewer FLOPs)" if fl <= fl_m else "") + f" is {_ci_pp(acc['excess'])}.")
    lines.append(
        f"* **Latency at inference** ({timing_batch} images, one thread): learned selection at rho={rho_claim:g} is "
        f"{_faster(lat)}, {_speed(lat)} against {lat['predicted']:.2f}x predicted by the FLOPs, "
        f"{lat['efficiency']:.2f} of the prediction. ToMe at r={r_max} is {_faster(lat_merge)}, {_speed(lat_merge)} "
        f"against {lat_merge['predicted']:.2f}x predicted"
        + (": its per-block bookkeeping (similarities, sort, gather, scatter) costs more than the few tokens it "
           "removes, and the FLOP count leaves it out, as it leaves out LayerNorm, softmax and GELU."
           if lat_merge["speedup"] < 1 else "."))
    lines.append(_budget_line(bud, config, budget_rho=budget_rho, budget_epochs=budget_epochs,
                              budget_selected_epochs=budget_selected_epochs))
    lines.append(_step_line(step, config, large_config, k_budget=bud["k_budget"], batch_size=batch_size,
                            budget_epochs=budget_epochs, budget_selected_epochs=budget_selected_epochs))
    return "\n".join(lines)
