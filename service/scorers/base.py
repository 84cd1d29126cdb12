"""The contract every model backend meets, so backends sit side by side.

The engine packs (query, text) pairs into padded batches and hands them to a
:class:`Scorer`; what turns a batch into one logit per row is the backend's business.
The cross-encoder (:mod:`service.scorers.cross_encoder`) runs one ONNX graph on the
pair; a representation-based student (bi-encoder, late interaction) is a sibling module
implementing the same protocol, not a branch inside the cross-encoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol

import numpy as np

Provider = Literal["cpu", "cuda"]
Variant = Literal["auto", "fp32", "fp16", "int8"]


class Scorer(Protocol):
    """What the engine needs from a model backend (a fake implements it in tests)."""

    provider: str
    variant: str
    batch_invariant: bool

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Blocking, thread-safe: padded int64 inputs → float32 logits of shape ``(rows,)``."""
        ...

    def warmup(self, batches: Iterable[dict[str, np.ndarray]]) -> int:
        """Run each batch once before traffic; returns how many ran."""
        ...

    def close(self) -> None: ...
