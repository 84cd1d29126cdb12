"""The report: findings, row names and what a manifest records of an evaluation."""

from __future__ import annotations

from training.evaluation.report import (
    committee_row_name,
    findings,
    manifest_evaluation,
    render_markdown,
    student_row_name,
)


def _system(name: str, kind: str, accuracy: float, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "kind": kind,
        "metrics": {"pairwise_accuracy": accuracy},
        "augment_pairs": extra.pop("augment_pairs", 0),
        "validation_pairwise_accuracy": extra.pop("validation", None),
        **extra,
    }


def test_findings_state_each_target_with_its_numbers() -> None:
    systems = [
        _system("BM25", "baseline", 0.556),
        _system("student: human-only", "student", 0.596, validation=0.571),
        _system("student: distill-n5888", "student", 0.587, augment_pairs=5888, validation=0.575),
        _system(
            "student: committee-n24000",
            "student",
            0.602,
            augment_pairs=24000,
            validation=0.584,
            labels_from="committee",
        ),
        _system("committee teacher of committee-n24000", "committee", 0.603),
        _system("committee teacher of committee-n9", "committee", 0.500),
    ]
    lines = findings({"systems": systems})
    assert "committee-n24000" in lines[0] and "a committee of students" in lines[0]
    assert "vs the human-labels-only student (0.5960): +0.0060, beats it." in lines
    assert "vs BM25 (0.5560): +0.0460, misses the +0.05 target." in lines
    # Compared with its own committee teacher, not another committee's.
    assert "vs its committee teacher (0.6030): -0.0010." in lines


def test_the_teacher_cost_ratio_is_stated_only_for_timings_of_one_run() -> None:
    """A student read from a stored result was timed on the day it was stored (maybe on
    another machine); the ratio to a teacher timed now is not side by side."""

    def systems(student_timed: str | None) -> list[dict[str, object]]:
        extra = {} if student_timed is None else {"latency_measured_at": student_timed}
        return [
            _system("student: human-only", "student", 0.596, validation=0.57),
            _system(
                "student: distill-n9",
                "student",
                0.604,
                augment_pairs=9,
                validation=0.59,
                latency_ms_per_pair=5.0,
                **extra,
            ),
            _system("teacher", "teacher", 0.604, latency_ms_per_pair=200.0),
            _system("served package", "package", 0.603, latency_ms_per_pair=4.0),
        ]

    same = findings({"systems": systems(None)})
    assert any("on the same CPU" in f and "40.0× cheaper (meets" in f for f in same)
    stored = findings({"systems": systems("2026-12-02")})
    assert not any("same CPU" in f for f in stored)
    line = next(f for f in stored if f.startswith("Cost per pair, not side by side"))
    assert "timed 2026-12-02, a stored result" in line and "cheaper" not in line
    # The served package is timed in every run: its ratio stays.
    assert "served package: 4.00 ms per pair, 50.0× cheaper." in stored


def test_manifest_evaluation_takes_the_exported_runs_row_and_the_baselines() -> None:
    results = {
        "split": "test",
        "pairs": 10,
        "queries": 3,
        "systems": [
            _system("BM25", "baseline", 0.55),
            _system(student_row_name("human-only"), "student", 0.59, latency_ms_per_pair=2.0),
            _system(student_row_name("distill-n9"), "student", 0.60, latency_ms_per_pair=3.0),
            _system(committee_row_name("distill-n9"), "committee", 0.61),
            _system("teacher (t)", "teacher", 0.52),
        ],
    }
    evaluation = manifest_evaluation(results, "distill-n9")
    assert evaluation["student"] == {"pairwise_accuracy": 0.60}
    assert evaluation["student_latency_ms_per_pair"] == 3.0
    assert evaluation["baselines"] == {
        "BM25": {"pairwise_accuracy": 0.55},
        "teacher (t)": {"pairwise_accuracy": 0.52},
    }
    assert (evaluation["split"], evaluation["pairs"], evaluation["queries"]) == ("test", 10, 3)
    # A run the evaluation never scored gets no numbers (not another run's).
    assert manifest_evaluation(results, "committee-n5")["student"] is None


