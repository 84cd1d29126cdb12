"""Package builds: variants and axes, recipe fallbacks, refused inputs, INT8 vs FP32."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from scipy.stats import spearmanr

from service.model_package import load_package
from training.evaluation.metrics import pairwise_accuracy
from training.onnx_export import ExportError
from training.onnx_export.build import SMOKE_PAIRS, _main_export, export_package
from training.onnx_export.manifest import summarize
from training.onnx_export.parity import MAX_BATCH_INVARIANCE_DIFF, mean_kendall_tau
from training.onnx_export.recipes import RECIPES, Recipe
from training.onnx_export.scoring import onnx_scores

from .samples import (
    MAX_LENGTH,
    PAIRS,
    PROBES,
    VALIDATION,
    VALIDATION_TEXT_PAIRS,
    edit_classifier,
    invariance,
    negate,
    shift_bias,
)

PLAIN_FP32 = RECIPES["fp32"][-1:]


def _export(student: Path, out: Path, **options: Any) -> Path:
    """``export_package`` named after ``out``, version 1, the tests' max_length."""
    return export_package(
        student, out, name=out.name, version="1", max_length=MAX_LENGTH, **options
    )


def test_package_has_all_variants_and_dynamic_axes(tiny_model_package: Path) -> None:
    package = load_package(tiny_model_package)
    assert sorted(package.available_variants()) == ["fp16", "fp32", "int8"]
    assert package.manifest.variants["int8"].providers == ["CPUExecutionProvider"]
    assert package.manifest.variants["fp16"].providers == ["CUDAExecutionProvider"]
    assert package.manifest.variants["fp32"].parity["max_abs_score_diff"] <= 1e-4
    for name in ("fp32", "fp16", "int8"):
        graph = onnx.load(str(package.variant_path(name)), load_external_data=False).graph
        for tensor in graph.input:
            dims = [d.dim_param for d in tensor.type.tensor_type.shape.dim]
            assert dims == ["batch_size", "sequence_length"], (name, tensor.name)
            assert tensor.type.tensor_type.elem_type == onnx.TensorProto.INT64
        # keep_io_types: callers feed int64 and read float32 logits for every variant.
        assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        assert (tiny_model_package / name).is_file(), name


def test_reduced_variants_score_close_to_fp32(tiny_model_package: Path) -> None:
    """Built on smoke pairs only (no ranking gate ran): FP16 and INT8 must still track FP32."""
    tokenizer = tiny_model_package / "tokenizer.json"
    pairs = PAIRS + VALIDATION_TEXT_PAIRS

    def scores(variant: str) -> np.ndarray:
        graph = tiny_model_package / f"model.{variant}.onnx"
        return onnx_scores(graph, tokenizer, MAX_LENGTH, pairs)

    fp32, fp16, int8 = scores("fp32"), scores("fp16"), scores("int8")
    np.testing.assert_allclose(fp16, fp32, atol=5e-3)
    # The tiny model's scores spread over ~0.4 (std ~0.1); INT8 noise stays well below.
    assert np.ptp(fp32) > 0.2
    assert np.max(np.abs(int8 - fp32)) < 0.05
    assert spearmanr(int8, fp32).statistic > 0.95


def test_int8_built_with_validation_pairs_keeps_the_fp32_ranking(
    tiny_student_dir: Path, tmp_path: Path
) -> None:
    out = _export(
        tiny_student_dir,
        tmp_path / "validated",
        variants=("fp32", "int8"),
        validation_pairs=VALIDATION,
        calibration_pairs=PAIRS + VALIDATION_TEXT_PAIRS,
    )
    spec = load_package(out).manifest.variants["int8"]
    assert spec.build["mode"] == "static"
    tokenizer = out / "tokenizer.json"
    fp32 = onnx_scores(out / "model.fp32.onnx", tokenizer, MAX_LENGTH, VALIDATION_TEXT_PAIRS)
    int8 = onnx_scores(out / "model.int8.onnx", tokenizer, MAX_LENGTH, VALIDATION_TEXT_PAIRS)
    qids, grades = [v[0] for v in VALIDATION], [v[3] for v in VALIDATION]
    # Measured here, not read from the manifest: the gate's numbers must be real.
    tau = mean_kendall_tau(qids, fp32, int8)
    assert tau >= 0.9
    assert pairwise_accuracy(qids, grades, fp32) - pairwise_accuracy(qids, grades, int8) <= 0.005
    assert 0 < np.max(np.abs(int8 - fp32)) < 0.05  # quantized for real, and close
    assert spec.parity["mean_kendall_tau_vs_fp32"] == pytest.approx(tau)
    assert spec.parity["pairs"] == len(VALIDATION)


