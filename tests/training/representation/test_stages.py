"""A representation run in the pipeline: evaluated (cached and uncached), exported by name only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.artifacts import load_dataset, read_run, students_dir
from training.evaluation.report import student_row_name
from training.evaluation.systems import score_representation_run
from training.onnx_export.representation_manifest import read_representation_manifest
from training.onnx_export.stage import choose_student, stage_export
from training.representation.model import load_representation
from training.representation.train import scorer
from training.stages import stage_represent


@pytest.fixture
def with_representation(pipeline_copy):
    """The tiny pipeline's outputs plus a bi-encoder run on human labels only."""
    config = pipeline_copy.model_copy(
        update={
            "representation": pipeline_copy.representation.model_copy(update={"labels": None}),
            "export": pipeline_copy.export.model_copy(update={"variants": ("fp32",)}),
        }
    )
    return config, stage_represent(config)


def test_evaluation_scores_a_representation_run_both_ways(with_representation) -> None:
    config, run_dir = with_representation
    record = read_run(run_dir)
    assert record["name"] == "bi-encoder-human-only" and record["augment_pairs"] == 0
    frame = load_dataset(config).splits["test"]
    row = score_representation_run(config, record, frame, frame.head(8))
    assert row.name == student_row_name("bi-encoder-human-only")
    assert row.kind == "representation"
    assert row.latency_ms_per_pair > 0 and row.latency_cached_ms_per_pair > 0
    model, query_tok, item_tok = load_representation(run_dir)
    expected = scorer(model, query_tok, item_tok, 8).score(
        frame["query"].tolist(), frame["title"].tolist()
    )
    assert row.scores == pytest.approx(expected, abs=1e-9)
    assert np.all((row.scores >= 0) & (row.scores <= 1))


def test_auto_export_keeps_the_cross_encoder_a_named_export_writes_two_graphs(
    with_representation,
) -> None:
    config, run_dir = with_representation
    # Even the best run on validation is not the default package when it is not a
    # cross-encoder: the service loads that package.
    record = read_run(run_dir)
    record["validation_pairwise_accuracy"] = 1.0
    (run_dir / "run.json").write_text(json.dumps(record))
    assert choose_student(config) != run_dir.name
    default_manifest = (config.default_package_dir / "manifest.json").read_text()

    package = stage_export(config, student=run_dir.name)
    assert package == config.path("models_dir") / config.export.representation_package
    manifest = read_representation_manifest(package)
    assert manifest.architecture == "bi-encoder"
    assert manifest.provenance["student"]["run"] == run_dir.name
    assert manifest.provenance["student"]["fingerprint"] == record["fingerprint"]
    assert (package / manifest.variants["fp32"].query.file).is_file()
    assert (config.default_package_dir / "manifest.json").read_text() == default_manifest
    assert students_dir(config) / run_dir.name == run_dir


def test_the_cascade_stage_ranks_with_the_package_and_rescored_heads(with_representation) -> None:
    from training.evaluation.cascade import SECTION, stage_cascade, stored_result, table

    config, run_dir = with_representation
    package = stage_export(config, student=run_dir.name)
    products = len(load_dataset(config).products)
    config = config.model_copy(
        update={
            "evaluate": config.evaluate.model_copy(
                update={"cascade_candidates": 6, "cascade_pool": products, "cascade_top_k": (2,)}
            )
        }
    )
    report = config.path("docs_dir") / "evaluation.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("# Evaluation\n\n## All test queries\n\nrows\n\n## Findings\n\n- one\n")
    result = stage_cascade(config, command="test")
    names = [row["system"] for row in result["systems"]]
    assert names == ["representation alone", "cascade top 2", "cross-encoder alone (judged items)"]
    assert result["representation_package"]["name"] == read_representation_manifest(package).name
    assert 0 <= result["systems"][1]["pairwise_accuracy"] <= 1
    stored = config.path("cascade_results") / (
        f"{result['representation_package']['name']}-"
        f"{result['representation_package']['version']}-test.json"
    )
    assert json.loads(stored.read_text())["systems"] == result["systems"]
    # Under the tiny pipeline's root, never the repository's committed results.
    assert stored.is_relative_to(config.path("runs_dir").parent)
    assert "cascade top 2" in table(result)
    # The report gains the section once, before the findings, and a re-run replaces it.
    stage_cascade(config, command="test")
    text = report.read_text()
    assert text.count(SECTION) == 1
    assert text.index("## All test") < text.index(SECTION) < text.index("## Findings")
    assert text.endswith("- one\n")
    # The evaluate stage's report finds the stored result of the package again.
    assert stored_result(config)["systems"] == result["systems"]


