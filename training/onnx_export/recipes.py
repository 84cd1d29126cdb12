"""The candidate recipes of every variant, best first (see ``training.onnx_export``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.onnx_export import quiet
from training.onnx_export.quantize import (
    activation_matmuls,
    dynamic_quantization,
    feed_forward,
    ffn_input_projections,
    last_layer,
    static_quantization,
)
from training.onnx_export.smoothquant import SMOOTH_ALPHA


@dataclass(frozen=True)
class Recipe:
    """One way to build a variant graph from the plain export directory."""

    label: str
    build: dict[str, Any]
    make: Callable[[Path, Path], Path]  # (export dir, work dir) -> graph path
    # Whether the graph is expected to score a pair the same whatever shares its batch
    # (dynamic quantization is not); the export measures it either way.
    batch_invariant: bool = True


def _optimize(level: int, *, gpu: bool = False, fp16: bool = False) -> Callable[[Path, Path], Path]:
    def make(export_dir: Path, work_dir: Path) -> Path:
        from optimum.onnxruntime import ORTOptimizer
        from optimum.onnxruntime.configuration import OptimizationConfig

        config = OptimizationConfig(optimization_level=level, optimize_for_gpu=gpu, fp16=fp16)
        with quiet():
            ORTOptimizer.from_pretrained(export_dir).optimize(config, work_dir, file_suffix=None)
        return work_dir / "model.onnx"

    return make


def _plain(export_dir: Path, work_dir: Path) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(export_dir / "model.onnx", work_dir / "model.onnx")
    return work_dir / "model.onnx"


def _fp16_convert(export_dir: Path, work_dir: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    work_dir.mkdir(parents=True, exist_ok=True)
    model = convert_float_to_float16(onnx.load(str(export_dir / "model.onnx")), keep_io_types=True)
    onnx.save(model, str(work_dir / "model.onnx"))
    return work_dir / "model.onnx"


def _int8_build(operators: Any, kept_fp32: str) -> dict[str, Any]:
    return {
        "tool": "optimum ORTQuantizer",
        "mode": "dynamic",
        "per_channel": True,
        "config": "avx512_vnni",
        "operators": operators,
        "kept_fp32": kept_fp32,
    }


def _int8_static_build(kept_fp32: str) -> dict[str, Any]:
    return {
        "tool": "optimum ORTQuantizer.fit (calibration) + onnxruntime QDQQuantizer",
        "mode": "static",
        "format": "QDQ",
        "calibration_method": "minmax",
        "smoothquant_alpha": SMOOTH_ALPHA,
        "per_channel": True,
        "config": "avx512_vnni",
        "activations": "uint8, one calibrated scale per tensor",
        "weights": "int8 symmetric, per output channel",
        "matmul_outputs": "float32 (MatMulIntegerToFloat)",
        "operators": ["MatMul", "Gather"],
        "kept_fp32": kept_fp32,
    }


RECIPES: dict[str, list[Recipe]] = {
    "fp32": [
        Recipe(
            "optimum-O2", {"tool": "optimum ORTOptimizer", "optimization_level": 2}, _optimize(2)
        ),
        Recipe(
            "optimum-O1", {"tool": "optimum ORTOptimizer", "optimization_level": 1}, _optimize(1)
        ),
        Recipe("plain", {"tool": "optimum main_export", "optimization_level": 0}, _plain),
    ],
    "fp16": [
        Recipe(
            "optimum-O2-gpu-fp16",
            {
                "tool": "optimum ORTOptimizer",
                "optimization_level": 2,
                "optimize_for_gpu": True,
                "fp16": True,
                "keep_io_types": True,
            },
            _optimize(2, gpu=True, fp16=True),
        ),
        Recipe(
            "ort-float16",
            {"tool": "onnxruntime.transformers convert_float_to_float16", "keep_io_types": True},
            _fp16_convert,
        ),
    ],
    # Batch-invariant (static) recipes first, fastest first; the dynamic ones are the last
    # resort. Every recipe but "dynamic-per-channel" keeps the pooler/classifier (Gemm) in
    # FP32, and every static one the activation x activation MatMuls.
    "int8": [
        Recipe(
            "static-smoothquant-weights",
            _int8_static_build("activation x activation MatMuls, pooler, classifier"),
            static_quantization(
                operators=["MatMul", "Gather"],
                exclude=[activation_matmuls],
                smooth_alpha=SMOOTH_ALPHA,
            ),
        ),
        Recipe(
            "static-smoothquant-weights-fp32-ffn-input",
            _int8_static_build(
                "activation x activation MatMuls, feed-forward input projections, pooler, "
                "classifier"
            ),
            static_quantization(
                operators=["MatMul", "Gather"],
                exclude=[activation_matmuls, ffn_input_projections],
                smooth_alpha=SMOOTH_ALPHA,
            ),
        ),
        Recipe(
            "static-smoothquant-attention-projections",
            _int8_static_build(
                "activation x activation MatMuls, feed-forward MatMuls, pooler, classifier"
            ),
            static_quantization(
                operators=["MatMul", "Gather"],
                exclude=[activation_matmuls, feed_forward],
                smooth_alpha=SMOOTH_ALPHA,
            ),
        ),
        Recipe(
            "dynamic-per-channel",
            _int8_build("all quantizable (optimum default)", "none"),
            dynamic_quantization(),
            batch_invariant=False,
        ),
        Recipe(
            "dynamic-per-channel-weights",
            _int8_build(
                ["MatMul", "Gather"],
                "activation x activation MatMuls, pooler, classifier",
            ),
            dynamic_quantization(operators=["MatMul", "Gather"], exclude=[activation_matmuls]),
            batch_invariant=False,
        ),
        Recipe(
            "dynamic-per-channel-weights-fp32-last-layer",
            _int8_build(
                ["MatMul", "Gather"],
                "activation x activation MatMuls, last encoder layer, pooler, classifier",
            ),
            dynamic_quantization(
                operators=["MatMul", "Gather"], exclude=[activation_matmuls, last_layer]
            ),
            batch_invariant=False,
        ),
        Recipe(
            "dynamic-per-channel-attention-projections",
            _int8_build(
                ["MatMul", "Gather"],
                "activation x activation MatMuls, feed-forward MatMuls, pooler, classifier",
            ),
            dynamic_quantization(
                operators=["MatMul", "Gather"], exclude=[activation_matmuls, feed_forward]
            ),
            batch_invariant=False,
        ),
    ],
}
