"""Stored student results: evaluate reports a run whose weights are gone from what it
measured before, never from a stale entry, and does not score a stored run again."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from training import student
from training.artifacts import curve_sizes, finished_runs, load_dataset, students_dir
from training.evaluation import student_results
from training.evaluation.stage import stage_evaluate

COMMAND = "python -m training evaluate --config tiny.json"


def _rows(results: dict) -> dict[str, dict]:
    return {s["name"]: s for s in results["systems"]}


def _count_scoring(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every student loaded and every scoring pass (systems.py imports them late)."""
    calls: list[str] = []
    load, predict = student.load_student, student.predict_scores

    def counted_load(*args, **kwargs):
        calls.append("load")
        return load(*args, **kwargs)

    def counted_predict(*args, **kwargs):
        calls.append("predict")
        return predict(*args, **kwargs)

    monkeypatch.setattr(student, "load_student", counted_load)
    monkeypatch.setattr(student, "predict_scores", counted_predict)
    return calls


def _distilled(config) -> str:
    (size,) = curve_sizes(config, load_dataset(config))
    return f"distill-n{size}"


def test_evaluate_stores_every_student_and_reports_a_run_whose_weights_are_gone(
    tiny_pipeline, pipeline_copy
) -> None:
    fresh = _rows(tiny_pipeline.get("evaluate"))  # the first evaluate scored every run
    config = pipeline_copy
    dataset = load_dataset(config)
    frame_rows = len(dataset.splits["test"]) + config.evaluate.negatives_per_query * int(
        dataset.splits["validation"]["query_key"].nunique()
    )
    for record in finished_runs(config):
        path = student_results.entry_path(config, record["name"], record["fingerprint"])
        entry = student_results.read_entry(path)
        assert entry.record == record and path.stat().st_size < 200_000
        assert entry.scores is not None and len(entry.scores) == frame_rows
        assert entry.table is not None and entry.table["latency_ms_per_pair"] > 0

    name = _distilled(config)
    shutil.rmtree(students_dir(config) / name)  # a fresh machine: the weights are gone
    results = stage_evaluate(config, command=COMMAND)
    row = _rows(results)[f"student: {name}"]
    before = fresh[f"student: {name}"]
    assert row["metrics"] == before["metrics"] and row["slices"] == before["slices"]
    assert row["latency_ms_per_pair"] == before["latency_ms_per_pair"]
    assert row["validation_pairwise_accuracy"] == before["validation_pairwise_accuracy"]
    assert "read from the stored result" in row["notes"]
    # The committee teacher averages its members' rows, the stored one included.
    committee = next(s for s in results["systems"] if s["kind"] == "committee")
    assert committee["metrics"] == fresh[committee["name"]]["metrics"]
    # The curve of the results JSON has the run too.
    assert name in {r["run"] for r in results["student_runs"]["runs"]}