def test_a_representation_package_is_calibrated_like_a_cross_encoder(with_representation) -> None:
    from relevance_core.activation import sigmoid
    from training.artifacts import validation_negatives
    from training.evaluation.metrics import pairwise_accuracy
    from training.evaluation.negatives import irrelevant_share
    from training.onnx_export.representation import package_scorer

    config, run_dir = with_representation
    config = config.model_copy(
        update={"export": config.export.model_copy(update={"calibration": "always"})}
    )
    package = stage_export(config, student=run_dir.name)
    manifest = read_representation_manifest(package)
    assert manifest.calibration is not None and manifest.calibration.scale > 0
    fit = manifest.calibration.fit
    assert fit["calibrated"] is True
    dataset = load_dataset(config)
    negatives = validation_negatives(config, dataset)
    validation = dataset.splits["validation"]
    scorer = package_scorer(package, "fp32")
    logits = scorer.logits(negatives["query"].tolist(), negatives["title"].tolist())
    scored = scorer.score(negatives["query"].tolist(), negatives["title"].tolist())
    # The package's scorer maps the head's logit as the manifest says.
    cal = manifest.calibration
    np.testing.assert_allclose(scored, sigmoid(cal.scale * logits + cal.bias, np.float64))
    assert fit["validation_negatives_irrelevant_before"] == irrelevant_share(sigmoid(logits))
    assert fit["validation_negatives_irrelevant_after"] == pytest.approx(irrelevant_share(scored))
    assert irrelevant_share(scored) > irrelevant_share(sigmoid(logits))
    # Strictly increasing: the ranking of the human pairs is what it was.
    queries, titles = validation["query"].tolist(), validation["title"].tolist()
    keys, grades = validation["query_key"], validation["grade"]
    assert pairwise_accuracy(keys, grades, scorer.score(queries, titles)) == pairwise_accuracy(
        keys, grades, sigmoid(scorer.logits(queries, titles))
    )


def test_a_stored_representation_result_is_current_once_its_weights_are_gone(
    with_representation,
) -> None:
    """On a fresh machine the run's weights are gone; its committed result must still be
    recognised as the run the config trains (it was reported stale and dropped)."""
    from training.evaluation.student_results import current_fingerprints

    config, run_dir = with_representation
    record = read_run(run_dir)
    expected = current_fingerprints(config, load_dataset(config), {})
    assert expected[record["name"]] == record["fingerprint"]


def test_also_trains_a_second_architecture_under_the_identity_it_has_alone(
    with_representation,
) -> None:
    """``representation.also`` trains late interaction beside the bi-encoder: the same
    run (name, fingerprint) as training it alone with ``--set architecture=...``, the
    bi-encoder's identity untouched, both reported, and each exported to its own package."""
    from training.config import RepresentationVariant
    from training.evaluation.student_results import current_fingerprints

    config, main_dir = with_representation
    main = read_run(main_dir)
    late = RepresentationVariant(architecture="late-interaction", dim=8)
    both = config.model_copy(
        update={"representation": config.representation.model_copy(update={"also": (late,)})}
    )
    assert stage_represent(both) == main_dir
    assert read_run(main_dir) == main  # not retrained: `also` is not part of its identity
    late_dir = students_dir(config) / "late-interaction-human-only"
    record = read_run(late_dir)
    assert record["architecture"] == "late-interaction" and record["head"]["dim"] == 8
    alone = config.model_copy(
        update={
            "representation": config.representation.model_copy(
                update={"architecture": "late-interaction", "dim": 8}
            )
        }
    )
    assert stage_represent(alone) == late_dir and read_run(late_dir) == record
    expected = current_fingerprints(both, load_dataset(both), {})
    assert expected[main["name"]] == main["fingerprint"]
    assert expected[record["name"]] == record["fingerprint"]

    bi_package = stage_export(both, student=main_dir.name)
    bi_manifest = (bi_package / "manifest.json").read_text()
    package = stage_export(both, student=late_dir.name)
    assert package.name == f"{both.export.representation_package}-late-interaction"
    assert read_representation_manifest(package).architecture == "late-interaction"
    assert (bi_package / "manifest.json").read_text() == bi_manifest