def _recipe(label: str, edit: Callable[[str, np.ndarray], np.ndarray] | None) -> Recipe:
    def make(export_dir: Path, work_dir: Path) -> Path:
        if edit is None:
            work_dir.mkdir(parents=True)
            return Path(shutil.copy2(export_dir / "model.onnx", work_dir / "model.onnx"))
        return edit_classifier(export_dir / "model.onnx", work_dir / "model.onnx", edit)

    return Recipe(label, {"tool": "test"}, make)


def _broken(export_dir: Path, work_dir: Path) -> Path:
    raise RuntimeError("no graph today")


def test_export_skips_failing_recipes_and_drops_failing_variants(
    tiny_student_dir: Path, tmp_path: Path
) -> None:
    recipes = {
        "fp32": PLAIN_FP32,
        "fp16": [_recipe("reversed", negate)],
        "int8": [
            Recipe("broken", {"tool": "test"}, _broken),
            _recipe("reversed", negate),
            _recipe("identity", None),
        ],
    }
    out_dir = tmp_path / "models" / "pkg"
    out_dir.mkdir(parents=True)
    (out_dir / "model.fp16.onnx").write_bytes(b"stale graph from an older export")

    _export(
        tiny_student_dir,
        out_dir,
        validation_pairs=VALIDATION,
        extra_manifest={"evaluation": {"ndcg@10": 0.5}, "provenance": {"run": "test"}},
        recipes=recipes,
    )

    package = load_package(out_dir)
    manifest = package.manifest
    assert set(manifest.variants) == {"fp32", "int8"}
    assert not (out_dir / "model.fp16.onnx").exists()  # the stale graph went with the old package
    int8 = manifest.variants["int8"]
    assert int8.build["recipe"] == "identity"
    rejected = int8.build["rejected_recipes"]
    assert [r["recipe"] for r in rejected] == ["broken", "reversed"]
    assert rejected[0]["error"] == "build: no graph today"
    assert int8.parity["mean_kendall_tau_vs_fp32"] == pytest.approx(1.0)
    assert int8.parity["pairwise_accuracy"] == int8.parity["pairwise_accuracy_fp32"]
    assert manifest.variants["fp32"].parity["pairs"] == len(VALIDATION)
    not_written = manifest.provenance["export"]["rejected"]
    assert list(not_written) == ["fp16"]
    assert "Kendall" in not_written["fp16"][0]["reason"]
    assert manifest.provenance["run"] == "test"
    assert manifest.evaluation == {"ndcg@10": 0.5}
    # No temporary directories are left next to the package.
    assert [p.name for p in out_dir.parent.iterdir()] == ["pkg"]


