"""The score activation a model package names in its manifest (``"sigmoid"`` or ``"identity"``)."""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("sigmoid", "identity")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, float32 in and out."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def activate(name: str, logits: np.ndarray) -> np.ndarray:
    """Apply the named activation; raises ValueError for a name it does not know."""
    if name == "sigmoid":
        return sigmoid(logits)
    if name == "identity":
        return np.asarray(logits, dtype=np.float32)
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
