"""The one home of metrics shared by the parts. Each KL names its direction: KL(P || Q) = sum P (log P - log Q),
accumulated in float64.

    kl_reference_edited(clean_logits, edited_logits)   # KL(P_reference || P_edited): Arditi et al.'s, tuned lens'
    kl_edited_reference(clean_logits, edited_logits)   # KL(P_edited || P_reference)
"""
from __future__ import annotations

from typing import Sequence

import torch

KL_REFERENCE_EDITED = "KL(reference || edited)"
KL_EDITED_REFERENCE = "KL(edited || reference)"


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last dimension, per row, float64 (P, Q = softmax of the logits)."""
    lp = torch.log_softmax(p_logits.double(), -1)
    lq = torch.log_softmax(q_logits.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def kl_reference_edited(reference_logits: torch.Tensor, edited_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_reference || P_edited) per row: how much the edit surprises the reference model."""
    return kl_divergence(reference_logits, edited_logits)


def kl_edited_reference(reference_logits: torch.Tensor, edited_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_edited || P_reference) per row (the reverse direction; same argument order as kl_reference_edited)."""
    return kl_divergence(edited_logits, reference_logits)


def accuracy(logits: torch.Tensor, answers: Sequence[int]) -> float:
    """Fraction of rows whose top token is the answer."""
    answers = torch.as_tensor(list(answers), device=logits.device)
    return float((logits.argmax(-1) == answers).double().mean())


def answer_prob(logits: torch.Tensor, answers: Sequence[int]) -> float:
    """Mean probability of each row's answer token: graded where accuracy is flat."""
    probs = logits.double().softmax(-1)
    answers = torch.as_tensor(list(answers), device=logits.device)
    return float(probs[torch.arange(len(answers), device=logits.device), answers].mean())
