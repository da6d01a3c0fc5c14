"""How the chapter writes a measured number with its interval in the prose."""
from __future__ import annotations

import math

from mpnn.runtime import stats


def ci_text(values, digits: int = 3, signed: bool = False) -> str:
    """Mean and 95% CI of ``values`` for the prose."""
    m, lo, hi = stats.mean_ci(values)
    f = f"+.{digits}f" if signed else f".{digits}f"
    if not signed and abs(m) < 0.01:              # a loss at rounding level: the digits would all be 0
        low = f"{lo:.2e} to " if lo >= 0 or min(values) < 0 else "up to "    # a loss is never below 0
        return f"{m:.2e} (95% CI {low}{hi:.2e})"
    return f"{m:{f}} (95% CI {lo:{f}} to {hi:{f}})" if signed or lo < 0 else f"{m:{f}} (95% CI {lo:{f}}-{hi:{f}})"


def sci_text(x: float) -> str:
    """``x`` as ``$a\\cdot10^{b}$`` (two significant digits) for the prose."""
    if x == 0:
        return "0"
    b = int(math.floor(math.log10(abs(x))))
    return f"${x / 10 ** b:.1f}\\cdot10^{{{b}}}$"
