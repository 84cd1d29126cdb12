"""Pairs and graph edits shared by the export tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MAX_LENGTH = 64
PAIRS = [
    ("angle bracket", "Simpson Strong-Tie 12-Gauge Angle"),
    (
        "deck over",
        "BEHR Premium Textured DeckOver 1-gal. #SC-141 Tugboat Wood and Concrete Coating",
    ),
    ("convection otr", "Whirlpool 1.9 cu. ft. Over the Range Convection Microwave in Stainless"),
    ("mdf 3/4", "House of Fara 3/4 in. x 3 in. x 8 ft. MDF Fluted Casing"),
    ("x", "a " * 200),  # truncated to max_length
]
# Synthetic validation set: 4 queries x 5 items with graded relevance.
VALIDATION = [
    (f"q{q}", query, title, grade)
    for q, query in enumerate(["angle bracket", "shower head", "lawn mower", "led light"])
    for title, grade in [
        ("Simpson Strong-Tie 12-Gauge Angle", 3.0 if q == 0 else 1.0),
        ("Delta Vero 1-Handle Shower Only Faucet Trim Kit", 2.67 if q == 1 else 1.33),
        ("Toro Recycler 22 in. Self-Propelled Gas Lawn Mower", 3.0 if q == 2 else 1.0),
        ("Lithonia Lighting 2-Light Black LED Emergency Fixture", 2.33 if q == 3 else 1.67),
        ("Valley View Industries Metal Stakes (4-Pack)", 2.0),
    ]
]
VALIDATION_TEXT_PAIRS = [(q, t) for _, q, t, _ in VALIDATION]
# Short probes and longer company: the probes are padded when they share a batch.
PROBES = VALIDATION_TEXT_PAIRS[:8]
COMPANY = [(f"{q} {q}", f"{t} {t} {t}") for q, t in VALIDATION_TEXT_PAIRS[4:20]]


def edit_classifier(src: Path, dst: Path, edit: Callable[[str, np.ndarray], np.ndarray]) -> Path:
    """Copy a graph, changing the classifier initializers (a deliberate corruption)."""
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name.startswith("classifier."):
            array = edit(init.name, numpy_helper.to_array(init))
            init.CopyFrom(numpy_helper.from_array(array.astype(array.dtype), init.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def shift_bias(name: str, a: np.ndarray) -> np.ndarray:
    return a + 0.05 if name.endswith("bias") else a


def negate(name: str, a: np.ndarray) -> np.ndarray:
    return -a


def invariance(graph: Path, tokenizer: Path) -> float:
    import onnxruntime as ort

    from training.onnx_export.parity import batch_invariance

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return batch_invariance(session, tokenizer, MAX_LENGTH, PROBES, COMPANY)
