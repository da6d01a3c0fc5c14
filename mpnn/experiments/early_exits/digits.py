"""Which digits leave early: the test digits the first exit is most and least sure of."""
from __future__ import annotations

import torch


def easiest_and_hardest(entropy: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (on the CPU) of the ``k`` test digits with the lowest and the ``k`` with the highest entropy."""
    order = entropy.argsort()
    return order[:k].cpu(), order.flip(0)[:k].cpu()
