"""Conditional computation I: mixture-of-experts on MNIST.

The document: Scardapane et al. 2024, *Conditional computation in neural networks: principles and
research trends*.

One module per part of the chapter, in its order:

* :mod:`.training` -- the data and the training recipe: every variant trained as stacked replicas in one vectorised pass.
* :mod:`.variants` -- the variants compared: dense layers, MoE layers of every router kind, the transformer blocks.
* :mod:`.framework` -- the framework in code: one learned mask per router, Gumbel-softmax sampling, straight-through top-k.
* :mod:`.tables` -- the tables the chapter shows.
* :mod:`.figures` -- the figures the chapter shows.
* :mod:`.claims` -- the numbers behind the prose and the claims, and the claims of the MNIST sections.
* :mod:`.claims_vit` -- the claims of the vision-transformer sections.
"""
from .claims import (
    changed_range,
    ci_text,
    claim_balancing_prevents_collapse,
    claim_batch_dependent_routing,
    claim_collapse_without_balancing,
    claim_experts_specialise,
    claim_gumbel_softmax,
    claim_mask_framework,
    claim_moe_beats_equal_compute,
    claim_moe_near_big_dense,
    claim_switch_alpha_one_layer,
    claim_top1_near_big_dense,
    claim_top1_vs_equal_compute,
    decide_text,
    diff_claim,
    level_claim,
    points,
)
from .claims_vit import (
    claim_global_vs_layerwise,
    claim_layerwise_routing_differs,
    claim_vit_load_balanced,
    claim_vit_moe_every_block,
    claim_vit_one_moe_block,
    claim_vit_routing_position_then_digit,
    claim_vit_top1_routes_by_digit,
    layerwise_nmi,
    layerwise_spread,
)
from .figures import (
    ROUTING_VARIANTS,
    VIT_VARIANTS,
    ViTResult,
    ViTSetup,
    ViTStudy,
    build_vit,
    check_vit_seeds,
    cosine_schedule,
    digit_frame,
    figure_digit_routing,
    figure_expert_shares,
    figure_gumbel_max,
    figure_load_shares,
    figure_position_routing,
    figure_routing_bars,
    fit_vit,
    layer_agreement,
    layer_digit_frame,
    load_curves,
    mlp_mflops,
    moe_layers,
    position_frame,
    prepare_images,
    routing_comparison,
    token_nmi,
    vit_mlp,
    vit_routing,
    vit_table,
)
from .framework import framework_check, gumbel_max_check
from .tables import (
    accuracy_table,
    balance_tables,
    capacity_curves,
    capacity_tables,
    expert_digit_frame,
    figure_capacity,
    predictions_changed,
    predictions_in_order,
    router_scores,
    routing_frame,
    routing_overview,
    specialisation_table,
)
from .training import (
    CLASSES,
    DETAIL_VARIANTS,
    MAIN_VARIANTS,
    PIXELS,
    UNIT,
    FitResult,
    RoutingLog,
    adam,
    check_seed_counts,
    classification_loss,
    fit_classifier,
    fit_replicas,
    predict_in_groups,
    prepare_mnist,
)
from .variants import Study, active_mflops, variant_spec

__all__ = ["CLASSES", "PIXELS", "UNIT", "MAIN_VARIANTS", "DETAIL_VARIANTS", "check_seed_counts", "prepare_mnist", "adam", "FitResult", "RoutingLog", "classification_loss", "predict_in_groups", "fit_classifier", "fit_replicas", "variant_spec", "active_mflops", "Study", "framework_check", "gumbel_max_check", "accuracy_table", "balance_tables", "capacity_tables", "capacity_curves", "figure_capacity", "specialisation_table", "expert_digit_frame", "predictions_in_order", "predictions_changed", "router_scores", "routing_frame", "routing_overview", "figure_gumbel_max", "figure_expert_shares", "figure_digit_routing", "VIT_VARIANTS", "ROUTING_VARIANTS", "prepare_images", "cosine_schedule", "ViTSetup", "vit_mlp", "build_vit", "moe_layers", "mlp_mflops", "ViTResult", "vit_routing", "fit_vit", "ViTStudy", "token_nmi", "vit_table", "position_frame", "digit_frame", "load_curves", "layer_agreement", "routing_comparison", "figure_position_routing", "figure_load_shares", "check_vit_seeds", "layer_digit_frame", "figure_routing_bars", "points", "ci_text", "decide_text", "diff_claim", "level_claim", "claim_mask_framework", "claim_gumbel_softmax", "claim_moe_beats_equal_compute", "claim_top1_vs_equal_compute", "claim_moe_near_big_dense", "claim_top1_near_big_dense", "claim_collapse_without_balancing", "claim_balancing_prevents_collapse", "claim_switch_alpha_one_layer", "claim_experts_specialise", "changed_range", "claim_batch_dependent_routing", "claim_vit_one_moe_block", "claim_vit_moe_every_block", "layerwise_nmi", "claim_vit_routing_position_then_digit", "claim_vit_top1_routes_by_digit", "claim_vit_load_balanced", "claim_global_vs_layerwise", "layerwise_spread", "claim_layerwise_routing_differs"]
