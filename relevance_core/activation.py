"""The score activation a model package names in its manifest (``"sigmoid"`` or ``"identity"``).

A manifest may also carry a score calibration (Platt scaling: ``scale * logit + bias``
before the activation, fit on validation by ``training.score_calibration``), so that the
[0, 1] scores mean what the manifest's classes say. The map is strictly increasing
(``scale > 0``): it changes what a score means, never an order. Serving and the
evaluation both go through :func:`activate`, so they cannot disagree on it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

ACTIVATIONS = ("sigmoid", "identity")


class Calibration(Protocol):
    """What :func:`activate` reads of a calibration (``service.model_package.ScoreCalibration``)."""

    @property
    def scale(self) -> float: ...

    @property
    def bias(self) -> float: ...


def sigmoid(logits: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """Numerically stable logistic function, computed and returned in ``dtype``.

    float32 (the default) is what the service returns; training and evaluation pass
    ``np.float64`` so that nearby logits keep distinct scores (ties count in the metrics).
    """
    x = np.asarray(logits, dtype=dtype)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(dtype)


def activate(
    name: str,
    logits: np.ndarray,
    calibration: Calibration | None = None,
    dtype: type[np.floating] = np.float32,
) -> np.ndarray:
    """Apply the calibration (if any), then the named activation; ValueError for an unknown name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
    x = np.asarray(logits, dtype=np.float64)
    if calibration is not None:
        if not calibration.scale > 0:  # a decreasing map would reverse every ranking
            raise ValueError(f"calibration scale must be > 0, got {calibration.scale}")
        x = calibration.scale * x + calibration.bias
    if name == "sigmoid":
        return sigmoid(x, dtype)
    return x.astype(dtype)
