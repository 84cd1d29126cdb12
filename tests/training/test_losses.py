"""Distillation losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    HybridDistillationLoss,
    MarginMSELoss,
    PointwiseMSELoss,
    within_group_pairs,
)

LN3 = math.log(3.0)
# sigmoid(logits) = [0.5, 0.75, 0.25, 0.5]
LOGITS = torch.tensor([0.0, LN3, -LN3, 0.0])
TARGETS = torch.tensor([1.0, 0.5, 0.0, 0.5])
GROUPS = torch.tensor([0, 0, 0, 1])


def test_pointwise_mse_by_hand() -> None:
    # (0.5-1)^2 + (0.75-0.5)^2 + (0.25-0)^2 + 0 = 0.375 over 4 rows
    assert PointwiseMSELoss()(LOGITS, TARGETS).item() == pytest.approx(0.09375)


def test_pointwise_accepts_n_by_1_logits() -> None:
    assert PointwiseMSELoss()(LOGITS[:, None], TARGETS).item() == pytest.approx(0.09375)


def test_margin_mse_by_hand() -> None:
    # Pairs of group 0: (0,1): (-0.25 - 0.5)^2 = 0.5625; (0,2): (0.25 - 1)^2 = 0.5625;
    # (1,2): (0.5 - 0.5)^2 = 0. Group 1 has one item: no pair. Mean = 1.125 / 3.
    assert MarginMSELoss()(LOGITS, TARGETS, GROUPS).item() == pytest.approx(0.375)


def test_margin_mse_on_logits_by_hand() -> None:
    logits = torch.tensor([1.0, 3.0, 0.0])
    targets = torch.tensor([0.0, 1.0, 1.0])
    # (1-3) - (0-1) = -1 -> 1; (1-0) - (0-1) = 2 -> 4; (3-0) - (1-1) = 3 -> 9
    loss = MarginMSELoss("identity")(logits, targets, torch.tensor([7, 7, 7]))
    assert loss.item() == pytest.approx(14.0 / 3.0)


def test_margin_mse_never_pairs_across_groups() -> None:
    # Interleaved groups: only (0,2) and (1,3) are pairs.
    logits = torch.tensor([2.0, 0.0, 0.0, 5.0])
    targets = torch.tensor([0.0, 0.0, 0.0, 0.0])
    loss = MarginMSELoss("identity")(logits, targets, torch.tensor([1, 0, 1, 0]))
    assert loss.item() == pytest.approx((4.0 + 25.0) / 2)
    left, right = within_group_pairs(torch.tensor([1, 0, 1, 0]))
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 2), (1, 3)]


def test_margin_mse_is_shift_invariant_on_logits() -> None:
    logits = torch.tensor([0.3, -1.2, 2.0])
    targets = torch.tensor([0.1, 0.9, 0.4])
    groups = torch.tensor([0, 0, 0])
    loss = MarginMSELoss("identity")
    assert loss(logits + 10, targets, groups).item() == pytest.approx(
        loss(logits, targets, groups).item()
    )


def test_margin_mse_without_pairs_is_zero_and_differentiable() -> None:
    logits = torch.tensor([0.5, -0.5], requires_grad=True)
    loss = MarginMSELoss()(logits, torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_hybrid_is_weighted_sum() -> None:
    loss = HybridDistillationLoss(pointwise_weight=0.5, margin_weight=2.0)
    assert loss(LOGITS, TARGETS, GROUPS).item() == pytest.approx(0.5 * 0.09375 + 2.0 * 0.375)
    terms = loss.terms(LOGITS, TARGETS, GROUPS)
    assert terms["pointwise"].item() == pytest.approx(0.09375)
    assert terms["margin"].item() == pytest.approx(0.375)
    assert loss.get_config_dict() == {"pointwise_weight": 0.5, "margin_weight": 2.0}


def test_hybrid_gradient_flows_to_logits() -> None:
    logits = LOGITS.clone().requires_grad_(True)
    HybridDistillationLoss()(logits, TARGETS, GROUPS).backward()
    assert logits.grad is not None and torch.any(logits.grad != 0)


@pytest.mark.parametrize(("alpha", "beta"), [(-1.0, 1.0), (1.0, -0.1), (0.0, 0.0)])
def test_hybrid_rejects_bad_weights(alpha: float, beta: float) -> None:
    with pytest.raises(ValueError):
        HybridDistillationLoss(alpha, beta)


def test_margin_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="one length"):
        MarginMSELoss()(LOGITS, TARGETS[:3], GROUPS)


def test_unknown_activation_is_rejected() -> None:
    with pytest.raises(ValueError, match="activation"):
        PointwiseMSELoss("tanh")


def test_hybrid_takes_margins_of_their_own_targets() -> None:
    # Pointwise on TARGETS (0.09375); margins on other targets: group 0 pairs (0,1), (0,2),
    # (1,2) with target margins 0, 0, 0 and student margins -0.25, 0.25, 0.5.
    margin_targets = torch.tensor([0.3, 0.3, 0.3, 0.9])
    loss = HybridDistillationLoss(pointwise_weight=1.0, margin_weight=1.0)
    terms = loss.terms(LOGITS, TARGETS, GROUPS, margin_targets)
    assert terms["pointwise"].item() == pytest.approx(0.09375)
    assert terms["margin"].item() == pytest.approx((0.0625 + 0.0625 + 0.25) / 3)
    assert loss(LOGITS, TARGETS, GROUPS, margin_targets).item() == pytest.approx(
        0.09375 + 0.375 / 3
    )
    # Without margin targets the pointwise targets are used for both, as before.
    assert loss(LOGITS, TARGETS, GROUPS).item() == pytest.approx(0.09375 + 0.375)
