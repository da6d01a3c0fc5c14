"""The token-selection chapter: MNIST splits, the training recipe (all-token warm-up, then keep ratios in turn
with annealed Gumbel noise), the sweep over seeds and inference settings, the latency measurements its timing
claims call, training on the kept tokens at a fixed budget, the tables and figures it shows, its claims and its
findings.

The mechanism (the ViT, learned selection, ToMe merging, FLOP counts, one-pass evaluation) is :mod:`mpnn.tokens`.

One module per section of the notebook, in its order:

* :mod:`.data` -- data and settings: the MNIST splits, the inference settings swept and their FLOPs.
* :mod:`.training` -- training and the sweep: the recipe, one model per seed evaluated at every setting.
* :mod:`.latency` -- latency (the timing cell) and predicted against measured speed-up.
* :mod:`.accuracy` -- accuracy against tokens and FLOPs: learned against random selection, selection against merging.
* :mod:`.patches` -- which patches are kept: kept patches, merged tokens' sizes, how often each position is kept.
* :mod:`.explorer` -- the setting explorer: its table, summary lines, static view and site view.
* :mod:`.budget` -- training on the kept tokens at a fixed budget: the recipes, their runs and the paired gaps.
* :mod:`.step_time` -- training-step time against the FLOP prediction (the timing claim on training).
* :mod:`.claims` -- the document says / this book measured: the claims' numbers and each claim's keyword
  arguments for ``run.claim``.
* :mod:`.findings` -- what we found, written from the run's numbers, and the verdict paragraph's words on time.
"""
from mpnn.tokens import TokenViT

from .accuracy import figure_pareto, figure_selection_accuracy, pareto_table, selection_accuracy
from .budget import (
    ALL_TOKENS,
    SAME_FLOPS,
    SAME_STEPS,
    Arm,
    BudgetRuns,
    budget_arms,
    budget_curve,
    budget_table,
    figure_budget_curves,
    images_seen,
    paired_gap,
    run_budget,
    training_flops,
    with_step_seconds,
)
from .claims import (
    accuracy_numbers,
    budget_numbers,
    claim_kept_token_training_same_flops,
    claim_kept_token_training_same_steps,
    claim_latency_follows_flops,
    claim_merging_latency,
    claim_merging_vs_selection,
    claim_merging_without_training,
    claim_scorer_picks_informative_tokens,
    claim_selection_keeps_accuracy,
    claim_selection_loss_vs_random,
    claim_training_step_time,
    drop_within_margin,
)
from .data import MERGING, RANDOM, REDUCTION, SELECTION, Splits, flops_table, inference_settings, load_splits, relative_flops
from .explorer import (
    figure_setting_site,
    figure_setting_static,
    setting_grid,
    setting_means,
    setting_summary,
    setting_table,
)
from .findings import findings, timing_sentences
from .latency import figure_measured_vs_predicted, latency_claim, latency_sweep, speedup_table, timed_settings
from .patches import figure_keep_frequency, keep_frequency, kept_mask, kept_patch_rows, merged_size_map, patch_map
from .step_time import train_step_claim, train_step_time, training_step_fn
from .training import SeedRuns, per_seed, run_seeds, selection_schedule, summary_table, train, warmup_cosine

__all__ = ["TokenViT", "SELECTION", "RANDOM", "MERGING", "REDUCTION", "Splits", "load_splits", "inference_settings",
           "relative_flops", "flops_table", "warmup_cosine", "selection_schedule", "train", "SeedRuns", "run_seeds",
           "summary_table", "per_seed", "timed_settings", "latency_claim", "latency_sweep", "speedup_table",
           "figure_measured_vs_predicted", "selection_accuracy", "pareto_table", "figure_selection_accuracy",
           "figure_pareto", "patch_map", "kept_mask", "kept_patch_rows", "merged_size_map", "keep_frequency",
           "figure_keep_frequency", "setting_table", "setting_summary", "setting_means", "figure_setting_static",
           "setting_grid", "figure_setting_site", "ALL_TOKENS", "SAME_FLOPS", "SAME_STEPS", "Arm", "budget_arms",
           "training_flops", "images_seen", "BudgetRuns", "run_budget", "paired_gap", "budget_table",
           "with_step_seconds", "budget_curve", "figure_budget_curves", "train_step_time", "train_step_claim",
           "training_step_fn", "drop_within_margin", "accuracy_numbers", "budget_numbers",
           "claim_kept_token_training_same_flops", "claim_kept_token_training_same_steps", "claim_training_step_time",
           "claim_selection_keeps_accuracy", "claim_selection_loss_vs_random", "claim_scorer_picks_informative_tokens",
           "claim_merging_without_training", "claim_merging_vs_selection", "claim_latency_follows_flops",
           "claim_merging_latency", "findings", "timing_sentences"]
