"""The verdicts of the chapter's claims."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from mpnn.runtime import stats, verdicts

GENERALISES = 1e-3   # held-out compositional loss below this: the held-out patterns are predicted


FAILS = 0.1          # above this: they are not (an all-zero Omega_y output scores n2 = 2 on setting (3,2,1,1,2))


def heldout_verdicts(partitioned: Sequence[float], dense: Sequence[float]) -> dict[str, str]:
    """The two parts of "only the fully partitioned network generalises to held-out patterns", read
    on the held-out compositional losses of the runs whose training patterns span Omega:

    * the partitioned network generalises: supported when the upper 95% CI end is below
      :data:`GENERALISES`, not supported when the lower end is above :data:`FAILS`;
    * the dense network does not: supported when its lower end is above :data:`FAILS`, not
      supported when its upper end is below :data:`GENERALISES`.

    Fewer than two spanning runs decide nothing (both parts inconclusive)."""
    if min(len(partitioned), len(dense)) < 2:
        return {"the partitioned network generalises": "inconclusive", "the dense network does not": "inconclusive"}
    _, plo, phi = stats.mean_ci(partitioned)
    _, dlo, dhi = stats.mean_ci(dense)
    return {"the partitioned network generalises": verdicts.from_interval(plo, phi, below=GENERALISES,
                                                                          refuted_above=FAILS),
            "the dense network does not": verdicts.from_interval(dlo, dhi, above=FAILS, refuted_below=GENERALISES)}


def parts_text(parts: dict[str, str]) -> str:
    """``"part: verdict; part: verdict"`` for a claim's measurement."""
    return "; ".join(f"{part}: {v}" for part, v in parts.items())


def regularisation_verdicts(summary: pd.DataFrame, penalties: Sequence[str]) -> dict[str, str]:
    """Per penalty, "some strength gives systematic generalisation without a partition", from
    :func:`regularisation_summary`: supported when at some strength the upper 95% CI end of the
    held-out compositional loss is below :data:`GENERALISES`; not supported when at every strength
    its lower end stays above :data:`FAILS`; inconclusive otherwise."""
    out = {}
    for p in penalties:
        s = summary[(summary.penalty == p) & (summary.metric == "test_comp")]
        out[p] = ("supported" if float(s.high.min()) < GENERALISES else
                  "not supported" if float(s.low.min()) > FAILS else "inconclusive")
    return out


def any_part(parts: dict[str, str]) -> str:
    """The verdict on "at least one of the parts holds": supported if one is, not supported if
    none is and every part is decided, inconclusive otherwise."""
    values = list(parts.values())
    if any(v == "supported" for v in values):
        return "supported"
    return "not supported" if all(v == "not supported" for v in values) else "inconclusive"
