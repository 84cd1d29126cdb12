"""The shared activation: a manifest's calibration applied before it, never reordering scores."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from relevance_core.activation import activate, sigmoid


def test_no_calibration_is_the_plain_activation() -> None:
    logits = np.array([-3.0, 0.0, 0.5, 4.0], dtype=np.float32)
    np.testing.assert_array_equal(activate("sigmoid", logits), sigmoid(logits))
    np.testing.assert_array_equal(activate("identity", logits), logits)
    assert activate("sigmoid", logits).dtype == np.float32
    assert activate("sigmoid", logits, dtype=np.float64).dtype == np.float64


def test_calibration_scales_and_shifts_the_logit_and_keeps_the_order() -> None:
    logits = np.random.default_rng(0).normal(size=50)
    platt = SimpleNamespace(scale=2.5, bias=-1.5)
    scores = activate("sigmoid", logits, platt, dtype=np.float64)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-(2.5 * logits - 1.5))), rtol=1e-12)
    assert (np.argsort(scores) == np.argsort(logits)).all()
    np.testing.assert_allclose(activate("identity", logits, platt, np.float64), 2.5 * logits - 1.5)


def test_a_decreasing_map_and_an_unknown_activation_are_refused() -> None:
    with pytest.raises(ValueError, match="scale must be > 0"):
        activate("sigmoid", np.zeros(2), SimpleNamespace(scale=-1.0, bias=0.0))
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        activate("tanh", np.zeros(2))
