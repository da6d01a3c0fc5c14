"""Early exits (depth sparsity, the conditional-computation survey): a network with an exit after its first block, and
inference that really skips the second block for the samples that leave.

* :mod:`.network` -- the network, its losses, the exit rule and the FLOP model;
* :mod:`.stage1_kernel` -- the always-run first block and exit as one compiled loop per image.
"""
from . import stage1_kernel
from .network import (EarlyExitConfig, EarlyExitNet, ExitResult, choose_threshold, compiled_stage1_wins, count_flops,
                      early_exit_predict, exit_costs, exit_decisions, exit_fractions, exit_logits, exit_loss, full_cost,
                      fused_exit1, fused_stage1, normalised_entropy, phase_weights, predicted_speedup, sweep_metrics)

__all__ = ["EarlyExitConfig", "EarlyExitNet", "ExitResult", "normalised_entropy", "early_exit_predict", "fused_stage1",
           "fused_exit1", "phase_weights", "exit_decisions", "exit_fractions", "count_flops", "exit_costs", "full_cost",
           "predicted_speedup", "exit_loss", "exit_logits", "sweep_metrics", "choose_threshold",
           "compiled_stage1_wins", "stage1_kernel"]
