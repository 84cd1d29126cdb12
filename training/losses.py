"""Distillation losses for a single-logit cross-encoder (sentence-transformers style).

Each loss is a small ``nn.Module``: the constructor checks its preconditions, ``forward``
holds only the maths, ``get_config_dict`` records the settings for reproducibility.
Inputs are plain tensors (logits, targets, group ids): tokenization stays outside the
loss so that truncation is decided in one place (:func:`service.features.encode_pairs`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HybridDistillationLoss", "MarginMSELoss", "PointwiseMSELoss", "within_group_pairs"]

MARGIN_MSE_CITATION = """
@misc{hofstaetter2021improving,
    title={Improving Efficient Neural Ranking Models with
           Cross-Architecture Knowledge Distillation},
    author={Sebastian Hofst{\\"a}tter and Sophia Althammer and Michael Schr{\\"o}der
            and Mete Sertkan and Allan Hanbury},
    year={2021},
    eprint={2010.02666},
    archivePrefix={arXiv},
}
"""


def _activation(name: str) -> nn.Module:
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"activation must be 'sigmoid' or 'identity', got {name!r}")


def _flat_logits(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    if logits.dim() != 1:
        raise ValueError(f"expected logits of shape (n,) or (n, 1), got {tuple(logits.shape)}")
    return logits


def within_group_pairs(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(i, j)`` with ``i < j`` of every pair of rows that share a group id.

    ``groups`` has shape ``(n,)``; returns two index tensors of equal length (empty when
    no group holds two rows). Each unordered pair appears once.
    """
    same = groups[:, None] == groups[None, :]
    return torch.triu(same, diagonal=1).nonzero(as_tuple=True)


class PointwiseMSELoss(nn.Module):
    """Pointwise MSE between the student's score and a target score in [0, 1].

    .. math:: L = \\frac{1}{n} \\sum_i \\left(\\sigma(z_i) - y_i\\right)^2

    ``z_i`` is the student logit, ``sigma`` the activation (sigmoid by default, the same
    one the service applies), ``y_i`` the target: a teacher score or a human grade mapped
    by :func:`training.data.grade_to_score`.

    Inputs:

    +-----------+----------------------+--------------------------------+
    | argument  | shape                | meaning                        |
    +===========+======================+================================+
    | logits    | ``(n,)`` or ``(n,1)``| raw student outputs            |
    | targets   | ``(n,)``             | target scores in [0, 1]        |
    +-----------+----------------------+--------------------------------+

    Related: :class:`MarginMSELoss` (relative targets), :class:`HybridDistillationLoss`.

    Example::

        loss = PointwiseMSELoss()(torch.tensor([0.0, 2.0]), torch.tensor([0.5, 1.0]))
    """

    def __init__(self, activation: str = "sigmoid") -> None:
        super().__init__()
        self.activation_name = activation
        self.activation = _activation(activation)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scores = self.activation(_flat_logits(logits))
        return torch.mean((scores - targets.to(scores.dtype)) ** 2)

    def get_config_dict(self) -> dict[str, str]:
        return {"activation": self.activation_name}


