"""SmoothQuant moves per-channel scales into the weights without changing FP32 scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from training.onnx_export.build import _main_export
from training.onnx_export.calibration import read_calibration, write_calibration
from training.onnx_export.quantize import activation_matmuls
from training.onnx_export.scoring import onnx_scores
from training.onnx_export.smoothquant import smooth_activations

from .samples import MAX_LENGTH, PAIRS


def test_smoothing_moves_scales_without_changing_fp32_scores(
    tiny_student_dir: Path, tmp_path: Path
) -> None:
    tokenizer = tiny_student_dir / "tokenizer.json"
    export_dir = tmp_path / "export"
    _main_export(tiny_student_dir, export_dir)
    write_calibration(export_dir, tokenizer, MAX_LENGTH, PAIRS)
    model = onnx.load(str(export_dir / "model.onnx"))
    skip = activation_matmuls(model.graph)
    smoothed = smooth_activations(model, read_calibration(export_dir), skip=skip, alpha=0.75)
    # Per layer: the Q/K/V input, the attention context, the FFN input and the FFN hidden.
    assert smoothed == 4 * 2
    muls = [n for n in model.graph.node if n.name.startswith("/smooth_quant/")]
    assert len(muls) == smoothed
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "smoothed.onnx"))
    before = onnx_scores(export_dir / "model.onnx", tokenizer, MAX_LENGTH, PAIRS)
    after = onnx_scores(tmp_path / "smoothed.onnx", tokenizer, MAX_LENGTH, PAIRS)
    np.testing.assert_allclose(after, before, atol=1e-5)
    original = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(str(export_dir / "model.onnx")).graph.initializer
    }
    changed = [
        i.name
        for i in model.graph.initializer
        if i.name in original and not np.array_equal(numpy_helper.to_array(i), original[i.name])
    ]
    assert len(changed) == 6 * 2  # Q, K, V, attention output, FFN in, FFN out per layer
