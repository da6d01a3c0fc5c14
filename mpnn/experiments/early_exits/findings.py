"""What we found: the chapter's prose, every number and every comparison word from the run."""
from __future__ import annotations

import pandas as pd

from .speedup import rate_sentence


def _ci(m: float, lo: float, hi: float, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    return f"{scale*m:.{digits}f}{unit} (95% CI {scale*lo:.{digits}f} to {scale*hi:.{digits}f}{unit})"


def findings(numbers: dict, per_seed: pd.DataFrame, costs: pd.DataFrame, wall: dict, speed: pd.DataFrame,
             breakdown: pd.DataFrame, *, margin: float, flops_claim: float, seconds_per_seed: float,
             block1_compiled: bool) -> str:
    """The chapter's "What we found", every number and every comparison word from this run.

    ``numbers`` is :func:`seed_claims`'s, ``costs`` :func:`cost_table`'s, ``wall`` :func:`wall_time_claim`'s,
    ``speed`` :func:`speedup_sweep`'s and ``breakdown`` :func:`breakdown_table`'s; ``block1_compiled``: the
    path block 1 took in the breakdown (:func:`time_breakdown`)."""
    n = numbers["n"]
    t_stars = sorted(set(per_seed["T*"]))
    t_text = f"{t_stars[0]:g}" if len(t_stars) == 1 else f"{t_stars[0]:g} to {t_stars[-1]:g}"
    q_star = float(per_seed["relative FLOPs at T*"].mean())
    c1 = float(costs["relative to the plain network"].iloc[0])
    leave = 1 - (q_star - c1) / (float(costs["relative to the plain network"].iloc[1]) - c1)
    m, lo, hi = numbers["flops"]
    flops_word = ("below" if hi < flops_claim else "not below" if lo > flops_claim else "straddling")
    dm, dlo, dhi = numbers["drop"]
    hm, hlo, hhi = numbers["drop_half"]
    drop_word = ("lies below the" if dhi < margin else "lies above the" if dlo > margin else "straddles the")
    half_word = ("also below it" if hhi < margin else "above it" if hlo > margin else "straddling it")
    gm, glo, ghi = numbers["gap"]
    gap_word = ("more" if glo > 0 else "less" if ghi < 0 else "not clearly more")
    lines = [
        f"* The first exit sits after a block that costs {c1:.2f} of the plain network's FLOPs. At the "
        f"validation-chosen threshold ($T^*$ = {t_text} over the {n} seeds) about {leave:.0%} of the MNIST test "
        f"digits leave there, and the network spends {_ci(m, lo, hi, digits=3)} of the plain network's FLOPs, "
        f"{flops_word} the criterion's {flops_claim:g}.",
        f"* The accuracy cost is {_ci(dm, dlo, dhi, 100, unit=' pp')} below exit 2 ({n} seeds): the interval "
        f"{drop_word} {100 * margin:.1f} pp margin. Choosing $T^*$ with half the margin as tolerance instead of a "
        f"quarter gives {_ci(hm, hlo, hhi, 100, unit=' pp')}, {half_word}.",
        f"* The exit's entropy ranks difficulty: exit 1 is {_ci(gm, glo, ghi, 100, unit=' pp')} {gap_word} "
        f"accurate on the samples it lets go than on all samples.",
    ]
    tp = wall["paths"]["torch"]
    text = (f"* Wall time (one thread, {wall['repeats']} interleaved rounds, the first seed's model at its $T^*$, "
            f"{wall['exit1_fraction']:.0%} leaving at exit 1): the FLOPs predict {wall['predicted']:.2f}x. With block 1 "
            f"and exit 1 as a torch GEMM over 6x6 input windows the skipping inference reached a speed-up of "
            f"{_ci(tp['speedup'], tp['speedup_low'], tp['speedup_high'], unit='x')} over the plain network, "
            f"{tp['efficiency']:.2f} of the prediction")
    if "compiled" in wall["paths"]:
        cp = wall["paths"]["compiled"]
        ratio = cp["speedup"] / tp["speedup"]
        word = ("more" if cp["speedup_low"] > tp["speedup_high"] else "less" if cp["speedup_high"] < tp["speedup_low"]
                else "about as much (the two intervals overlap)")
        text += (f"; with the same part as one compiled C++ loop per image (`mpnn.early_exit.stage1_kernel`) it reached "
                 f"{_ci(cp['speedup'], cp['speedup_low'], cp['speedup_high'], unit='x')}, {cp['efficiency']:.2f} of "
                 f"the prediction: {ratio:.2f} times the torch path's speed-up, so the kernel turned {word} of the "
                 f"same FLOP saving into time on this machine.")
    else:
        text += "; the compiled kernel could not serve on this machine, so only the torch path was measured."
    lines.append(text)
    lines.append(f"* Where the time goes (the same batch, each part timed alone): "
                 f"{rate_sentence(breakdown, block1_compiled)}.")
    at0 = speed[speed["threshold"] == 0.0]
    if len(at0):
        r = at0.iloc[0]
        s0, lo0, hi0 = (float(r[k]) for k in ("measured speed-up", "low", "high"))
        if hi0 < 1:
            word = "slower, as it must be: it pays for the exit head and the entropy and gets nothing back"
        elif lo0 > 1:
            word = ("faster although it does strictly more work (the exit head and the entropy on top of the plain "
                    "network): a difference between the two code paths or the machine's load, not a gain of the exits")
        else:
            word = ("not measurably different from it, although it does strictly more work (the exit head and the "
                    "entropy on top of the plain network)")
        lines.append(f"* At $T=0$ no sample leaves early and the early-exit network runs at "
                     f"{_ci(s0, lo0, hi0, unit='x')} the plain network's speed: {word}.")
    lines.append(f"* Training and evaluating one seed took about {seconds_per_seed:.0f} s on this machine.")
    return "\n".join(lines)
