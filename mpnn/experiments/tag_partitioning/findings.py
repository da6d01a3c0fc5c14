"""What we found: the chapter's bullets written from the run's tables."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from mpnn.runtime import stats

from .results import pct
from .variants import CENTRED, DOCUMENT, FAITHFUL, FULLY_CONNECTED, MOE, ORACLE


def findings(summary, table: pd.DataFrame, faithful_test, router_acc, *, agree, load, seconds: dict,
             n_networks: int, steps: int, n_train: int, epochs: int, extra_epochs: int,
             fully_connected: bool, at_scale: bool, n_seen: int, ink_share: float, end_even) -> str:
    """The 'What we found' bullets (markdown), from the chapter's tables."""
    t = table.set_index("split")
    fm, flo, fhi = stats.mean_ci(faithful_test, bounds=(0, 100))
    p = lambda *a: pct(summary, *a)
    mean = lambda *a: summary[(summary.variant == a[0]) & (summary.routing == (a[1] if len(a) > 1 else ORACLE))
                              & (summary.split == "test")]["mean"].iloc[0]
    differences = "; ".join(
        f"{split} {t.loc[split, 'difference (pp)']:+.2f} pp (the reported value lies "
        f"{'inside' if t.loc[split, 'document inside the CI'] else 'outside'} the interval {t.loc[split, '95% CI']})"
        for split in ("test", "train", "validation"))
    spread = (f"; a single run's spread is about +-{2 * t.loc['test', 'seed std (pp)']:.1f} pp (two seed standard "
              f"deviations), so one Go run can land outside the interval of the mean." if at_scale
              else f", at this profile's reduced scale ({n_train} samples, {epochs} epochs) - not comparable.")
    fewer = "." if extra_epochs == epochs else f" (fewer epochs than the local networks' {epochs}; `full` runs 10)."
    end = {v: stats.fmt_ci(100 * np.asarray(end_even[v]), 1, unit="%", bounds=(0, 100))
           for v in (FAITHFUL, "no partition, blocked")}
    label_worth = mean(FAITHFUL) - max(mean(FAITHFUL, "learned parity router"), mean(FAITHFUL, "all neurons active"))
    lines = [
        f"* **Faithful replication.** Test {p(FAITHFUL)} over {len(faithful_test)} seeds (95% CI half-width "
        f"{(fhi - flo) / 2:.2f} pp; seed-to-seed standard deviation {t.loc['test', 'seed std (pp)']:.2f} pp) against "
        f"the original code's reported {DOCUMENT['test']:.2f}% of one Go run. This book's mean minus the reported "
        f"value: {differences}{spread}",
        f"* **Label leak.** Those accuracies route every image, test images included, by the parity of its true "
        f"label. The same networks without the label: learned parity router {p(FAITHFUL, 'learned parity router')} "
        f"(the router's parity accuracy {100 * float(router_acc.mean()):.1f}%), all neurons on "
        f"{p(FAITHFUL, 'all neurons active')}: the label is worth {label_worth:.1f} pp over the better of the two.",
        f"* **An 18x18 window.** The 16x16 grid of 5x5 windows starts at the top-left pixel, so the network reads "
        f"{n_seen} of the 784 pixels, {100 * ink_share:.1f}% of the average digit's ink. Centred on the image: "
        f"{p(CENTRED)}, against {p(FAITHFUL)} for the grid as written.",
        f"* **Blocked order.** Even-digit validation accuracy after the last odd block: partitioned "
        f"{end[FAITHFUL]}, unpartitioned {end['no partition, blocked']}"
        + (": through the shared output layer the last odd block costs the unpartitioned network more of its even "
           "classes." if np.mean(end_even[FAITHFUL]) > np.mean(end_even["no partition, blocked"]) else
           ": partitioning does not protect the even classes from the last odd block here."),
        f"* **Partitioning itself.** No partition, interleaved (no label needed at test time): "
        f"{p('no partition, interleaved')}, "
        f"{'higher' if mean('no partition, interleaved') > mean(FAITHFUL) else 'not higher'} than the document's "
        f"network routed by the true label; no partition, blocked: {p('no partition, blocked')}; tag partition, "
        f"interleaved: {p('tag partition, interleaved')}.",
        f"* **Connectivity.** Fully connected hidden layer with the document's partition, {extra_epochs} epochs: "
        + (p(FULLY_CONNECTED) if fully_connected else "not run at this profile")
        + ("." if extra_epochs == epochs else f" (fewer epochs than the local networks' {epochs}: the `full` "
                                              f"profile runs both at 10)."),
        f"* **Learned gate.** Two-expert MoE, {extra_epochs} epochs: {p(MOE, 'learned gate')}; share of images to "
        f"expert 1 {np.mean(load):.2f}, agreement of its split with parity {np.mean(agree):.2f}" + fewer,
        f"* **Initialisation.** Hidden He fan-in 784 instead of 25: {p('tag partition, blocked, hidden fan-in 784')}.",
        f"* **Runtime.** All {n_networks} local networks in one lock-step pass: {seconds['local']:.0f} s for "
        f"{steps:,} steps; " + "; ".join(f"{k}: {v:.0f} s" for k, v in seconds.items() if k != "local")
        + f"; the whole notebook so far used {time.process_time():.0f} s of CPU time "
          f"({torch.get_num_threads()} thread).",
    ]
    return "\n".join(lines)
