"""The old import path of the cross-encoder backend, kept for its callers outside the
service (``training/evaluate.py``, ``loadtest/bench.py``); new code imports
:mod:`service.scorers`."""

from service.scorers.base import Provider, Scorer, Variant
from service.scorers.cross_encoder import CPU, CUDA, OnnxScorer, is_batch_invariant

__all__ = ["CPU", "CUDA", "OnnxScorer", "Provider", "Scorer", "Variant", "is_batch_invariant"]
