"""The numbers behind the prose and the claims."""
from __future__ import annotations

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
