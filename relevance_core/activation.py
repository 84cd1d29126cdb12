"""The score activation a model package names in its manifest (``"sigmoid"`` or ``"identity"``)."""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("sigmoid", "identity")


def sigmoid(logits: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """Numerically stable logistic function, computed and returned in ``dtype``.

    float32 (the default) is what the service returns; training and evaluation pass
    ``np.float64`` so that nearby logits keep distinct scores (ties count in the metrics).
    """
    x = np.asarray(logits, dtype=dtype)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(dtype)


def activate(name: str, logits: np.ndarray) -> np.ndarray:
    """Apply the named activation; raises ValueError for a name it does not know."""
    if name == "sigmoid":
        return sigmoid(logits)
    if name == "identity":
        return np.asarray(logits, dtype=np.float32)
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
