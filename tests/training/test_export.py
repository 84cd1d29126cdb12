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
    MAX_BATCH_INVARIANCE_DIFF,
    ExportError,
    Recipe,
    batch_invariance,
    check_fp32_parity,
    check_ranking_parity,
    export_package,
    mean_kendall_tau,
    onnx_scores,
    pairwise_accuracy,
    torch_scores,
    write_calibration,
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
    write_calibration(tmp_path / "export", tiny_student_dir / "tokenizer.json", MAX_LENGTH, PAIRS)
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


# Short probes and longer company: the probes are padded when they share a batch.
PROBES = [(q, t) for _, q, t, _ in VALIDATION[:8]]
COMPANY = [(f"{q} {q}", f"{t} {t} {t}") for _, q, t, _ in VALIDATION[4:20]]


def _invariance(graph: Path, tokenizer: Path) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return batch_invariance(session, tokenizer, MAX_LENGTH, PROBES, COMPANY)


def test_int8_variant_is_static_and_batch_invariant(tiny_model_package: Path) -> None:
    tokenizer = tiny_model_package / "tokenizer.json"
    spec = load_package(tiny_model_package).manifest.variants["int8"]
    assert spec.build["mode"] == "static" and spec.build["recipe"].startswith("static-")
    assert spec.build["calibration"] == {
        "pairs": len(export.SMOKE_PAIRS),
        "source": "built-in smoke pairs",
    }
    assert spec.batch_invariant is True
    assert spec.parity["batch_invariance_max_abs_diff"] <= MAX_BATCH_INVARIANCE_DIFF
    graph = tiny_model_package / "model.int8.onnx"
    ops = {n.op_type for n in onnx.load(str(graph)).graph.node}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    # 8 pairs alone vs inside one batch with 16 longer pairs (padded to the longest).
    assert len(PROBES) == 8 and len(COMPANY) == 16
    assert min(len(q) + len(t) for q, t in COMPANY) > max(len(q) + len(t) for q, t in PROBES)
    assert _invariance(graph, tokenizer) <= MAX_BATCH_INVARIANCE_DIFF
    # Quantized for real (the diff is not 0), and sane: a tiny random model calibrated on
    # six pairs is no test of accuracy, the MiniLM figures are in docs/model_package.md.
    fp32 = onnx_scores(tiny_model_package / "model.fp32.onnx", tokenizer, MAX_LENGTH, PROBES)
    int8 = onnx_scores(graph, tokenizer, MAX_LENGTH, PROBES)
    assert 0 < np.max(np.abs(fp32 - int8)) < 0.1
    for name in ("fp32", "fp16"):
        parity = load_package(tiny_model_package).manifest.variants[name].parity  # type: ignore[index]
        assert parity["batch_invariance_max_abs_diff"] <= MAX_BATCH_INVARIANCE_DIFF, name


def test_dynamic_int8_is_detected_as_not_batch_invariant(
    tiny_student_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = tiny_student_dir / "tokenizer.json"
    dynamic, static = export.RECIPES["int8"][-4], export.RECIPES["int8"][0]
    assert dynamic.label == "dynamic-per-channel" and not dynamic.batch_invariant
    export._main_export(tiny_student_dir, tmp_path / "export")
    graph = dynamic.make(tmp_path / "export", tmp_path / "dynamic")
    assert _invariance(graph, tokenizer) > MAX_BATCH_INVARIANCE_DIFF

    # The export measures it: a dynamic graph that passes parity is held back while a
    # batch-invariant recipe is left, and is recorded as not batch-invariant.
    fp32 = export.RECIPES["fp32"][-1:]
    monkeypatch.setattr(export, "RECIPES", {"fp32": fp32, "int8": [dynamic, static]})
    out = export_package(
        tiny_student_dir,
        tmp_path / "a",
        name="a",
        version="1",
        max_length=MAX_LENGTH,
        variants=("fp32", "int8"),
        calibration_pairs=[(q, t) for _, q, t, _ in VALIDATION],
    )
    int8 = load_package(out).manifest.variants["int8"]
    assert int8.build["recipe"] == static.label and int8.batch_invariant
    assert int8.build["calibration"] == {"pairs": len(VALIDATION), "source": "caller"}
    rejected = int8.build["rejected_recipes"]
    assert [r["recipe"] for r in rejected] == [dynamic.label]
    assert rejected[0]["reason"] == "not batch-invariant"
    assert rejected[0]["batch_invariance_max_abs_diff"] > MAX_BATCH_INVARIANCE_DIFF

    # With only dynamic recipes it is the last resort: written, flagged, not the CPU default.
    monkeypatch.setattr(export, "RECIPES", {"fp32": fp32, "int8": [dynamic]})
    out = export_package(
        tiny_student_dir,
        tmp_path / "b",
        name="b",
        version="1",
        max_length=MAX_LENGTH,
        variants=("fp32", "int8"),
    )
    package = load_package(out)
    int8 = package.manifest.variants["int8"]
    assert int8.build["recipe"] == dynamic.label and int8.batch_invariant is False
    assert "rejected_recipes" not in int8.build
    assert not package.is_batch_invariant("int8")
    assert package.select_variant(["CPUExecutionProvider"]) == "fp32"
    assert "int8: model.int8.onnx" in export.summarize(out)
    assert "NOT batch-invariant" in export.summarize(out)


def test_calibration_pairs_roundtrip(tiny_student_dir: Path, tmp_path: Path) -> None:
    tokenizer = tiny_student_dir / "tokenizer.json"
    assert write_calibration(tmp_path, tokenizer, MAX_LENGTH, PAIRS) == len(PAIRS)
    feeds = export.read_calibration(tmp_path)
    assert len(feeds) == len(PAIRS)
    for feed, pair in zip(feeds, PAIRS, strict=True):
        expected = export.encode_pairs(
            export.load_tokenizer(tokenizer, MAX_LENGTH), [pair[0]], [pair[1]]
        )
        for name, array in expected.items():
            np.testing.assert_array_equal(feed[name], array[0])
    assert len(feeds[-1]["input_ids"]) == MAX_LENGTH  # the long pair is truncated, not padded
    with pytest.raises(ExportError, match="calibration"):
        export.read_calibration(tmp_path / "nowhere")
    assert export._spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert export._spread([1, 2], 4) == [1, 2]


def test_smoothing_moves_scales_without_changing_fp32_scores(
    tiny_student_dir: Path, tmp_path: Path
) -> None:
    tokenizer = tiny_student_dir / "tokenizer.json"
    export_dir = tmp_path / "export"
    export._main_export(tiny_student_dir, export_dir)
    write_calibration(export_dir, tokenizer, MAX_LENGTH, PAIRS)
    model = onnx.load(str(export_dir / "model.onnx"))
    skip = export._activation_matmuls(model.graph)
    smoothed = export.smooth_activations(
        model, export.read_calibration(export_dir), skip=skip, alpha=0.75
    )
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