def test_export_fails_when_fp32_fails(tiny_student_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no FP32 graph passed parity"):
        _export(
            tiny_student_dir,
            tmp_path / "pkg",
            variants=("fp32",),
            recipes={"fp32": [_recipe("shifted", shift_bias)]},
        )
    assert not (tmp_path / "pkg").exists()


def test_export_refuses_a_student_with_several_labels(
    tiny_student_dir: Path, tmp_path: Path
) -> None:
    student = tmp_path / "student"
    student.mkdir()
    config = json.loads((tiny_student_dir / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    (student / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="num_labels=1"):
        _export(student, tmp_path / "pkg")
    with pytest.raises(ExportError, match="non-empty subset"):
        export_package(
            tiny_student_dir, tmp_path / "p", name="x", version="1", max_length=8, variants=()
        )


def test_unknown_manifest_key_is_refused(tiny_student_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="manifest would be invalid"):
        _export(
            tiny_student_dir,
            tmp_path / "pkg",
            variants=("fp32",),
            extra_manifest={"colour": "blue"},
        )
    assert not (tmp_path / "pkg").exists()


def test_int8_variant_is_static_and_batch_invariant(tiny_model_package: Path) -> None:
    tokenizer = tiny_model_package / "tokenizer.json"
    manifest = load_package(tiny_model_package).manifest
    spec = manifest.variants["int8"]
    assert spec.build["mode"] == "static" and spec.build["recipe"].startswith("static-")
    assert spec.build["calibration"] == {
        "pairs": len(SMOKE_PAIRS),
        "source": "built-in smoke pairs",
    }
    assert spec.batch_invariant is True
    assert spec.parity["batch_invariance_max_abs_diff"] <= MAX_BATCH_INVARIANCE_DIFF
    graph = tiny_model_package / "model.int8.onnx"
    ops = {n.op_type for n in onnx.load(str(graph)).graph.node}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    assert invariance(graph, tokenizer) <= MAX_BATCH_INVARIANCE_DIFF
    fp32 = onnx_scores(tiny_model_package / "model.fp32.onnx", tokenizer, MAX_LENGTH, PROBES)
    int8 = onnx_scores(graph, tokenizer, MAX_LENGTH, PROBES)
    assert 0 < np.max(np.abs(fp32 - int8)) < 0.1
    for name in ("fp32", "fp16"):
        parity = manifest.variants[name].parity  # type: ignore[index]
        assert parity["batch_invariance_max_abs_diff"] <= MAX_BATCH_INVARIANCE_DIFF, name


def test_dynamic_int8_is_detected_as_not_batch_invariant(
    tiny_student_dir: Path, tmp_path: Path
) -> None:
    tokenizer = tiny_student_dir / "tokenizer.json"
    dynamic, static = RECIPES["int8"][-4], RECIPES["int8"][0]
    assert dynamic.label == "dynamic-per-channel" and not dynamic.batch_invariant
    _main_export(tiny_student_dir, tmp_path / "export")
    graph = dynamic.make(tmp_path / "export", tmp_path / "dynamic")
    assert invariance(graph, tokenizer) > MAX_BATCH_INVARIANCE_DIFF

    # The export measures it: a dynamic graph that passes parity is held back while a
    # batch-invariant recipe is left, and is recorded as not batch-invariant.
    out = _export(
        tiny_student_dir,
        tmp_path / "a",
        variants=("fp32", "int8"),
        calibration_pairs=VALIDATION_TEXT_PAIRS,
        recipes={"fp32": PLAIN_FP32, "int8": [dynamic, static]},
    )
    int8 = load_package(out).manifest.variants["int8"]
    assert int8.build["recipe"] == static.label and int8.batch_invariant
    assert int8.build["calibration"] == {"pairs": len(VALIDATION), "source": "caller"}
    rejected = int8.build["rejected_recipes"]
    assert [r["recipe"] for r in rejected] == [dynamic.label]
    assert rejected[0]["reason"] == "not batch-invariant"
    assert rejected[0]["batch_invariance_max_abs_diff"] > MAX_BATCH_INVARIANCE_DIFF

    # With only dynamic recipes it is the last resort: written, flagged, not the CPU default.
    out = _export(
        tiny_student_dir,
        tmp_path / "b",
        variants=("fp32", "int8"),
        recipes={"fp32": PLAIN_FP32, "int8": [dynamic]},
    )
    package = load_package(out)
    int8 = package.manifest.variants["int8"]
    assert int8.build["recipe"] == dynamic.label and int8.batch_invariant is False
    assert "rejected_recipes" not in int8.build  # its own attempt is not a rejection
    assert not package.is_batch_invariant("int8")
    assert package.select_variant(["CPUExecutionProvider"]) == "fp32"
    assert "int8: model.int8.onnx" in summarize(out)
    assert "NOT batch-invariant" in summarize(out)
