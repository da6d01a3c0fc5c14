"""Tag partitioning (the note on tag-partitioned training): the chapter's data, variants, routers, tables and figures.

The mechanisms are :mod:`mpnn.tagnet` (the tag-partitioned network, eq. (1)-(2)),
:mod:`mpnn.tagnet.stacked_nets` (many networks stacked; batched routed inference) and
:mod:`mpnn.tagnet.stacked_sgd` (their per-sample SGD in lock-step). Here, one module per part of
``book/tag_partitioning.ipynb``, in its order:

* :mod:`.variants` -- the original code's reported accuracies, the routings and the variants the chapter trains.
* :mod:`.data` -- the document's data split per seed, and what the hidden grid can see.
* :mod:`.training` -- the local networks in one lock-step pass, the even-digit curve, the controls, and the
  mini-batch SGD recipe the benchmark times.
* :mod:`.routers` -- the learned parity routers (trained with :func:`mpnn.infra.train.fit`).
* :mod:`.results` -- the faithful replication against the reported numbers: accuracies, summaries, tables.
* :mod:`.forgetting` -- blocked tags and the shared output layer: the forgetting curve.
* :mod:`.pathways` -- the confusion per tag, the hidden activation maps, and the learned gate's split.
* :mod:`.explorer` -- one test image routed three ways (live and site explorer).
* :mod:`.claims` -- the verdict helpers and the chapter's claims, each as the arguments of ``run.claim``.
* :mod:`.findings` -- the 'What we found' bullets written from the run.
"""
from .claims import (
    claim_faithful_test_accuracy,
    claim_faithful_train_validation,
    claim_label_leak,
    claim_learned_gate_parity,
    claim_no_partition_baseline,
    claim_pathways_specialise,
    claim_shared_output_interference,
    claim_window_centred,
    decide_note,
    gain,
    within,
)
from .data import field_of_view, figure_field_of_view, load_data, seed_splits, split_indices
from .explorer import DigitExplorer, explorer_controls
from .findings import findings
from .forgetting import figure_forgetting_curve, forgetting, odd_blocks
from .pathways import activation_maps, confusion_per_tag, figure_activation_maps, figure_confusion_per_tag, gate_split
from .results import (
    control_results,
    faithful_split_results,
    faithful_table,
    figure_test_accuracy,
    local_results,
    pct,
    per_seed,
    summary_pp,
)
from .routers import StackedGates, route_by, train_routers
from .training import (
    EvenDigitCurve,
    control_engines,
    local_networks,
    local_schedule,
    minibatch_sgd,
    models_of,
    train_engines,
    train_local,
)
from .variants import CENTRED, CURVE_VARIANTS, DOCUMENT, FAITHFUL, FULLY_CONNECTED, MOE, ORACLE, VARIANTS

__all__ = ["DOCUMENT", "ORACLE", "FAITHFUL", "CENTRED", "FULLY_CONNECTED", "MOE", "VARIANTS", "CURVE_VARIANTS",
           "load_data", "split_indices", "seed_splits", "field_of_view", "figure_field_of_view",
           "local_networks", "models_of", "local_schedule", "EvenDigitCurve", "train_local", "control_engines",
           "train_engines", "minibatch_sgd", "StackedGates", "train_routers", "route_by",
           "local_results", "faithful_split_results", "control_results", "summary_pp", "faithful_table", "pct",
           "figure_test_accuracy", "per_seed", "odd_blocks", "figure_forgetting_curve", "forgetting",
           "confusion_per_tag", "figure_confusion_per_tag", "activation_maps", "figure_activation_maps", "gate_split",
           "DigitExplorer", "explorer_controls", "within", "gain", "decide_note",
           "claim_faithful_test_accuracy", "claim_faithful_train_validation", "claim_pathways_specialise",
           "claim_label_leak", "claim_no_partition_baseline", "claim_window_centred",
           "claim_shared_output_interference", "claim_learned_gate_parity", "findings"]