class MarginMSELoss(nn.Module):
    """Margin-MSE over every pair of items that belong to the same query (group).

    .. math::

        L = \\frac{1}{|P|} \\sum_{(i,j) \\in P}
            \\left((s_i - s_j) - (t_i - t_j)\\right)^2,
        \\qquad P = \\{(i, j) : i < j,\\ g_i = g_j\\}

    ``s = activation(logits)`` are the student's scores (sigmoid by default; ``identity``
    compares raw logit margins as in Hofstätter et al.), ``t`` the target scores and
    ``g`` the group ids. Unlike the pos/neg triplets of the original formulation, all
    within-group pairs of a batch are used, so a batch holding ``k`` items of one query
    contributes ``k (k - 1) / 2`` pairs; larger groups weigh more. A batch with no pair
    gives a zero loss that still carries a graph.

    Scale: the margin of targets in [0, 1] lies in [-1, 1]; the margins of sigmoid
    scores have the same range, so the targets and the activation must be on one scale
    (with ``identity`` the targets must be logit-scale too).

    Inputs:

    +-----------+----------------------+--------------------------------------------+
    | argument  | shape                | meaning                                    |
    +===========+======================+============================================+
    | logits    | ``(n,)`` or ``(n,1)``| raw student outputs                        |
    | targets   | ``(n,)``             | teacher (or human) scores                  |
    | groups    | ``(n,)`` integer     | query id; only same-id items form pairs    |
    +-----------+----------------------+--------------------------------------------+

    References: Hofstätter et al., "Improving Efficient Neural Ranking Models with
    Cross-Architecture Knowledge Distillation" (arXiv:2010.02666); sentence-transformers'
    ``cross_encoder/losses/MarginMSELoss.py``.

    Example::

        loss = MarginMSELoss()(logits, teacher_scores, query_ids)
    """

    citation = MARGIN_MSE_CITATION

    def __init__(self, activation: str = "sigmoid") -> None:
        super().__init__()
        self.activation_name = activation
        self.activation = _activation(activation)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        scores = self.activation(_flat_logits(logits))
        if not (scores.shape == targets.shape == groups.shape):
            raise ValueError(
                f"logits, targets and groups must have one length, got "
                f"{tuple(scores.shape)}, {tuple(targets.shape)}, {tuple(groups.shape)}"
            )
        left, right = within_group_pairs(groups)
        if left.numel() == 0:
            return scores.sum() * 0.0
        targets = targets.to(scores.dtype)
        student_margin = scores[left] - scores[right]
        target_margin = targets[left] - targets[right]
        return torch.mean((student_margin - target_margin) ** 2)

    def get_config_dict(self) -> dict[str, str]:
        return {"activation": self.activation_name}


class HybridDistillationLoss(nn.Module):
    """Weighted sum of the pointwise and the margin loss.

    .. math::

        L = \\alpha \\cdot L_{\\text{pointwise}}(s, y)
          + \\beta \\cdot L_{\\text{margin}}(s, m, g)

    The pointwise term anchors the absolute score (needed for the relevance classes
    and thresholds); the margin term teaches the within-query order the teacher sees,
    including fine differences the pointwise MSE treats as noise (the hybrid pointwise
    plus margin recipe). ``pointwise_weight`` is ``alpha``, ``margin_weight`` is ``beta``.
    Both terms work on sigmoid scores, the scale of the targets.

    The two terms may take different targets: ``targets`` ``y`` for the pointwise term
    and ``margin_targets`` ``m`` (default: ``y``) for the margins, e.g. human grades (or a
    grade/teacher blend) as the absolute anchor and the teacher's scores as the one scale
    every margin of a query is taken on. Inputs otherwise as :class:`MarginMSELoss`.

    Example::

        loss_fn = HybridDistillationLoss(pointwise_weight=1.0, margin_weight=1.0)
        loss = loss_fn(logits, targets, groups)
        loss = loss_fn(logits, blended, groups, margin_targets=teacher_scores)
    """

    def __init__(
        self,
        pointwise_weight: float = 1.0,
        margin_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if pointwise_weight < 0 or margin_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if pointwise_weight == 0 and margin_weight == 0:
            raise ValueError("at least one of pointwise_weight and margin_weight must be > 0")
        self.pointwise_weight = pointwise_weight
        self.margin_weight = margin_weight
        self.pointwise = PointwiseMSELoss("sigmoid")
        self.margin = MarginMSELoss("sigmoid")

    def terms(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        groups: torch.Tensor,
        margin_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The two unweighted terms, for logging."""
        margin_targets = targets if margin_targets is None else margin_targets
        return {
            "pointwise": self.pointwise(logits, targets),
            "margin": self.margin(logits, margin_targets, groups),
        }

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pointwise_weight * terms["pointwise"] + self.margin_weight * terms["margin"]

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        groups: torch.Tensor,
        margin_targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.combine(self.terms(logits, targets, groups, margin_targets))

    def get_config_dict(self) -> dict[str, float]:
        return {"pointwise_weight": self.pointwise_weight, "margin_weight": self.margin_weight}
