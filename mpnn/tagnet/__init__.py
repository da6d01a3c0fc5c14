"""Tag partitioning (the tag-partitioning document): a network whose hidden layer is split into two halves, one per
parity tag of the label, trained by per-sample SGD as the original Go code does.

* :mod:`.network` -- the tagged network, its switch and the reference per-sample SGD;
* :mod:`.local` -- the locally connected input layer (one weight set per window);
* :mod:`.stacked_nets` -- many such networks (seeds, variants) as stacked tensors;
* :mod:`.stacked_sgd` -- per-sample SGD of the stacked networks, in torch or a compiled kernel.
"""
from .local import LocallyConnected, window_index
from .network import (PARITY, TagNet, TwoExpertMoE, epoch_order, make_schedule, parity_switch, partition_groups,
                      reference_sgd)
from .stacked_nets import StackedNets
from .stacked_sgd import StackedSGD

__all__ = ["PARITY", "partition_groups", "parity_switch", "TagNet", "TwoExpertMoE", "reference_sgd", "epoch_order",
           "make_schedule", "LocallyConnected", "window_index", "StackedNets", "StackedSGD"]
