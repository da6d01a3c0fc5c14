"""Multi-part deployment (the multi-part deployment document): one network's neurons spread over processes.

* :mod:`.plan`       -- the Neuron Distributor (count / percentage / IDs / layer plans + metadata);
* :mod:`.engine`     -- forward and backward of the partitioned MLP over ``torch.distributed``;
* :mod:`.checkpoint` -- the shared store: sharded ``torch.distributed.checkpoint`` files;
* :mod:`.worker`     -- what every rank runs (importable by spawned processes and torchrun);
* :mod:`.launch`     -- start ranks on 127.0.0.1, bounded waits, guaranteed teardown; torchrun
  (several launchers, elastic restarts); store and ranks bound to one address (loopback by default);
* :mod:`.peers`      -- PyTorch's own engines on the same plans (tensor and pipeline parallelism);
* :mod:`.cost`       -- the communication-volume and latency model, and its projection.

The chapter's experiments on them live in :mod:`mpnn.experiments.multipart_deployment`; nothing a
rank runs imports it.
"""
from .plan import Plan, PlanError, by_count, by_ids, by_layer, by_percentage, make_plan, STRATEGIES
from .engine import ShardedMLP, assemble, init_params, reference_model
from .launch import DeployError, launch, torchrun

__all__ = ["Plan", "PlanError", "by_count", "by_ids", "by_layer", "by_percentage", "make_plan",
           "STRATEGIES", "ShardedMLP", "assemble", "init_params", "reference_model", "DeployError", "launch",
           "torchrun"]
