"""Readable summaries of routing: how balanced it is, and what it says about the classes."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def routing_entropy(share: torch.Tensor) -> float:
    """``H(share) / log E``: 1 = perfectly balanced, 0 = one expert takes all (``E^value`` experts in use)."""
    p = share.double().clamp_min(0)
    p = p / p.sum()
    h = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return float(h / math.log(len(p)))


def class_expert_joint(assignment: torch.Tensor, labels: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """(classes, E): the assignment mass of each class's tokens on each expert, ``onehot(labels)^T A``."""
    onehot = F.one_hot(labels.long().cpu(), n_classes).double()       # (N, classes)
    return onehot.t() @ assignment.double().cpu()                       # (classes, E)


def expert_digit_table(assignment: torch.Tensor, labels: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """(classes, E): share of each class's assignment mass that goes to each expert (rows sum to 1)."""
    table = class_expert_joint(assignment, labels, n_classes)
    return table / table.sum(1, keepdim=True).clamp_min(1e-12)


def class_expert_nmi(assignment: torch.Tensor, labels: torch.Tensor, n_classes: int = 10) -> float:
    """Normalised mutual information ``I(class; expert) / H(class)`` of the joint distribution
    ``p(c, e)`` proportional to :func:`class_expert_joint` (0: routing ignores the class, 1: the
    expert identifies the class)."""
    joint = class_expert_joint(assignment, labels, n_classes)
    joint = joint / joint.sum()
    p_class, p_expert = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    mi = (joint * (torch.log(joint.clamp_min(1e-300)) - torch.log((p_class @ p_expert).clamp_min(1e-300)))).sum()
    return float(mi / -(p_class * torch.log(p_class)).sum())
