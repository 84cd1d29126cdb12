"""INT8 node selectors and makers: every recipe builds a graph that runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from training.onnx_export.build import _main_export
from training.onnx_export.calibration import write_calibration
from training.onnx_export.quantize import (
    activation_matmuls,
    feed_forward,
    ffn_input_projections,
    last_layer,
)
from training.onnx_export.recipes import RECIPES
from training.onnx_export.scoring import onnx_scores

from .samples import MAX_LENGTH, PAIRS


def test_int8_node_selectors(tiny_student_dir: Path, tmp_path: Path) -> None:
    _main_export(tiny_student_dir, tmp_path / "export")
    graph = onnx.load(str(tmp_path / "export" / "model.onnx")).graph
    assert sorted(activation_matmuls(graph)) == [
        f"/bert/encoder/layer.{i}/attention/self/MatMul{s}" for i in (0, 1) for s in ("", "_1")
    ]
    assert last_layer(graph) and all("/layer.1/" in n for n in last_layer(graph))
    assert sorted(feed_forward(graph)) == [
        f"/bert/encoder/layer.{i}/{m}/dense/MatMul"
        for i in (0, 1)
        for m in ("intermediate", "output")
    ]
    assert sorted(ffn_input_projections(graph)) == [
        f"/bert/encoder/layer.{i}/intermediate/dense/MatMul" for i in (0, 1)
    ]
    # Each restricted recipe builds a graph that runs.
    pairs = [("angle bracket", "Simpson Strong-Tie 12-Gauge Angle")]
    write_calibration(tmp_path / "export", tiny_student_dir / "tokenizer.json", MAX_LENGTH, PAIRS)
    for recipe in RECIPES["int8"]:
        graph_path = recipe.make(tmp_path / "export", tmp_path / recipe.label)
        scores = onnx_scores(graph_path, tiny_student_dir / "tokenizer.json", MAX_LENGTH, pairs)
        assert np.isfinite(scores).all(), recipe.label
