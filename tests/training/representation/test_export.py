"""The two-graph export: FP32 reproduces PyTorch, the gates reject a broken variant, manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from relevance_core.hashing import sha256_file
from tests.training.conftest import PRODUCT_TYPES
from training.config import RepresentationConfig, StudentConfig
from training.onnx_export import ExportError
from training.onnx_export.recipes import RECIPES, Recipe
from training.onnx_export.representation import (
    export_representation_package,
    package_scorer,
    summarize,
    torch_reference_scores,
)
from training.onnx_export.representation_manifest import (
    read_representation_manifest,
    verify_representation_package,
)
from training.representation import HEAD_FILE
from training.representation.model import build_representation, read_head, save_representation
from training.representation.scoring import PairScorer, torch_encoder

CATALOGUE = ["Simpson Strong-Tie 12-Gauge Angle", "Everbilt 3/4 in. Brass FIP Gate Valve"]


def _validation_pairs() -> list[tuple[str, str, str, float]]:
    """Six queries x four items with distinct grades: the ranking gates run on them."""
    pairs = []
    for k, kind in enumerate(PRODUCT_TYPES[:6]):
        other = PRODUCT_TYPES[(k + 7) % len(PRODUCT_TYPES)]
        titles = [f"Acme {kind} in Chrome", f"{kind} kit", f"{other} with trim", "Deck stain"]
        grades = (3.0, 2.33, 1.67, 1.0)
        pairs += [(f"q{k}", kind, t, g) for t, g in zip(titles, grades, strict=True)]
    return pairs


@pytest.fixture(scope="module", params=[("bi-encoder", None), ("late-interaction", 8)])
def run_dir(request, tiny_student_dir: Path, tmp_path_factory) -> Path:
    architecture, dim = request.param
    model, query_tok, item_tok = build_representation(
        StudentConfig(backbone=str(tiny_student_dir), seed=2),
        RepresentationConfig(architecture=architecture, dim=dim),
    )
    model.eval()
    # A random encoder's similarities bunch together: a head that spreads them over the
    # sigmoid's slope, so that scores (and the gates on them) are not all 1.0.
    pairs = _validation_pairs()
    sims = PairScorer(model.head_spec(), torch_encoder(model), query_tok, item_tok).score(
        [p[1] for p in pairs], [p[2] for p in pairs]
    )
    sims = np.log(sims / (1 - sims))  # back to logits = scale * sim + bias
    sims = (sims - model.bias.item()) / model.scale.item()
    with torch.no_grad():
        model.scale.fill_(2.0 / max(float(np.std(sims)), 1e-6))
        model.bias.fill_(-model.scale.item() * float(np.median(sims)))
    out = tmp_path_factory.mktemp(f"run-{architecture}") / "run"
    return save_representation(model, str(tiny_student_dir), out)


@pytest.fixture(scope="module")
def package(run_dir: Path, tmp_path_factory) -> Path:
    return export_representation_package(
        run_dir,
        tmp_path_factory.mktemp("models") / "tiny-representation",
        name="tiny-representation",
        version="0.0.test",
        backbone="tiny-random-bert",
        variants=("fp32", "int8"),
        catalogue_texts=CATALOGUE,
    )


def test_fp32_graphs_reproduce_the_pytorch_scores(run_dir: Path, package: Path) -> None:
    pairs = [(q, t) for _, q, t, _ in _validation_pairs()]
    spec, _ = read_head(run_dir)
    expected = torch_reference_scores(run_dir, pairs, spec, run_dir / "tokenizer.json")
    scorer = package_scorer(package, "fp32", storage=None)
    got = scorer.score([p[0] for p in pairs], [p[1] for p in pairs])
    assert np.abs(got - expected).max() <= 1e-4
    assert np.ptp(expected) > 1e-3  # the scores differ, so the check means something
    parity = read_representation_manifest(package).variants["fp32"].parity
    assert parity["reference"] == "pytorch" and parity["max_abs_score_diff"] <= 1e-4
    # Cached item vectors (what a server keeps) give the scores of encoding both sides.
    stored = scorer.encode_items([p[1] for p in pairs])
    queries = scorer.encode_queries([p[0] for p in pairs])
    cached = scorer.score_encoded([p[0] for p in pairs], [p[1] for p in pairs], queries, stored)
    assert cached == pytest.approx(got, abs=1e-12)


def test_manifest_describes_the_two_graphs_and_the_stored_vectors(
    run_dir: Path, package: Path
) -> None:
    manifest = verify_representation_package(package)
    spec, _ = read_head(run_dir)
    assert manifest.kind == "representation"
    assert manifest.architecture == spec.architecture
    assert manifest.output == "last_hidden_state"
    assert manifest.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert set(manifest.variants) == {"fp32", "int8"}
    for variant in manifest.variants.values():
        assert {variant.query.file, variant.item.file} <= set(manifest.files)
        assert (package / variant.query.file).is_file() and (package / variant.item.file).is_file()
        assert variant.batch_invariant
    vectors = manifest.item_vectors
    assert (vectors.dim, vectors.dtype) == (spec.dim, "float16")
    assert vectors.bytes_per_vector == spec.dim * 2
    assert vectors.catalogue_bytes == pytest.approx(vectors.bytes_per_item * 50_000, abs=1)
    if spec.architecture == "late-interaction":
        assert vectors.per_item == "one vector per token"
        assert vectors.mean_vectors_per_item > 1
        assert manifest.head.pooling == "none" and manifest.head.projection == "projection.npy"
    else:
        assert vectors.per_item == "one vector" and vectors.bytes_per_item == spec.dim * 2
        assert manifest.head.pooling == "mean" and manifest.head.projection is None
    assert (manifest.head.scale, manifest.head.bias) == (spec.scale, spec.bias)
    assert manifest.query.max_length == spec.query_max_length
    assert json.loads((package / HEAD_FILE).read_text())["architecture"] == spec.architecture
    assert manifest.files[HEAD_FILE] == sha256_file(package / HEAD_FILE)
    assert spec.architecture in summarize(package)


def test_a_corrupt_file_fails_verification(package: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(package, tmp_path / "copy")
    (copy / HEAD_FILE).write_text("{}")
    with pytest.raises(ExportError, match="checksum"):
        verify_representation_package(copy)


def _broken(export_dir: Path, work_dir: Path) -> Path:
    """An FP32 graph with every weight matrix shuffled: it runs, and ranks at random."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(export_dir / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.ndim == 2 and array.dtype == np.float32:
            shuffled = rng.permutation(array.ravel()).reshape(array.shape)
            init.CopyFrom(numpy_helper.from_array(shuffled, init.name))
    work_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(work_dir / "model.onnx"))
    return work_dir / "model.onnx"