def test_render_markdown_names_the_command_and_every_row() -> None:
    systems = [
        {
            **_system("BM25", "baseline", 0.5561, augment_pairs=None),
            "latency_ms_per_pair": 0.1,
            "notes": "bm25s",
        },
        {
            **_system("student: human-only", "student", 0.5960),
            "latency_ms_per_pair": 10.0,
            "notes": "",
            "slices": {},
        },
    ]
    for system in systems:
        system.setdefault("slices", {})
    results = {
        "split": "test",
        "pairs": 4,
        "queries": 2,
        "data": {"file": "train.csv", "sha256": "c7c8be5991de" + "0" * 52},
        "command": "python -m training evaluate --x",
        "latency": {"description": "wall time."},
        "systems": systems,
        "teacher_subset": None,
        "slices": {},
        "slice_sizes": {},
        "findings": ["a finding"],
    }
    text = render_markdown(results, None)
    assert "python -m training evaluate --x" in text
    assert "| BM25 |  | 0.5561 |" in text and "| student: human-only | 0 | 0.5960 |" in text
    assert "- **BM25**: bm25s" in text and "- a finding" in text


def _full_results() -> dict[str, object]:
    """Results with every section the renderer knows: negatives, ensemble, curve, frontier."""
    systems = [
        {
            **_system("BM25", "baseline", 0.556, augment_pairs=None),
            "negatives_irrelevant_share": None,
        },
        {**_system("student: human-only", "student", 0.596), "negatives_irrelevant_share": 0.42},
        {
            **_system("student: distill-n9", "student", 0.607, augment_pairs=9),
            "negatives_irrelevant_share": 0.95,
        },
    ]
    for system in systems:
        system.update(latency_ms_per_pair=1.0, notes="", slices={})
    point = {"layers": None, "run": None, "fingerprint": None, "cost": "timed", "notes": ""}
    return {
        "split": "test",
        "pairs": 4,
        "queries": 2,
        "data": {"file": "train.csv", "sha256": "c7c8be5991de" + "0" * 52},
        "command": "python -m training evaluate --x",
        "latency": {"description": "wall time."},
        "systems": systems,
        "teacher_subset": None,
        "slices": {},
        "slice_sizes": {},
        "findings": [],
        "negatives": {
            "pairs": 2120,
            "queries": 1060,
            "per_query": 2,
            "seed": 13,
            "threshold": 0.25,
            "target": 0.9,
            "split": "validation",
        },
        "ensemble": {
            "id": "ensemble-abc",
            "ensemble": {"weights": {"llm": 0.5, "human-only": 0.4, "bm25": 0.1}},
            "without_llm": {"weights": {"human-only": 0.8, "bm25": 0.2}},
            "table": [
                {"system": "llm", "validation": 0.571, "test": 0.574},
                {"system": "ensemble", "validation": 0.602, "test": 0.605},
                {"system": "ensemble without the LLM", "validation": 0.590, "test": 0.593},
            ],
            "decision": {"rule": "ensemble.use='auto': the rule"},
            "verdict": "The LLM adds to the ensemble: +0.0120 test.",
        },
        "student_runs": {
            "curve": [
                {
                    "augment_pairs": 0,
                    "seeds": [
                        {"seed": 13, "test_pairwise_accuracy": 0.596},
                        {"seed": 14, "test_pairwise_accuracy": 0.592},
                    ],
                    "test_mean": 0.594,
                    "test_spread": 0.004,
                    "validation_mean": 0.571,
                    "validation_spread": 0.003,
                },
                {
                    "augment_pairs": 9,
                    "seeds": [
                        {"seed": 13, "test_pairwise_accuracy": 0.607},
                        {"seed": 14, "test_pairwise_accuracy": 0.603},
                    ],
                    "test_mean": 0.605,
                    "test_spread": 0.004,
                    "validation_mean": 0.58,
                    "validation_spread": 0.002,
                },
            ],
            "seed_noise": {"test": 0.004, "validation": 0.003},
        },
        "frontier": {
            "rule": "the stated rule",
            "budget_ms": 1000.0,
            "slo_items": 100,
            "small_max_layers": 3,
            "choice": "distill-n9-l3",
            "points": [
                {
                    **point,
                    "name": "BM25",
                    "kind": "baseline",
                    "test_pairwise_accuracy": 0.556,
                    "validation_pairwise_accuracy": 0.55,
                    "ms_per_pair": 0.1,
                },
                {
                    **point,
                    "name": "student: distill-n9",
                    "kind": "student",
                    "layers": 6,
                    "run": "distill-n9",
                    "test_pairwise_accuracy": 0.607,
                    "validation_pairwise_accuracy": 0.58,
                    "ms_per_pair": 3.3,
                },
                {
                    **point,
                    "name": "student: distill-n9-l3",
                    "kind": "student",
                    "layers": 3,
                    "run": "distill-n9-l3",
                    "test_pairwise_accuracy": 0.600,
                    "validation_pairwise_accuracy": 0.585,
                    "ms_per_pair": 1.6,
                },
                {
                    **point,
                    "name": "teacher (LLM)",
                    "kind": "teacher",
                    "test_pairwise_accuracy": 0.574,
                    "validation_pairwise_accuracy": 0.571,
                    "ms_per_pair": None,
                },
            ],
        },
    }


