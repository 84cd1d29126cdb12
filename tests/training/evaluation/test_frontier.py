"""The frontier: the default-package rule, the service's SLO, and a tiny run rebuilt by
ensure-default from its recorded choice."""

from __future__ import annotations

import json
import shutil

import pytest

from service.model_package import load_package
from service.settings import Settings
from training import stages
from training.artifacts import load_dataset, read_run, students_dir
from training.config import FrontierConfig
from training.default_package import ensure_default
from training.evaluation.frontier import Point, build_frontier, choose_default, read_choice


def _student(name: str, validation: float, ms: float) -> Point:
    return Point(f"student: {name}", "student", validation - 0.01, validation, ms, run=name)


def test_the_rule_picks_the_most_accurate_student_that_fits_the_slo() -> None:
    points = [
        Point("BM25", "baseline", 0.55, 0.54, 0.1),
        Point("teacher (LLM)", "teacher", 0.70, 0.70, 0.2),  # not a student: never chosen
        _student("distill-l6", 0.62, 11.0),  # 100 items: 1,100 ms > 1,000
        _student("distill-l3", 0.60, 4.0),
        _student("distill-l2", 0.60, 3.0),  # as accurate, cheaper: the tie goes here
        _student("human-only", 0.58, 9.0),
    ]
    settings = FrontierConfig()
    assert choose_default(points, settings).run == "distill-l2"  # type: ignore[union-attr]
    points[3] = _student("distill-l3", 0.61, 4.0)
    assert choose_default(points, settings).run == "distill-l3"  # type: ignore[union-attr]
    # A faster service: 100 items within 1,100 ms admits the L6.
    roomy = FrontierConfig(slo_latency_ms=1100.0)
    assert choose_default(points, roomy).run == "distill-l6"  # type: ignore[union-attr]
    tight = FrontierConfig(budget_share=0.2)  # 200 ms: nothing fits
    assert choose_default(points, tight) is None


def test_the_frontier_budget_is_the_services_slo() -> None:
    fields, frontier = Settings.model_fields, FrontierConfig()
    assert frontier.slo_latency_ms == fields["slo_latency_ms"].default
    assert frontier.slo_items == fields["slo_items"].default


def test_the_tiny_frontier_and_ensure_default_rebuilds_its_choice(
    pipeline_copy, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = pipeline_copy
    size = next(r for r in base.committee.members if r != "human-only")  # distill-n<N>
    config = base.model_copy(
        update={
            "small": base.small.model_copy(
                update={"cost_variant": "fp32", "cost_threads": 1, "cost_pairs": 16}
            ),
            "frontier": base.frontier.model_copy(
                update={"runs": ("human-only", size), "teacher_pairs": 4}
            ),
        }
    )
    dataset = load_dataset(config)
    frontier = build_frontier(config, dataset)
    points = {p["name"]: p for p in frontier["points"]}
    assert set(points) == {"BM25", "student: human-only", f"student: {size}", "teacher (LLM)"}
    for name in ("student: human-only", f"student: {size}", "BM25"):
        p = points[name]
        assert p["ms_per_pair"] > 0 and 0 <= p["test_pairwise_accuracy"] <= 1
        assert p["validation_pairwise_accuracy"] is not None
    assert points["teacher (LLM)"]["ms_per_pair"] > 0  # timed on its package
    students = [Point(**p) for p in frontier["points"]]
    assert frontier["choice"] == choose_default(students, config.frontier).run  # type: ignore[union-attr]
    choice = read_choice(config)
    assert choice is not None and choice["run"] == frontier["choice"]
    assert choice["chain"][-1]["fingerprint"] == choice["fingerprint"]
    assert json.loads(config.default_choice_path.read_text())["rule"] == frontier["rule"]

    # A fresh machine: no runs, no package; ensure-default retrains the choice, no teacher.
    def no_teacher(*_: object, **__: object) -> None:
        raise AssertionError("ensure-default must not run the teacher")

    monkeypatch.setattr(stages, "LazyTeacher", no_teacher)
    monkeypatch.setattr(stages, "stage_teacher", no_teacher)
    shutil.rmtree(students_dir(config))
    # The students' points come back from their stored results (nothing to export or
    # time without weights), and so does the choice with its chain.
    stored = build_frontier(config, dataset)
    again = {p["name"]: p for p in stored["points"]}
    for name in ("student: human-only", f"student: {size}"):
        for key in ("test_pairwise_accuracy", "validation_pairwise_accuracy", "ms_per_pair"):
            assert again[name][key] == points[name][key]
        assert "read from the stored result" in again[name]["notes"]
    assert stored["choice"] == frontier["choice"] and read_choice(config) == choice
    shutil.rmtree(config.default_package_dir)
    assert ensure_default(config) == config.default_package_dir
    source = load_package(config.default_package_dir).manifest.provenance["student"]
    assert source["fingerprint"] == choice["fingerprint"]
    assert read_run(students_dir(config) / source["run"])["fingerprint"] == choice["fingerprint"]
