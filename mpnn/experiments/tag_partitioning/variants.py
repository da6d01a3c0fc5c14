"""The chapter's names: the original code's reported accuracies, the routings and the variants it trains."""
from __future__ import annotations

DOCUMENT = {"train": 83.65, "validation": 82.55, "test": 83.69}     # the original code: one Go run, true-label routing
ORACLE = "true-label tag (document)"
FAITHFUL = "tag partition, blocked"
CENTRED = "grid centred on the image (offset 6), tag partition, blocked"
FULLY_CONNECTED = "fully connected, tag partition, blocked"
MOE = "two-expert MoE, learned gate"
VARIANTS = {   # name: (TagNet arguments, sample order)
    FAITHFUL: ({}, "blocked"),
    "tag partition, interleaved": ({}, "interleaved"),
    "no partition, blocked": ({"partitioned": False}, "blocked"),
    "no partition, interleaved": ({"partitioned": False}, "interleaved"),
    "tag partition, blocked, hidden fan-in 784": ({"hidden_fan_in": 784}, "blocked"),
    CENTRED: ({"offset": 6}, "blocked"),
}
CURVE_VARIANTS = list(VARIANTS)[:5]          # the variants of the forgetting curve
