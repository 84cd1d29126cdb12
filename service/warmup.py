"""Warm-up: the model runs typical batch shapes before ``/readyz`` turns ready.

ONNX Runtime allocates and picks kernels on the first run of a shape; doing that before
traffic keeps the first requests as fast as the rest. The last run is timed: its rate is
admission's first throughput figure (see :mod:`service.admission`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from service.batcher import BatcherConfig
from service.features import PairEncoder, collate
from service.scorers import Scorer

WARMUP_QUERY = "cordless drill"
WARMUP_TEXT = "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit with battery and charger "


def warm_up(scorer: Scorer, encoder: PairEncoder, batching: BatcherConfig) -> tuple[int, float]:
    """Run the warm-up shapes, then time a full batch of middle length once more.

    Returns the number of shapes run and the pairs per second of the timed (warm) run.
    Blocking: the engine calls it on a thread.
    """
    batches = list(warmup_batches(encoder, batching))
    runs = scorer.warmup(batches)
    widths = sorted({b["input_ids"].shape[1] for b in batches})
    middle = widths[len(widths) // 2]
    probe = max(
        (b for b in batches if b["input_ids"].shape[1] == middle),
        key=lambda b: b["input_ids"].shape[0],
    )
    t0 = time.monotonic()
    scorer.run(probe)
    return runs, probe["input_ids"].shape[0] / max(time.monotonic() - t0, 1e-9)


def warmup_batches(
    encoder: PairEncoder, batching: BatcherConfig
) -> Iterator[dict[str, np.ndarray]]:
    """Typical shapes: a few batch sizes by a few lengths, within the token budget."""
    max_length = encoder.max_length
    long_text = WARMUP_TEXT * (max_length // 8 + 1)
    template = collate(encoder.encode(WARMUP_QUERY, [long_text], truncate=True))
    width = template["input_ids"].shape[1]
    lengths = sorted({min(width, n) for n in (32, max_length // 2, max_length)})
    sizes = sorted({1, max(1, batching.max_batch_size // 4), batching.max_batch_size})
    for length in lengths:
        for size in sizes:
            rows = max(1, min(size, batching.max_batch_tokens // length))
            # Cut pairs lack their last [SEP]: warm-up exercises shapes, not scores.
            yield {k: np.repeat(v[:, :length], rows, axis=0) for k, v in template.items()}
