"""ONNX export and its parity gates (training/export.py)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from service.model_package import load_package
from training import export
from training.export import (
    ExportError,
    Recipe,
    check_fp32_parity,
    check_ranking_parity,
    export_package,
    mean_kendall_tau,
    onnx_scores,
    pairwise_accuracy,
    torch_scores,
)

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


def _edit_classifier(src: Path, dst: Path, edit: Callable[[str, np.ndarray], np.ndarray]) -> Path:
    """Copy a graph, changing the classifier initializers (a deliberate corruption)."""
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name.startswith("classifier."):
            array = edit(init.name, numpy_helper.to_array(init))
            init.CopyFrom(numpy_helper.from_array(array.astype(array.dtype), init.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def _shift_bias(name: str, a: np.ndarray) -> np.ndarray:
    return a + 0.05 if name.endswith("bias") else a


def _negate(name: str, a: np.ndarray) -> np.ndarray:
    return -a


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


def test_fp32_scores_match_torch(tiny_student_dir: Path, tiny_model_package: Path) -> None:
    tokenizer = tiny_model_package / "tokenizer.json"
    expected = torch_scores(tiny_student_dir, tokenizer, MAX_LENGTH, PAIRS)
    graph = tiny_model_package / "model.fp32.onnx"
    np.testing.assert_allclose(
        onnx_scores(graph, tokenizer, MAX_LENGTH, PAIRS), expected, atol=1e-4
    )
    # Batch of one and a shorter batch: the axes really are dynamic.
    single = onnx_scores(graph, tokenizer, MAX_LENGTH, PAIRS[:1])
    np.testing.assert_allclose(single, expected[:1], atol=1e-4)
    assert expected.std() > 1e-3  # the scores are not all the same, so the check means something


def test_reduced_variants_run_close_to_fp32(tiny_model_package: Path) -> None:
    tokenizer = tiny_model_package / "tokenizer.json"
    fp32 = onnx_scores(tiny_model_package / "model.fp32.onnx", tokenizer, MAX_LENGTH, PAIRS)
    fp16 = onnx_scores(tiny_model_package / "model.fp16.onnx", tokenizer, MAX_LENGTH, PAIRS)
    int8 = onnx_scores(tiny_model_package / "model.int8.onnx", tokenizer, MAX_LENGTH, PAIRS)
    np.testing.assert_allclose(fp16, fp32, atol=5e-3)
    assert np.all((int8 > 0) & (int8 < 1))


def test_fp32_parity_fails_on_corrupted_graph(
    tiny_student_dir: Path, tiny_model_package: Path, tmp_path: Path
) -> None:
    tokenizer = tiny_model_package / "tokenizer.json"
    reference = torch_scores(tiny_student_dir, tokenizer, MAX_LENGTH, PAIRS)
    good = onnx_scores(tiny_model_package / "model.fp32.onnx", tokenizer, MAX_LENGTH, PAIRS)
    assert check_fp32_parity(reference, good).passed
    bad_graph = _edit_classifier(
        tiny_model_package / "model.fp32.onnx", tmp_path / "bad.onnx", _shift_bias
    )
    result = check_fp32_parity(reference, onnx_scores(bad_graph, tokenizer, MAX_LENGTH, PAIRS))
    assert not result.passed
    assert result.numbers["max_abs_score_diff"] > 1e-3
    assert "vs PyTorch" in result.reason


def test_ranking_parity_fails_on_reversed_graph(tiny_model_package: Path, tmp_path: Path) -> None:
    tokenizer = tiny_model_package / "tokenizer.json"
    text_pairs = [(q, t) for _, q, t, _ in VALIDATION]
    qids = [v[0] for v in VALIDATION]
    grades = [v[3] for v in VALIDATION]
    fp32 = onnx_scores(tiny_model_package / "model.fp32.onnx", tokenizer, MAX_LENGTH, text_pairs)
    assert check_ranking_parity(qids, grades, fp32, fp32).passed
    reversed_graph = _edit_classifier(
        tiny_model_package / "model.fp32.onnx", tmp_path / "rev.onnx", _negate
    )
    scores = onnx_scores(reversed_graph, tokenizer, MAX_LENGTH, text_pairs)
    result = check_ranking_parity(qids, grades, fp32, scores)
    assert not result.passed
    assert result.numbers["mean_kendall_tau_vs_fp32"] == pytest.approx(-1.0)
    assert "Kendall" in result.reason


def _recipe(label: str, edit: Callable[[str, np.ndarray], np.ndarray] | None) -> Recipe:
    def make(export_dir: Path, work_dir: Path) -> Path:
        if edit is None:
            work_dir.mkdir(parents=True)
            return Path(shutil.copy2(export_dir / "model.onnx", work_dir / "model.onnx"))
        return _edit_classifier(export_dir / "model.onnx", work_dir / "model.onnx", edit)

    return Recipe(label, {"tool": "test"}, make)


def test_export_skips_failing_recipes_and_drops_failing_variants(
    tiny_student_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipes = {
        "fp32": export.RECIPES["fp32"][-1:],  # the plain export
        "fp16": [_recipe("reversed", _negate)],
        "int8": [_recipe("reversed", _negate), _recipe("identity", None)],
    }
    monkeypatch.setattr(export, "RECIPES", recipes)
    out_dir = tmp_path / "models" / "pkg"
    out_dir.mkdir(parents=True)
    (out_dir / "model.fp16.onnx").write_bytes(b"stale graph from an older export")

    export_package(
        tiny_student_dir,
        out_dir,
        name="pkg",
        version="1",
        max_length=MAX_LENGTH,
        validation_pairs=VALIDATION,
        extra_manifest={"evaluation": {"ndcg@10": 0.5}, "provenance": {"run": "test"}},
    )

    package = load_package(out_dir)
    manifest = package.manifest
    assert set(manifest.variants) == {"fp32", "int8"}
    assert not (out_dir / "model.fp16.onnx").exists()  # the stale graph went with the old package
    int8 = manifest.variants["int8"]
    assert int8.build["recipe"] == "identity"
    assert int8.build["rejected_recipes"][0]["recipe"] == "reversed"
    assert int8.parity["mean_kendall_tau_vs_fp32"] == pytest.approx(1.0)
    assert int8.parity["pairwise_accuracy"] == int8.parity["pairwise_accuracy_fp32"]
    assert manifest.variants["fp32"].parity["pairs"] == len(VALIDATION)
    rejected = manifest.provenance["export"]["rejected"]
    assert list(rejected) == ["fp16"]
    assert "Kendall" in rejected["fp16"][0]["reason"]
    assert manifest.provenance["run"] == "test"
    assert manifest.evaluation == {"ndcg@10": 0.5}
    # No temporary directories are left next to the package.
    assert [p.name for p in out_dir.parent.iterdir()] == ["pkg"]


def test_export_fails_when_fp32_fails(
    tiny_student_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "RECIPES", {"fp32": [_recipe("shifted", _shift_bias)]})
    with pytest.raises(ExportError, match="no FP32 graph passed parity"):
        export_package(
            tiny_student_dir,
            tmp_path / "pkg",
            name="pkg",
            version="1",
            max_length=MAX_LENGTH,
            variants=("fp32",),
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
        export_package(student, tmp_path / "pkg", name="x", version="1", max_length=MAX_LENGTH)


def test_pairwise_accuracy() -> None:
    qids = ["a", "a", "a", "b", "b"]
    grades = [3.0, 2.0, 1.0, 2.0, 2.0]  # query b has no graded pair
    assert pairwise_accuracy(qids, grades, np.array([0.9, 0.5, 0.1, 0.3, 0.7])) == 1.0
    assert pairwise_accuracy(qids, grades, np.array([0.1, 0.5, 0.9, 0.3, 0.7])) == 0.0
    assert pairwise_accuracy(qids, grades, np.array([0.5, 0.5, 0.1, 0.0, 0.0])) == pytest.approx(
        2.5 / 3
    )
    assert math.isnan(pairwise_accuracy(["a"], [1.0], np.array([0.5])))


def test_mean_kendall_tau() -> None:
    qids = ["a", "a", "a", "b", "b", "c"]
    ref = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.9])
    assert mean_kendall_tau(qids, ref, ref) == pytest.approx(1.0)
    swapped = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    assert mean_kendall_tau(qids, ref, swapped) == pytest.approx(0.0)  # (1 + -1) / 2


def test_run_export_stage(tiny_student_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "query_key": [v[0] for v in VALIDATION],
            "query": [v[1] for v in VALIDATION],
            "title": [v[2] for v in VALIDATION],
            "grade": [v[3] for v in VALIDATION],
        }
    )
    pairs = export.validation_pairs_from_frame(frame)
    assert pairs[0] == VALIDATION[0]
    with pytest.raises(ExportError, match="max_length is unknown"):
        export.run_export(tiny_student_dir, tmp_path / "x", pairs, {}, {})

    out = export.run_export(
        tiny_student_dir,
        tmp_path / "minilm-test",
        pairs,
        {"student": {"pairwise_accuracy": 0.7}},
        {"train_config": {"max_length": MAX_LENGTH}, "teacher": "fake"},
        variants=("fp32",),
    )
    manifest = load_package(out).manifest
    assert manifest.name == "minilm-test"
    assert manifest.max_length == MAX_LENGTH
    assert manifest.backbone == export.DEFAULT_BACKBONE
    assert "+" in manifest.version  # <date>+<weights sha256 prefix>
    assert manifest.evaluation == {"student": {"pairwise_accuracy": 0.7}}
    assert manifest.provenance["teacher"] == "fake"
    summary = export.summarize(out)
    assert "fp32: model.fp32.onnx" in summary and "max|diff| vs torch" in summary


def test_int8_node_selectors(tiny_student_dir: Path, tmp_path: Path) -> None:
    export._main_export(tiny_student_dir, tmp_path / "export")
    graph = onnx.load(str(tmp_path / "export" / "model.onnx")).graph
    assert sorted(export._activation_matmuls(graph)) == [
        f"/bert/encoder/layer.{i}/attention/self/MatMul{s}" for i in (0, 1) for s in ("", "_1")
    ]
    assert export._last_layer(graph) and all("/layer.1/" in n for n in export._last_layer(graph))
    assert sorted(export._feed_forward(graph)) == [
        f"/bert/encoder/layer.{i}/{m}/dense/MatMul"
        for i in (0, 1)
        for m in ("intermediate", "output")
    ]
    # Each restricted recipe builds a graph that runs.
    pairs = [("angle bracket", "Simpson Strong-Tie 12-Gauge Angle")]
    for recipe in export.RECIPES["int8"]:
        graph_path = recipe.make(tmp_path / "export", tmp_path / recipe.label)
        scores = onnx_scores(graph_path, tiny_student_dir / "tokenizer.json", MAX_LENGTH, pairs)
        assert np.isfinite(scores).all(), recipe.label


def test_unknown_manifest_key_is_refused(tiny_student_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="manifest would be invalid"):
        export_package(
            tiny_student_dir,
            tmp_path / "pkg",
            name="pkg",
            version="1",
            max_length=MAX_LENGTH,
            variants=("fp32",),
            extra_manifest={"colour": "blue"},
        )
    assert not (tmp_path / "pkg").exists()
