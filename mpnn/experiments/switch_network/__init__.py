"""The switch-based multi-part network (Majumder et al. 2025): the 100-observation demo, and what it hides.

A rule table on the age and income bands (:class:`mpnn.switch.RuleSwitch`) routes every person of
the synthetic demographic world (:mod:`mpnn.data.demographics`) to one of five sigmoid neurons,
each trained in isolation on its own subset (:func:`mpnn.partition.train_isolated`, eq. 1 there).
Seeds ("replicas") are stacked, so an experiment over every seed is one ``train_isolated`` call.

One module per section of the notebook, in its order:

* :mod:`.data` -- the data and the switch, defined: the world's cells, the recipe, the document's rule table.
* :mod:`.stacked` -- data per seed, stacked training, evaluation: the people of every run, the stacked
  tensors, the switch network trained and evaluated, and the true law's ceiling.
* :mod:`.document` -- the document's experiment on the shipped 100 observations, and the isolation check.
* :mod:`.collective` -- collective evaluation over seeds against centralised training (the pooled neuron,
  the budget MLP), and the specialisation read from the heatmaps.
* :mod:`.scaling` -- the subset-size ablation, scaling the data and scaling the neurons.
* :mod:`.misalignment` -- a misaligned switch, and where specialisation comes from (heterogeneity).
* :mod:`.ood` -- out-of-distribution groups and two fall-backs.
* :mod:`.learned` -- a learned switch (open question 3).
* :mod:`.explorer` -- the explorer (live and precomputed for the site) and its timing claim.
* :mod:`.figures` -- the chapter's heatmaps, bars and curves.
* :mod:`.claims` -- the document says / this book measured: the keyword arguments of every claim.
"""
from .claims import (
    claim_centralised_baseline,
    claim_collective_evaluation,
    claim_data_scaling,
    claim_disjoint_subsets,
    claim_explorer_retrain,
    claim_isolated_training,
    claim_learned_switch,
    claim_learned_switch_groups,
    claim_misalignment,
    claim_neuron_4_most_accurate,
    claim_neuron_4_specialises,
    claim_neuron_scaling,
    claim_out_of_distribution,
    claim_small_subsets_overfit,
    claim_specialisation_accuracy,
    claim_specialisation_from_data,
    claim_specialisation_heatmap,
)
from .collective import (
    Collective,
    MLPStack,
    budget_mlp_hidden,
    collective,
    mlp_hidden_for,
    own_group_margin,
    own_neuron_top_share,
    specialisation,
    train_mlp,
)
from .data import (
    GROUP_ORDER,
    GROUPS,
    MID,
    N_UNITS,
    NEURON_NAMES,
    OOD,
    ROUTE,
    SIZES,
    TRAIN,
    Recipe,
    band_rule,
    columns,
    route_of,
    rule_switch,
)
from .document import DocumentRun, document_run, isolation_check
from .explorer import (
    EXPLORER_SCALES,
    EXPLORER_TABLES,
    band_columns,
    explorer_controls,
    explorer_grid,
    explorer_renderer,
    explorer_retrain_claim,
    explorer_update,
    explorer_view,
    figure_explorer_site,
)
from .figures import (
    figure_bars,
    figure_collective,
    figure_curve,
    figure_heatmap,
    figure_misalignment,
    heat_chart,
    heat_frame,
)
from .learned import GatedNeurons, learned_switch, routing_purity, train_gated_neurons
from .misalignment import RELABELS, heterogeneity_sweep, metric_of, misalignment
from .ood import ood_accuracy
from .scaling import data_scaling, neuron_scaling, overfit_gap, paired_difference, subset_ablation
from .stacked import (
    Stacked,
    accuracy,
    bayes_accuracy,
    group_accuracy,
    make_runs,
    pooled_probs,
    replica_acts,
    routed,
    stack,
    test_people,
    train_pooled,
    train_switch_net,
)

__all__ = [
    # data
    "GROUPS", "TRAIN", "OOD", "N_UNITS", "SIZES", "NEURON_NAMES", "GROUP_ORDER", "MID", "Recipe", "band_rule",
    "rule_switch", "route_of", "ROUTE", "columns",
    # stacked
    "test_people", "make_runs", "Stacked", "stack", "bayes_accuracy", "train_switch_net", "train_pooled",
    "pooled_probs", "replica_acts", "routed", "accuracy", "group_accuracy",
    # document
    "DocumentRun", "document_run", "isolation_check",
    # collective
    "mlp_hidden_for", "MLPStack", "train_mlp", "budget_mlp_hidden", "Collective", "collective", "own_group_margin",
    "own_neuron_top_share", "specialisation",
    # scaling
    "subset_ablation", "overfit_gap", "paired_difference", "data_scaling", "neuron_scaling",
    # misalignment, ood, learned
    "RELABELS", "misalignment", "metric_of", "heterogeneity_sweep", "ood_accuracy", "GatedNeurons",
    "train_gated_neurons", "routing_purity", "learned_switch",
    # explorer, figures
    "explorer_update", "band_columns", "explorer_view", "explorer_controls", "explorer_renderer", "EXPLORER_TABLES",
    "EXPLORER_SCALES", "explorer_grid", "figure_explorer_site", "explorer_retrain_claim", "heat_frame",
    "figure_heatmap", "heat_chart", "figure_bars", "figure_collective", "figure_misalignment", "figure_curve",
    # claims
    "claim_disjoint_subsets", "claim_isolated_training", "claim_collective_evaluation", "claim_neuron_4_specialises",
    "claim_neuron_4_most_accurate", "claim_specialisation_heatmap", "claim_specialisation_accuracy",
    "claim_specialisation_from_data", "claim_centralised_baseline", "claim_small_subsets_overfit",
    "claim_data_scaling", "claim_neuron_scaling", "claim_misalignment", "claim_out_of_distribution",
    "claim_learned_switch", "claim_learned_switch_groups", "claim_explorer_retrain",
]
