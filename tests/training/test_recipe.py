"""The recipe's students (curve, seeds, term matching) and their results side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.artifacts import PipelineError, curve_sizes, student_fingerprint
from training.evaluation.report import student_row_name
from training.recipe import curve_runs, select_runs, student_run_results


def test_curve_runs_add_seeds_at_both_ends(tiny_pipeline, tmp_path: Path) -> None:
    dataset = tiny_pipeline.dataset
    config = tiny_pipeline.config.model_copy(
        update={
            "curve": tiny_pipeline.config.curve.model_copy(
                update={
                    "augment_multiples": (0.25, 0.5),
                    "end_seeds": (13, 7),  # 13 is the config's own seed: no extra run
                }
            ),
            "loss": tiny_pipeline.config.loss.model_copy(
                update={"human_teacher_weight": 1.0, "margin_scale": "teacher"}
            ),
        }
    )
    small, large = curve_sizes(config, dataset)
    runs = curve_runs(config, dataset)
    assert [r.name for r in runs] == [
        "human-only",
        f"distill-n{small}",
        f"distill-n{large}",
        "human-only-seed7",
        f"distill-n{large}-seed7",
    ]
    by_name = {r.name: r for r in runs}
    assert [r.config.student.seed for r in runs] == [13, 13, 13, 7, 7]
    seeded = by_name[f"distill-n{large}-seed7"]
    assert seeded.variant_of == f"distill-n{large}" and seeded.augment_pairs == large
    # The seed is the only difference, so the two trainings are comparable.
    base = by_name[f"distill-n{large}"].config
    assert seeded.config.student.model_copy(update={"seed": 13}) == base.student
    assert seeded.config.loss == base.loss
    # The human-only baseline learns from the grades alone, at every seed.
    for name in ("human-only", "human-only-seed7"):
        loss = by_name[name].config.loss
        assert loss.human_teacher_weight == 0.0 and loss.margin_scale == "per_source"
    assert base.loss.margin_scale == "teacher"
    # ... and its identity does not move with the teacher knobs (no retraining for nothing).
    assert student_fingerprint(config, dataset, 0) == student_fingerprint(
        tiny_pipeline.config, dataset, 0
    )
    assert student_fingerprint(config, dataset, large) != student_fingerprint(
        tiny_pipeline.config.model_copy(update={"curve": config.curve}), dataset, large
    )
    # Explicit sizes: only those, at the config's seed.
    assert [r.name for r in curve_runs(config, dataset, [0, small])] == [
        "human-only",
        f"distill-n{small}",
    ]
    # Named runs: those only, in the order asked (two processes share the curve's work).
    chosen = select_runs(runs, [f"distill-n{large}-seed7", "human-only"])
    assert [(r.name, r.config.student.seed) for r in chosen] == [
        (f"distill-n{large}-seed7", 7),
        ("human-only", 13),
    ]
    with pytest.raises(PipelineError, match=r"human-only-seed9.*the curve's runs: human-only"):
        select_runs(runs, ["human-only-seed9"])


def test_variant_runs_learn_from_the_recipes_labeler(tiny_pipeline, monkeypatch) -> None:
    """The ensemble's id holds the recipe's human-only student: a seed variant must find
    the recipe's labeler, not one keyed by its own seed."""
    import training.artifacts as artifacts
    from training.stages import distill_fingerprint

    dataset = tiny_pipeline.dataset
    config = tiny_pipeline.config.model_copy(
        update={"curve": tiny_pipeline.config.curve.model_copy(update={"end_seeds": (7,)})}
    )
    real_source = artifacts.augmentation_label_source

    def recipe_only(cfg, data):
        # What a labeler record keyed by the recipe's student does: a variant's key misses.
        if cfg.student != config.student:
            raise PipelineError(f"no ensemble record for seed {cfg.student.seed}")
        return real_source(cfg, data)

    monkeypatch.setattr(artifacts, "augmentation_label_source", recipe_only)
    runs = {r.name: r for r in curve_runs(config, dataset) if r.augment_pairs}
    variants = [r for r in runs.values() if r.variant_of]
    assert {r.name.rsplit("-", 1)[-1] for r in variants} == {"seed7"}
    prints = {name: distill_fingerprint(run, dataset, None, config) for name, run in runs.items()}
    assert len(set(prints.values())) == len(prints)  # each variant is still its own run
    with pytest.raises(PipelineError, match="seed 7"):
        student_fingerprint(variants[0].config, dataset, variants[0].augment_pairs)


