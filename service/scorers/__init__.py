"""Model backends behind the :class:`~service.scorers.base.Scorer` protocol."""

from service.scorers.base import Provider, Scorer, Variant
from service.scorers.cross_encoder import OnnxScorer

__all__ = ["OnnxScorer", "Provider", "Scorer", "Variant"]