def test_render_markdown_shows_negatives_ensemble_curve_and_frontier() -> None:
    text = render_markdown(_full_results(), "curve.png", "frontier.png")
    # The negatives column: a share per calibrated system, "–" where it does not apply.
    assert "random neg. irrelevant |" in text
    assert "| BM25 |  | 0.5560 |" in text and text.count("| – |\n") >= 1
    assert "| 42.0% |" in text and "| 95.0% |" in text
    assert "2,120 (validation query, random catalogue title) pairs" in text
    assert "Below the target: student: human-only." in text
    # The ensemble: every row on both splits and the plain verdict.
    assert (
        "## Teacher ensemble" in text and "| ensemble without the LLM | 0.5900 | 0.5930 |" in text
    )
    assert "**The LLM adds to the ensemble: +0.0120 test.**" in text
    # The curve: each seed, the mean and the spread.
    assert "| 9 | 2 | 0.6070 (seed 13), 0.6030 (seed 14) | 0.6050 | 0.0040 |" in text
    assert "test 0.0040, validation 0.0030" in text
    # The frontier: cheapest first, the choice marked, the teacher without a cost, the plot.
    frontier = text[text.index("## Quality / latency frontier") :]
    assert (
        frontier.index("BM25")
        < frontier.index("distill-n9-l3")
        < frontier.index("| student: distill-n9 |")
    )
    assert (
        "| **student: distill-n9-l3** (default) | 3 | 0.6000 | 0.5850 | 1.600 | 160 |" in frontier
    )
    assert "| teacher (LLM) |  | 0.5740 | 0.5710 | – | – |" in frontier
    assert "![test pairwise accuracy vs cost per pair](frontier.png)" in frontier
    assert "Default package rule: the stated rule. Choice: **distill-n9-l3**." in frontier


def test_the_curve_and_frontier_plots_are_drawn(tmp_path) -> None:
    from training.evaluation.frontier import plot_frontier
    from training.evaluation.report import plot_curve

    results = _full_results()
    curve = plot_curve(results, tmp_path / "curve.png")
    frontier = plot_frontier(results["frontier"], "test", tmp_path / "frontier.png")
    assert curve.stat().st_size > 1000 and frontier.stat().st_size > 1000
