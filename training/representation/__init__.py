"""The representation student: the item is encoded without the query, so it can be cached.

A cross-encoder runs query and item through BERT together for every pair. This student
runs them apart through one shared encoder (the MiniLM weights), so an item's vectors are
computed once and kept, and a request costs one query encoding plus a cheap interaction.

Two architectures (``representation.architecture`` in the config):

- ``bi-encoder``: one vector per side, the masked mean of the encoder's token states,
  optionally projected to ``dim``, L2-normalised; similarity = cosine.
- ``late-interaction`` (ColBERT, Khattab & Zaharia, 2020): one vector per token, projected
  to ``dim`` and L2-normalised; similarity = mean over the query's tokens of the best
  cosine with any item token (MaxSim). The sum of MaxSim that ColBERT ranks by, divided by
  the query's token count: the order within a query is the same, and the pointwise loss
  sees one scale whatever the query's length.

Both give ``logit = scale * similarity + bias`` and ``score = sigmoid(logit)`` on the [0, 1]
relevance scale, so they train with the cross-encoder's hybrid loss
(:class:`training.losses.HybridDistillationLoss`: pointwise MSE + margin-MSE, Hofstätter
et al., 2020) on the same targets.

Modules: ``model`` (the PyTorch student, text encoding, the head's maths in numpy, save
and load), ``train`` (the fitting loop, through :func:`training.stages.fit_run`).
"""

from __future__ import annotations

BI_ENCODER = "bi-encoder"
LATE_INTERACTION = "late-interaction"
ARCHITECTURES = (BI_ENCODER, LATE_INTERACTION)
# Saved next to the encoder in a run directory and copied into the package.
HEAD_FILE = "representation_head.json"
