"""The specialization chapter (Jarvis, Klein, Rosman & Saxe 2023): linear dynamics, held-out
patterns and CMNIST.

One module per part of the chapter, in its order:

* :mod:`.linear` -- the linear network: the dataset's spectrum, four architectures (eq. 1), the blocks of the learned map, held-out patterns and the closed-form explorer.
* :mod:`.cmnist_towers` -- compositional MNIST: the paper's metrics, its conv towers, MLP towers at CPU scale, summaries and figures.
* :mod:`.nonlinear` -- nonlinear hidden layers (the first next check).
* :mod:`.regularisation` -- approximate modularity by regularisation (the third next check) and its explorer.
* :mod:`.cmnist_share` -- compositional MNIST with a varying compositional share (the first experiment).
* :mod:`.claims` -- the verdicts of the chapter's claims, and the claims of the linear theory, held-out patterns and CMNIST.
* :mod:`.claims_next` -- the claims of the document's next checks (nonlinear layers, regularisation, the compositional share).
* :mod:`.findings` -- the chapter's prose written from the run.
"""
from .claims import (
    FAILS,
    GENERALISES,
    any_part,
    claim_cmnist_cpu_split_lower_compositional_error,
    claim_cmnist_split_lower_compositional_error,
    claim_dense_coupling,
    claim_full_rank_sampling,
    claim_partitioned_systematic,
    claim_partitioned_zero,
    claim_split_keeps_coupling,
    claim_sv_closed_form,
    heldout_verdicts,
    parts_text,
    regularisation_verdicts,
)
from .claims_next import (
    GENERIC_PENALTIES,
    claim_cmnist_share_advantage_grows,
    claim_cmnist_share_paper_scale,
    claim_cmnist_share_split_independent,
    claim_nonlinear_coupling_survives,
    claim_nonlinear_heldout_relu_partitioned_fails,
    claim_nonlinear_heldout_tanh_partitioned_only,
    claim_nonlinear_partitioned_zero,
    claim_regularisation_cross_block_l1_systematic,
    claim_regularisation_no_systematicity,
    generic_floors,
    share_ends,
)
from .cmnist_share import (
    compositional_sweep,
    figure_compositional_sweep,
    paper_share_rows,
    share_contrast,
    sweep_differences,
)
from .cmnist_towers import (
    IMAGE_HW,
    PAPER_KERNELS,
    CPURun,
    PairedComparison,
    PaperRun,
    cmnist_targets,
    error_curves,
    evaluate,
    evaluate_runs,
    figure_cmnist_errors,
    final_metrics_table,
    final_test_errors,
    make_model,
    metrics,
    mlp_towers,
    paired_comparison,
    paired_report,
    paper_hours,
    paper_step_seconds,
    per_seed,
    pooled_inputs,
    seconds_per_step,
    sgd_step,
    squared_error,
    train_cmnist,
    train_cpu_scale,
    train_paper_scale,
    train_tower_mlp,
)
from .findings import (
    LAMBDA,
    cpu_findings,
    nonlinear_findings,
    regularisation_findings,
    share_findings,
)
from .formats import ci_text, sci_text
from .linear import (
    ACCURACIES,
    ARCHS,
    COMP_CHANCE,
    COUPLING_TITLE,
    HELDOUT_ARCHS,
    HELDOUT_BITS,
    HELDOUT_SETTINGS,
    METRIC_NAMES,
    METRICS,
    PENALTY_NAMES,
    ModeFit,
    band,
    block_norm_curves,
    closed_form_curves,
    distinct_training_sets,
    figure_block_norms,
    figure_closed_form,
    figure_heldout_losses,
    figure_singular_values,
    final_norm_table,
    fit_modes,
    full_rank_table,
    heldout_bands,
    heldout_experiment,
    heldout_experiments,
    heldout_split,
    heldout_table,
    run_heldout,
    singular_value_bands,
    singular_value_table,
    spanning_runs,
    spectrum_table,
    train_architectures,
)
from .nonlinear import (
    ACTIVATIONS,
    NONLINEAR_ARCHS,
    figure_heldout_nonlinear,
    figure_nonlinear_norms,
    heldout_nonlinear,
    heldout_nonlinear_summary,
    nonlinear_block_norms,
    nonlinear_norm_frame,
)
from .regularisation import (
    PENALTIES,
    best_strength,
    figure_regularisation,
    figure_regularisation_explorer,
    penalty_extremes,
    regularisation_grid,
    regularisation_summary,
    regularisation_sweep,
)

__all__ = ["ARCHS", "HELDOUT_ARCHS", "HELDOUT_SETTINGS", "HELDOUT_BITS", "METRICS", "COMP_CHANCE", "ACCURACIES", "METRIC_NAMES", "PENALTY_NAMES", "COUPLING_TITLE", "band", "spectrum_table", "train_architectures", "ModeFit", "fit_modes", "singular_value_table", "singular_value_bands", "figure_singular_values", "block_norm_curves", "figure_block_norms", "final_norm_table", "heldout_split", "heldout_experiments", "heldout_experiment", "run_heldout", "distinct_training_sets", "spanning_runs", "heldout_bands", "figure_heldout_losses", "heldout_table", "full_rank_table", "closed_form_curves", "figure_closed_form", "cmnist_targets", "squared_error", "metrics", "PAPER_KERNELS", "IMAGE_HW", "make_model", "evaluate", "train_cmnist", "PaperRun", "train_paper_scale", "sgd_step", "seconds_per_step", "paper_step_seconds", "paper_hours", "mlp_towers", "pooled_inputs", "evaluate_runs", "train_tower_mlp", "CPURun", "train_cpu_scale", "error_curves", "figure_cmnist_errors", "final_metrics_table", "per_seed", "PairedComparison", "paired_comparison", "paired_report", "final_test_errors", "NONLINEAR_ARCHS", "ACTIVATIONS", "nonlinear_block_norms", "nonlinear_norm_frame", "figure_nonlinear_norms", "heldout_nonlinear", "heldout_nonlinear_summary", "figure_heldout_nonlinear", "PENALTIES", "regularisation_sweep", "regularisation_summary", "figure_regularisation", "penalty_extremes", "best_strength", "regularisation_grid", "figure_regularisation_explorer", "compositional_sweep", "sweep_differences", "figure_compositional_sweep", "share_contrast", "paper_share_rows", "GENERALISES", "FAILS", "heldout_verdicts", "parts_text", "regularisation_verdicts", "any_part", "claim_sv_closed_form", "claim_dense_coupling", "claim_partitioned_zero", "claim_split_keeps_coupling", "claim_partitioned_systematic", "claim_full_rank_sampling", "claim_cmnist_cpu_split_lower_compositional_error", "claim_cmnist_split_lower_compositional_error", "GENERIC_PENALTIES", "claim_nonlinear_coupling_survives", "claim_nonlinear_partitioned_zero", "claim_nonlinear_heldout_tanh_partitioned_only", "claim_nonlinear_heldout_relu_partitioned_fails", "generic_floors", "claim_regularisation_no_systematicity", "claim_regularisation_cross_block_l1_systematic", "share_ends", "claim_cmnist_share_advantage_grows", "claim_cmnist_share_split_independent", "claim_cmnist_share_paper_scale", "ci_text", "sci_text", "nonlinear_findings", "LAMBDA", "regularisation_findings", "cpu_findings", "share_findings"]
