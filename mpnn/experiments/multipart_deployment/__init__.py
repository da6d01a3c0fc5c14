"""The multi-part deployment chapter (*Multi Part Deployment of Neural Network*): its experiments, tables and figures.

One module per section of the notebook, in its order:

* :mod:`.plans` -- plans: which rank owns which neurons, the metadata each server keeps, and the plans a reader may try.
* :mod:`.equivalence` -- the single-process reference and the check that every split computes what it computes, with the bytes each split sends.
* :mod:`.step_times` -- step times of every split on one host, interleaved; the timing claims decided on them, and their tables and figures.
* :mod:`.projection` -- the many-server projection from stated hardware assumptions (:mod:`mpnn.deploy.cost`).
* :mod:`.faults` -- faults: a rank killed mid-run and the restart from the shared checkpoint, under the book's launcher and under torchrun.
* :mod:`.explorer` -- the explorer's traffic tables: bytes per rank for every plan, precomputed for the site.
* :mod:`.network` -- network conditions: ranks in network namespaces, shaped links, emulated latency, and the price of synchronising.
* :mod:`.scaling` -- metadata and coordination from 2 to many servers: counted, measured and simulated.
* :mod:`.peers` -- pyTorch's own engines (tensor and pipeline parallelism) side by side with the book's engine.
* :mod:`.promises` -- the document's promises, decided on the chapter's measurements.
* :mod:`.findings` -- the chapter's prose written from the run's numbers.
* :mod:`.claims` -- the chapter's claims, one function per claim returning the arguments of ``run.claim``.
"""
from .claims import (
    claim_coordination_grows,
    claim_coordination_projection,
    claim_elastic_restart,
    claim_emulated_latency,
    claim_equivalence,
    claim_fault_stop,
    claim_fewer_messages_win,
    claim_hundreds_of_billions,
    claim_latency_model,
    claim_loopback_only,
    claim_metadata_growth,
    claim_network_conditions,
    claim_neuron_wise_traffic_grows,
    claim_overhead_on_one_host,
    claim_plans_validated,
    claim_pytorch_engines,
    claim_pytorch_equivalence,
    claim_remote_invocation,
    claim_scalability,
    claim_shared_fs_consistency,
    claim_shared_store_restart,
    claim_sync_overhead,
    claim_torchrun,
    claim_volume_model,
)
from .equivalence import (
    batches_in_fit_order,
    equivalence_and_traffic,
    max_difference,
    reference,
    traffic_summary,
    wire_ratio,
)
from .explorer import figure_traffic_site, figure_volume, rank_traffic, traffic_grid, volume_table
from .faults import elastic_restart, fault_and_restart, torchrun_equivalence, who_listens
from .findings import findings, peers_findings
from .network import (
    decide_latency_share,
    decide_network,
    decide_sync,
    figure_network,
    figure_network_fit,
    figure_sync,
    network_available,
    network_claim,
    network_conditions,
    network_skipped,
    sync_table,
)
from .peers import (
    PEERS,
    better_engine_projection,
    decide_peers,
    figure_peers,
    peers_claim,
    peers_equivalence,
    peers_step_times,
    peers_table,
)
from .plans import figure_ownership, metadata_lines, parameters_per_rank, plans_for, try_plans
from .projection import figure_projection, projection, projection_summary
from .promises import decide_remote_invocation, decide_scalability, verdict_time_words
from .scaling import (
    coordination,
    coordination_claim,
    decide_metadata,
    figure_scaling,
    metadata_table,
    simulation,
    simulation_summary,
)
from .step_times import (
    decide_all,
    decide_fewer_messages,
    decide_latency_model,
    decide_overhead,
    fewer_messages_claim,
    figure_cost_vs_ranks,
    figure_latency_model,
    figure_time_breakdown,
    latency_model_claim,
    overhead_claim,
    ratio_table,
    single_step_s,
    step_ms_table,
    step_times,
)

__all__ = ["plans_for", "parameters_per_rank", "metadata_lines", "figure_ownership", "try_plans", "batches_in_fit_order", "reference", "max_difference", "equivalence_and_traffic", "wire_ratio", "traffic_summary", "step_times", "fewer_messages_claim", "decide_fewer_messages", "overhead_claim", "decide_overhead", "latency_model_claim", "decide_latency_model", "decide_all", "ratio_table", "step_ms_table", "figure_cost_vs_ranks", "figure_time_breakdown", "figure_latency_model", "single_step_s", "projection", "projection_summary", "figure_projection", "fault_and_restart", "torchrun_equivalence", "elastic_restart", "who_listens", "volume_table", "figure_volume", "rank_traffic", "traffic_grid", "figure_traffic_site", "network_conditions", "decide_network", "decide_latency_share", "decide_sync", "network_claim", "figure_network", "figure_network_fit", "figure_sync", "network_available", "network_skipped", "sync_table", "metadata_table", "decide_metadata", "coordination", "coordination_claim", "simulation", "figure_scaling", "simulation_summary", "PEERS", "peers_equivalence", "peers_step_times", "decide_peers", "peers_claim", "peers_table", "figure_peers", "better_engine_projection", "decide_scalability", "decide_remote_invocation", "verdict_time_words", "peers_findings", "findings", "claim_network_conditions", "claim_emulated_latency", "claim_sync_overhead", "claim_metadata_growth", "claim_coordination_grows", "claim_coordination_projection", "claim_pytorch_equivalence", "claim_pytorch_engines", "claim_elastic_restart", "claim_loopback_only", "claim_remote_invocation", "claim_shared_fs_consistency", "claim_scalability", "claim_hundreds_of_billions", "claim_equivalence", "claim_plans_validated", "claim_volume_model", "claim_neuron_wise_traffic_grows", "claim_overhead_on_one_host", "claim_fewer_messages_win", "claim_latency_model", "claim_fault_stop", "claim_shared_store_restart", "claim_torchrun"]