def _record(name: str, size: int, seed: int, validation: float, **extra) -> dict:
    return {
        "name": name,
        "augment_pairs": size,
        "seed": seed,
        "validation_pairwise_accuracy": validation,
        "config": {"student": {"seed": seed}},
        **extra,
    }


def _row(run: str, test: float) -> dict:
    return {
        "name": student_row_name(run),
        "kind": "student",
        "metrics": {"pairwise_accuracy": test},
    }


def _results() -> dict:
    records = [
        _record("human-only", 0, 13, 0.600),
        _record("human-only-seed14", 0, 14, 0.604, variant_of="human-only"),
        _record("distill-n50", 50, 13, 0.620),
        _record("distill-n100", 100, 13, 0.630),
        _record("distill-n100-seed14", 100, 14, 0.627, variant_of="distill-n100"),
        _record("distill-n100-l1.3.5", 100, 13, 0.61, layers=[1, 3, 5], source_run="distill-n100"),
    ]
    tests = {
        "human-only": 0.59,
        "human-only-seed14": 0.595,
        "distill-n50": 0.61,
        "distill-n100": 0.625,
        "distill-n100-seed14": 0.62,
        "distill-n100-l1.3.5": 0.60,
    }
    systems = [_row(run, test) for run, test in tests.items()]
    systems.append({"name": "BM25", "kind": "baseline", "metrics": {"pairwise_accuracy": 0.54}})
    costs = {"distill-n100-l1.3.5": {"ms_per_pair": 0.4, "speedup": 2.1}}
    return student_run_results(records, systems, costs)


def test_results_show_each_seed_of_both_ends_and_their_spread() -> None:
    results = _results()
    curve = {c["augment_pairs"]: c for c in results["curve"]}
    assert sorted(curve) == [0, 50, 100]
    ends = curve[0], curve[100]
    assert [[s["seed"] for s in c["seeds"]] for c in ends] == [[13, 14], [13, 14]]
    assert [s["test_pairwise_accuracy"] for s in curve[0]["seeds"]] == [0.59, 0.595]
    assert curve[0]["test_mean"] == pytest.approx(0.5925)
    assert curve[0]["validation_spread"] == pytest.approx(0.004)
    assert curve[100]["validation_spread"] == pytest.approx(0.003)
    assert curve[50]["validation_spread"] is None and len(curve[50]["seeds"]) == 1
    # The smaller students are rows of their own, not seeds of the curve.
    assert [s["run"] for s in curve[100]["seeds"]] == ["distill-n100", "distill-n100-seed14"]
    assert results["seed_noise"]["validation"] == pytest.approx(0.004)
    assert results["seed_noise"]["test"] == pytest.approx(0.005)
    small = {r["run"]: r for r in results["runs"]}["distill-n100-l1.3.5"]
    assert small["layers"] == [1, 3, 5] and small["onnx_cost"]["speedup"] == 2.1
    assert small["source_run"] == "distill-n100"


def test_the_evaluation_results_carry_the_student_runs(tiny_pipeline) -> None:
    results = tiny_pipeline.get("evaluate")
    (size,) = curve_sizes(tiny_pipeline.config, tiny_pipeline.dataset)
    runs = results["student_runs"]
    assert [c["augment_pairs"] for c in runs["curve"]] == [0, size]
    rows = {s["name"]: s for s in results["systems"]}
    for entry in runs["curve"]:
        (seed,) = entry["seeds"]
        assert seed["seed"] == tiny_pipeline.config.student.seed
        row = rows[student_row_name(seed["run"])]
        assert seed["test_pairwise_accuracy"] == row["metrics"]["pairwise_accuracy"]
    assert "term_matching" not in runs