def test_a_stored_entry_of_another_fingerprint_is_never_used(
    tiny_pipeline, pipeline_copy, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    fresh = _rows(tiny_pipeline.get("evaluate"))
    config = pipeline_copy
    name = _distilled(config)
    (record,) = [r for r in finished_runs(config) if r["name"] == name]
    current = student_results.entry_path(config, name, record["fingerprint"])
    entry = student_results.read_entry(current)
    # Another training of the run (another fingerprint), with other scores.
    entry.record = {**record, "fingerprint": "0" * 12}
    entry.scores = 1.0 - entry.scores  # type: ignore[operator]
    stale = student_results.write_entry(config, entry)
    current.unlink()

    # Weights here: the run is scored again, not read from the stale entry.
    calls = _count_scoring(monkeypatch)
    caplog.set_level(logging.INFO, logger=student_results.__name__)
    rows = _rows(stage_evaluate(config, command=COMMAND))
    assert rows[f"student: {name}"]["metrics"] == fresh[f"student: {name}"]["metrics"]
    assert calls.count("load") == 1 and current.is_file()
    assert f"stored result {stale.name} is stale" in caplog.text

    # No weights and no entry of the fingerprint the config trains: no row.
    current.unlink()
    shutil.rmtree(students_dir(config) / name)
    caplog.clear()
    rows = _rows(stage_evaluate(config, command=COMMAND))
    assert f"student: {name}" not in rows and "student: human-only" in rows
    assert f"stored result {stale.name} is stale" in caplog.text


def test_a_run_with_weights_and_a_matching_entry_is_not_scored_again(
    tiny_pipeline, pipeline_copy, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = _rows(tiny_pipeline.get("evaluate"))
    config = pipeline_copy
    stored = {
        path: path.read_bytes()
        for path in config.path("student_results").glob(f"*{student_results.SUFFIX}")
    }
    assert len(stored) == len(finished_runs(config))
    calls = _count_scoring(monkeypatch)
    rows = _rows(stage_evaluate(config, command=COMMAND))
    assert calls == []  # no student loaded, none scored
    for record in finished_runs(config):
        row = f"student: {record['name']}"
        assert rows[row]["metrics"] == fresh[row]["metrics"]
    # Nothing was rewritten.
    assert {p: p.read_bytes() for p in stored} == stored


def test_a_part_is_used_only_for_the_set_it_measured(pipeline_copy) -> None:
    config = pipeline_copy
    dataset = load_dataset(config)
    test = dataset.splits["test"]
    sample = test.head(8)
    (record, *_) = finished_runs(config)
    table = student_results.table_set(config, test, sample)
    scores = np.linspace(0.0, 1.0, len(test))
    stored = student_results.store_table(config, record, scores, table, {"latency_ms_per_pair": 1})
    assert stored.dtype == np.float64 and np.array_equal(stored, scores.astype(np.float32))
    entry = student_results.stored_entry(config, record)
    assert student_results.usable(entry, "table", table) is not None
    # Another frame, another timing sample or other scoring settings: another set.
    others = [
        student_results.table_set(config, test.iloc[::-1], sample),
        student_results.table_set(config, test, test.tail(8)),
        student_results.table_set(
            config.model_copy(
                update={"evaluate": config.evaluate.model_copy(update={"batch_size": 3})}
            ),
            test,
            sample,
        ),
    ]
    assert len({table, *others}) == 4
    assert all(student_results.usable(entry, "table", other) is None for other in others)


def test_the_fingerprints_the_config_trains_are_those_of_the_stages_runs(pipeline_copy) -> None:
    from training.artifacts import small_student_fingerprint

    small = pipeline_copy.small.model_copy(update={"layers": ((0,), (0, 1))})
    config = pipeline_copy.model_copy(update={"small": small})
    on_disk = {r["name"]: r for r in finished_runs(config)}
    # Nothing on disk: the curve's fingerprints, and the small runs' from their source's.
    expected = student_results.current_fingerprints(config, load_dataset(config), {})
    source = _distilled(config)  # small.source "auto": the curve's largest size
    for name in ("human-only", source):
        assert expected[name] == on_disk[name]["fingerprint"]  # as the distill stage trained
    for layers, suffix in (((0,), "l0"), ((0, 1), "l0.1")):
        fingerprint = small_student_fingerprint(config, on_disk[source], layers)
        assert expected[f"{source}-{suffix}"] == fingerprint
    # Committee students are not a curve run: their stored results need their weights.
    assert not any(name.startswith("committee-") for name in expected)


def test_a_run_trained_on_live_pairs_this_config_lacks_is_not_reported(
    pipeline_copy, caplog
) -> None:
    """The closed loop's candidate (trained under its own config on ingested mirror pairs)
    sits in runs/students beside the recipe's runs; evaluate must not report it."""
    import json

    config = pipeline_copy
    dataset = load_dataset(config)
    name = _distilled(config)
    candidate = students_dir(config) / f"{name}-mirror-n3"
    shutil.copytree(students_dir(config) / name, candidate)
    record = json.loads((candidate / "run.json").read_text())
    record.update(name=candidate.name, fingerprint="f" * 12, mirror={"pairs": 3, "files": []})
    (candidate / "run.json").write_text(json.dumps(record))
    # A run of another size, not trained on live pairs (`distill --size N`), is still reported.
    other = students_dir(config) / "distill-n3"
    shutil.copytree(students_dir(config) / name, other)
    record.update(name=other.name, fingerprint="e" * 12, mirror=None)
    (other / "run.json").write_text(json.dumps(record))

    caplog.set_level(logging.INFO, logger=student_results.__name__)
    names = {r["name"] for r in student_results.evaluated_runs(config, dataset)}
    assert candidate.name not in names and {name, "human-only", other.name} <= names
    assert f"run {candidate.name} on disk was trained on live pairs" in caplog.text
