"""Held-out evaluation: ``metrics`` (ranking, classes, slices), ``baselines`` (BM25, embedding
cosine, a model package, latency), ``systems`` (every system scored), ``report`` (rows,
markdown, findings, curve) and ``stage`` (``python -m training evaluate``)."""
