"""The early-exits chapter: MNIST splits, the joint training of both exits, the threshold sweep over seeds, the
wall-time measurements its timing claims call, the tables and figures it shows, its claims and its findings.

The mechanism (network, skipping inference, exit decisions, FLOP counts) is :mod:`mpnn.early_exit`.

One module per section of the notebook, in its order:

* :mod:`.data` -- data and network: the MNIST splits and the FLOPs a sample pays at each exit.
* :mod:`.training` -- training and the threshold sweep: both exits trained per seed, T* chosen on validation images.
* :mod:`.wall_time` -- wall time (the timing cell): the timing claims' measurement, the speed-up per threshold and
  the time of each part of the network.
* :mod:`.compute` -- accuracy against compute: the sweep's accuracy, FLOPs and exit fractions, and their figures.
* :mod:`.speedup` -- predicted against measured speed-up, and where the time goes.
* :mod:`.digits` -- which digits leave early.
* :mod:`.explorer` -- the threshold explorer: its table, summary line, static view and site view.
* :mod:`.claims` -- the document says / this book measured: each claim's keyword arguments for ``run.claim``.
* :mod:`.findings` -- what we found, written from the run's numbers.
"""
from .claims import (
    claim_early_exit_accuracy_margin,
    claim_early_exit_saves_compute,
    claim_entropy_ranks_difficulty,
    claim_kernel_recovers_time,
    claim_wall_time_faster,
    claim_wall_time_follows_flops,
)
from .compute import exit_fraction_table, figure_exit_fractions, figure_pareto, pareto_table
from .data import MNIST_TRAIN, Splits, cost_table, load_splits
from .digits import easiest_and_hardest
from .explorer import (
    figure_threshold_explorer,
    figure_threshold_static,
    threshold_grid,
    threshold_long,
    threshold_summary,
    threshold_table,
)
from .findings import findings
from .speedup import (
    breakdown_table,
    figure_speedup,
    figure_time_breakdown,
    part_flops,
    rate_sentence,
    speedup_table,
    time_model_table,
)
from .training import SeedRuns, evaluate_seed, run_seeds, seed_claims, sweep_records, train
from .wall_time import (
    MAX_EFFICIENCY,
    MIN_SPEEDUP,
    REFUTED_EFFICIENCY,
    rows_reaching_block2,
    speedup_sweep,
    time_breakdown,
    timing_sentence,
    wall_time_claim,
)

__all__ = ["MNIST_TRAIN", "Splits", "load_splits", "cost_table", "train", "SeedRuns", "sweep_records",
           "evaluate_seed", "run_seeds", "seed_claims", "MIN_SPEEDUP", "MAX_EFFICIENCY", "REFUTED_EFFICIENCY",
           "timing_sentence", "wall_time_claim", "speedup_sweep", "rows_reaching_block2", "time_breakdown",
           "pareto_table", "exit_fraction_table", "figure_pareto", "figure_exit_fractions", "speedup_table",
           "figure_speedup", "part_flops", "breakdown_table", "time_model_table", "figure_time_breakdown",
           "rate_sentence", "easiest_and_hardest", "threshold_table", "threshold_summary", "threshold_long",
           "figure_threshold_static", "threshold_grid", "figure_threshold_explorer",
           "claim_early_exit_saves_compute", "claim_early_exit_accuracy_margin", "claim_entropy_ranks_difficulty",
           "claim_wall_time_faster", "claim_wall_time_follows_flops", "claim_kernel_recovers_time", "findings"]