def test_the_ranking_gate_rejects_a_broken_variant(run_dir: Path, tmp_path: Path) -> None:
    recipes = {**RECIPES, "fp16": [Recipe("broken", {"tool": "test"}, _broken)]}
    out = export_representation_package(
        run_dir,
        tmp_path / "pkg",
        name="tiny",
        version="0",
        backbone="tiny",
        variants=("fp32", "fp16"),
        validation_pairs=_validation_pairs(),
        recipes=recipes,
    )
    manifest = read_representation_manifest(out)
    assert set(manifest.variants) == {"fp32"}
    (attempt,) = manifest.provenance["export"]["rejected"]["fp16"]
    assert attempt["recipe"] == "broken"
    assert "Kendall tau" in attempt["reason"] or "pairwise accuracy" in attempt["reason"]
    assert not (out / "query.fp16.onnx").exists()
    # The stored float16 vectors were gated against float32 on the same pairs.
    assert manifest.item_vectors.parity["mean_kendall_tau_vs_fp32"] >= 0.9


def test_a_broken_fp32_graph_aborts_the_export(run_dir: Path, tmp_path: Path) -> None:
    recipes = {**RECIPES, "fp32": [Recipe("broken", {"tool": "test"}, _broken)]}
    with pytest.raises(ExportError, match="FP32"):
        export_representation_package(
            run_dir, tmp_path / "pkg", name="t", version="0", backbone="t",
            variants=("fp32",), recipes=recipes,
        )  # fmt: skip
    assert not (tmp_path / "pkg").exists()
