"""Reference scoring of the export: the saved PyTorch student and candidate ONNX graphs.

Both go through :func:`training.scoring.score_pairs` (batches of 32, padded to the
longest pair, as the service pads) and the same sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.activation import sigmoid
from service.features import load_tokenizer
from training.scoring import score_pairs, session_runner

SCORE_BATCH_SIZE = 32


def torch_scores(
    model_dir: str | Path, tokenizer_path: str | Path, max_length: int, pairs: Sequence[tuple]
) -> np.ndarray:
    """Scores of the saved PyTorch student on ``(query, text)`` pairs (reference for FP32)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(tokenizer_path, max_length)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
        return model(**inputs).logits[:, 0].float().numpy()

    with torch.inference_mode():
        logits = score_pairs(
            run, tokenizer, [p[0] for p in pairs], [p[1] for p in pairs], SCORE_BATCH_SIZE
        )
    return sigmoid(logits, np.float64)


def onnx_scores(
    graph_path: str | Path,
    tokenizer_path: str | Path,
    max_length: int,
    pairs: Sequence[tuple],
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> np.ndarray:
    """Scores of an ONNX graph on ``(query, text)`` pairs, run as the service runs it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph_path), providers=list(providers))
    return session_scores(session, tokenizer_path, max_length, pairs)


def session_scores(
    session: Any, tokenizer_path: str | Path, max_length: int, pairs: Sequence[tuple]
) -> np.ndarray:
    """Scores from an open ``onnxruntime.InferenceSession`` (batches of 32, padded to longest)."""
    tokenizer = load_tokenizer(tokenizer_path, max_length)
    queries, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    logits = score_pairs(session_runner(session), tokenizer, queries, texts, SCORE_BATCH_SIZE)
    return sigmoid(logits, np.float64)


def fp16_providers() -> list[str]:
    """CUDA when this onnxruntime build has it; on a CPU-only machine FP16 parity runs on CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
