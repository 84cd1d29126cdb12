"""INT8 graph makers (static QDQ and dynamic, through optimum) and the node selectors.

A maker is ``(export dir, work dir) -> graph path``; the selectors pick nodes to keep in
FP32 (``nodes_to_exclude``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from training.onnx_export import quiet
from training.onnx_export.calibration import read_calibration
from training.onnx_export.smoothquant import smooth_activations

if TYPE_CHECKING:
    import onnx

NodeFilter = Callable[["onnx.GraphProto"], list[str]]
_LAYER = re.compile(r"/layer\.(\d+)/")


def dynamic_quantization(
    *, operators: list[str] | None = None, exclude: Sequence[NodeFilter] = ()
) -> Callable[[Path, Path], Path]:
    def make(export_dir: Path, work_dir: Path) -> Path:
        import onnx
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        graph = onnx.load(str(export_dir / "model.onnx"), load_external_data=False).graph
        excluded = sorted({name for select in exclude for name in select(graph)})
        # Dynamic (no calibration set), per-channel: per-tensor INT8 reordered the rankings
        # of this model badly when measured, per-channel far less. Target CPUs: AVX-512 VNNI.
        config = AutoQuantizationConfig.avx512_vnni(
            is_static=False,
            per_channel=True,
            operators_to_quantize=operators,
            nodes_to_exclude=excluded or None,
        )
        with quiet():
            quantizer = ORTQuantizer.from_pretrained(export_dir, file_name="model.onnx")
            quantizer.quantize(config, work_dir, file_suffix=None)
        return work_dir / "model.onnx"

    return make


def static_quantization(
    *,
    operators: list[str],
    exclude: Sequence[NodeFilter] = (),
    smooth_alpha: float | None = None,
) -> Callable[[Path, Path], Path]:
    """Static QDQ quantization calibrated (MinMax) on the export's calibration pairs.

    Activations get one calibrated uint8 scale per tensor, a constant of the graph, so a
    pair's score is independent of its batch. Weights are int8, symmetric, per channel.
    MatMul *outputs* stay FP32: ONNX Runtime then fuses DQ -> MatMul into
    ``MatMulIntegerToFloat``; re-quantizing the outputs (QLinearMatMul) cost the ranking
    dearly on MiniLM (docs/model_package.md). With ``smooth_alpha`` the FP32 graph is
    first smoothed (:func:`smooth_activations`) on the same calibration pairs.
    """

    def make(export_dir: Path, work_dir: Path) -> Path:
        import onnx
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig, CalibrationConfig

        feeds = read_calibration(export_dir)
        model = onnx.load(str(export_dir / "model.onnx"))
        excluded = sorted({name for select in exclude for name in select(model.graph)})
        work_dir.mkdir(parents=True, exist_ok=True)
        source = export_dir
        if smooth_alpha is not None:
            smooth_activations(model, feeds, skip=excluded, alpha=smooth_alpha)
            source = work_dir / "smoothed"
            source.mkdir()
            onnx.save(model, str(source / "model.onnx"))
            shutil.copy2(export_dir / "config.json", source / "config.json")
        config = AutoQuantizationConfig.avx512_vnni(
            is_static=True,
            per_channel=True,
            operators_to_quantize=operators,
            nodes_to_exclude=excluded or None,
        )
        calibration = CalibrationConfig(
            dataset_name="export calibration pairs",
            dataset_config_name=None,
            dataset_split="calibration",
            dataset_num_samples=len(feeds),
            method=CalibrationMethod.MinMax,
        )
        augmented = work_dir / "augmented.onnx"
        with quiet():
            quantizer = ORTQuantizer.from_pretrained(source, file_name="model.onnx")
            # Batches of one: the pairs have different lengths, and no padding is wanted.
            ranges = quantizer.fit(
                feeds,
                calibration,
                onnx_augmented_model_name=augmented,
                operators_to_quantize=operators,
            )
        augmented.unlink(missing_ok=True)
        # optimum's quantize() builds this same QDQQuantizer from `config`, but it has no
        # field for OpTypesToExcludeOutputQuantization, so the quantizer is built here.
        quantizer = QDQQuantizer(
            model=model,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_qType=config.weights_dtype,
            activation_qType=config.activations_dtype,
            tensors_range=ranges,
            nodes_to_quantize=[],
            nodes_to_exclude=excluded,
            op_types_to_quantize=operators,
            extra_options={
                "WeightSymmetric": config.weights_symmetric,
                "ActivationSymmetric": config.activations_symmetric,
                "QDQOpTypePerChannelSupportToAxis": config.qdq_op_type_per_channel_support_to_axis,
                # Gather keeps its output Q/DQ: ORT then runs it on the int8 table and
                # dequantizes only the rows it picked.
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
            },
        )
        quantizer.quantize_model()
        quantizer.model.save_model_to_file(str(work_dir / "model.onnx"))
        if source != export_dir:
            shutil.rmtree(source)
        return work_dir / "model.onnx"

    return make


def activation_matmuls(graph: onnx.GraphProto) -> list[str]:
    """MatMuls of two activations (attention scores, attention x values).

    Dynamic quantization would quantize the softmax probabilities to 8 bits; weight
    MatMuls (one input an initializer) are the ones worth quantizing.
    """
    weights = {init.name for init in graph.initializer}
    weights |= {out for n in graph.node if n.op_type == "Constant" for out in n.output}
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and not any(i in weights for i in n.input)
    ]


def last_layer(graph: onnx.GraphProto) -> list[str]:
    """Nodes of the last encoder layer, closest to the score and so most sensitive."""
    layers = {int(m.group(1)) for n in graph.node if (m := _LAYER.search(n.name))}
    if not layers:
        return []
    last = f"/layer.{max(layers)}/"
    return [n.name for n in graph.node if last in n.name]


def feed_forward(graph: onnx.GraphProto) -> list[str]:
    """Feed-forward MatMuls (``intermediate`` and the layer ``output`` projection).

    The FFN output's inputs carry the activation outliers that hurt BERT INT8 most
    (Bondarenko et al., 2021); keeping the FFN in FP32 is the last, slowest resort.
    """
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul"
        and (
            "/intermediate/" in n.name
            or ("/output/dense/" in n.name and "/attention/" not in n.name)
        )
    ]


def ffn_input_projections(graph: onnx.GraphProto) -> list[str]:
    """Feed-forward input projections: their input (the attention LayerNorm output) has
    the widest activation range, which one static scale per tensor resolves worst."""
    return [n for n in feed_forward(graph) if "/intermediate/" in n]
