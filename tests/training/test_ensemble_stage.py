"""The ensemble stage on the tiny pipeline: a report on validation and test, weights fit on
validation only, and the ensemble's augmentation labels when the rule makes it the teacher."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.artifacts import (
    PipelineError,
    augmentation_label_source,
    curve_sizes,
    ensemble_labels_path,
    ensemble_record_path,
    labeled_augmentation,
    load_dataset,
    read_run,
    split_labels_path,
    student_fingerprint,
    teacher_labeled_augmentation,
)
from training.ensemble import Ensemble
from training.ensemble_stage import decide, stage_ensemble
from training.evaluation.systems import ENSEMBLE_ROW
from training.label import seal, unseal
from training.stages import stage_distill, stage_label

SYSTEMS = ["llm", "human-only", "bm25", "ensemble", "ensemble without the LLM"]


def _with(config, use: str):
    """Whole validation and test splits labeled by the tiny teacher; ``ensemble.use``."""
    label = config.label.model_copy(update={"eval_queries": 0, "splits": ("validation", "test")})
    config = config.model_copy(
        update={"label": label, "ensemble": config.ensemble.model_copy(update={"use": use})}
    )
    stage_label(config)
    return config


def _rewrite_scores(path, change) -> None:
    """Change the LLM's cached scores in place (the label file as labeling leaves it: sealed)."""
    unseal(path)
    labels = pd.read_csv(path, dtype={"query_key": str, "product_id": str})
    labels["teacher_score"] = change(labels["teacher_score"].to_numpy())
    labels.to_csv(path, index=False)
    seal(path)


def test_the_report_shows_each_member_and_the_ensemble_with_and_without_the_llm(
    pipeline_copy,
) -> None:
    config = _with(pipeline_copy, "auto")
    record = stage_ensemble(config)
    assert [row["system"] for row in record["table"]] == SYSTEMS
    for row in record["table"]:
        assert 0.0 <= row["validation"] <= 1.0 and 0.0 <= row["test"] <= 1.0
    decision = record["decision"]
    llm, human = decision["llm_validation"], decision["human_only_validation"]
    assert decision["teacher"] == ("llm" if llm >= human + 0.01 else "ensemble")
    rows = {row["system"]: row for row in record["table"]}
    gain = rows["ensemble"]["test"] - rows["ensemble without the LLM"]["test"]
    assert decision["llm_gain"]["test"] == pytest.approx(gain)
    assert ("The LLM adds" if decision["llm_adds"] else "The LLM does not add") in record["verdict"]
    assert ensemble_record_path(config, load_dataset(config)).is_file()
    assert stage_ensemble(config) == record  # current: skipped


def test_the_weights_are_fit_on_validation_only(pipeline_copy) -> None:
    config = _with(pipeline_copy, "llm")
    dataset = load_dataset(config)
    fitted = stage_ensemble(config)
    # Test labels turned upside down: the test column moves, the fitted ensemble does not.
    _rewrite_scores(split_labels_path(config, dataset, "test"), lambda s: 1.0 - s)
    refit = stage_ensemble(config, force=True)
    assert refit["ensemble"] == fitted["ensemble"] and refit["without_llm"] == fitted["without_llm"]
    test_llm = [r["test"] for r in (fitted["table"][0], refit["table"][0])]
    assert test_llm[0] != test_llm[1]
    # The same change on validation does move it (the check above can fail).
    _rewrite_scores(split_labels_path(config, dataset, "validation"), lambda s: 1.0 - s)
    assert stage_ensemble(config, force=True)["ensemble"] != fitted["ensemble"]


def test_the_ensemble_labels_the_augmentation_when_it_is_the_teacher(pipeline_copy) -> None:
    dataset = load_dataset(pipeline_copy)
    llm_config = _with(pipeline_copy, "llm")
    with pytest.raises(PipelineError, match="python -m training ensemble"):
        augmentation_label_source(
            llm_config.model_copy(
                update={"ensemble": llm_config.ensemble.model_copy(update={"use": "auto"})}
            ),
            dataset,
        )
    llm_labeled = labeled_augmentation(llm_config, dataset)
    config = _with(pipeline_copy, "ensemble")
    record = stage_ensemble(config)
    assert record["decision"]["teacher"] == "ensemble"
    path = ensemble_labels_path(config, dataset)
    labels = pd.read_csv(path, dtype={"query_key": str, "product_id": str})
    assert len(labels) == record["augmentation_pairs"] == len(llm_labeled)
    # The LLM's part is its cached label; the label is the fitted ensemble of the members.
    np.testing.assert_allclose(labels["member:llm"], llm_labeled["teacher_score"], atol=1e-6)
    members = {m: labels[f"member:{m}"].to_numpy() for m in record["members"]}
    expected = Ensemble.from_dict(record["ensemble"]).score(members)
    np.testing.assert_allclose(labels["teacher_score"], expected, atol=2e-6)
    assert labels["teacher_score"].between(0, 1).all()
    # Students learn from these labels, and their identity says so.
    source = augmentation_label_source(config, dataset)
    assert (source.kind, source.path) == ("ensemble", path)
    (size,) = curve_sizes(config, dataset)
    pairs = teacher_labeled_augmentation(config, dataset, size)
    np.testing.assert_allclose(pairs["teacher_score"], labels["teacher_score"][:size], atol=1e-9)
    assert student_fingerprint(config, dataset, size) != student_fingerprint(
        llm_config, dataset, size
    )
    assert student_fingerprint(config, dataset, 0) == student_fingerprint(llm_config, dataset, 0)
    (run_dir,) = stage_distill(config, sizes=[size])
    record = read_run(run_dir)
    assert (record["teacher_id"], record["labels_from"]) == (source.id, "ensemble")
    assert record["fingerprint"] == student_fingerprint(config, dataset, size)


def test_the_ensemble_row_of_the_evaluation_scores_test_like_the_stage(pipeline_copy) -> None:
    from training.evaluation.stage import stage_evaluate

    config = _with(pipeline_copy, "llm")
    record = stage_ensemble(config)
    results = stage_evaluate(config, command="python -m training evaluate")
    (row,) = [s for s in results["systems"] if s["kind"] == "ensemble"]
    assert row["name"] == ENSEMBLE_ROW
    ensemble_test = {r["system"]: r for r in record["table"]}["ensemble"]["test"]
    assert row["metrics"]["pairwise_accuracy"] == pytest.approx(ensemble_test)
    assert results["ensemble"]["id"] == record["id"]
    report = (config.path("docs_dir") / "evaluation.md").read_text()
    assert "## Teacher ensemble" in report and record["verdict"] in report


def test_the_rule_makes_the_ensemble_the_teacher_when_the_llm_misses_the_margin() -> None:
    def table(llm: float, human: float) -> list[dict]:
        values = {"llm": llm, "human-only": human, "bm25": 0.55, "ensemble": 0.62}
        values["ensemble without the LLM"] = 0.60
        return [{"system": k, "validation": v, "test": v} for k, v in values.items()]

    assert decide(table(0.600, 0.595), "auto", 0.01)["teacher"] == "ensemble"
    assert decide(table(0.606, 0.595), "auto", 0.01)["teacher"] == "llm"
    assert decide(table(0.700, 0.595), "ensemble", 0.01)["teacher"] == "ensemble"
    assert decide(table(0.500, 0.595), "llm", 0.01)["teacher"] == "llm"
    assert decide(table(0.6, 0.595), "auto", 0.01)["llm_adds"] is True
