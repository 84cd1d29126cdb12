"""The promotion gate: its rule, the verdict in the manifest, the exit status."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_mirror_ingest import fake_teacher_package, mirror_config, record, write_jsonl

from service.model_package import load_package, read_manifest
from training.__main__ import main
from training.artifacts import PipelineError, load_dataset
from training.config import GateConfig
from training.gate import decide, gate_verdict, mean_query_spearman, run_gate
from training.mirror_ingest import ingest_mirror

BETTER = {"validation_pairwise_accuracy": 0.62, "mirror_pairwise_agreement": 0.70}
WORSE = {"validation_pairwise_accuracy": 0.60, "mirror_pairwise_agreement": 0.65}


def numbers(base: dict[str, float], ms: float) -> dict[str, float]:
    return {**base, "ms_per_pair": ms}


def test_decide_needs_every_check() -> None:
    gate = GateConfig(cost_margin=0.10)
    verdict = decide(numbers(BETTER, 1.05), numbers(WORSE, 1.0), gate)
    assert verdict["verdict"] == "pass" and verdict["failed"] == []
    assert verdict["checks"]["cost"]["ratio"] == pytest.approx(1.05)
    # 11% slower than the current one: past the 10% margin.
    assert decide(numbers(BETTER, 1.11), numbers(WORSE, 1.0), gate)["failed"] == ["cost"]
    # Better on validation only; equal is not better.
    mixed = {**BETTER, "mirror_pairwise_agreement": WORSE["mirror_pairwise_agreement"]}
    assert decide(numbers(mixed, 1.0), numbers(WORSE, 1.0), gate)["failed"] == ["mirror"]
    assert decide(numbers(WORSE, 1.0), numbers(WORSE, 1.0), gate)["failed"] == [
        "validation",
        "mirror",
    ]
    # A required gain: +0.02 on validation is not more than 0.03.
    strict = decide(numbers(BETTER, 1.0), numbers(WORSE, 1.0), GateConfig(min_gain=0.03))
    assert strict["failed"] == ["validation"]
    # Nothing to compare on live traffic (no held-back pairs): no pass.
    blind = {**BETTER, "mirror_pairwise_agreement": math.nan}
    assert "mirror" in decide(numbers(blind, 1.0), numbers(WORSE, 1.0), gate)["failed"]


def test_mean_query_spearman_skips_undefined_queries() -> None:
    queries = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
    teacher = np.array([0.1, 0.5, 0.9, 0.1, 0.5, 0.9, 0.3, 0.3, 0.3])
    scores = np.array([0.2, 0.4, 0.6, 0.6, 0.4, 0.2, 0.1, 0.2, 0.3])
    # a: +1, b: -1, c: the teacher's scores are constant (left out).
    assert mean_query_spearman(queries, teacher, scores) == pytest.approx(0.0)
    assert math.isnan(mean_query_spearman(["a"], np.array([0.1]), np.array([0.2])))


def test_gate_writes_its_verdict_and_exit_status(
    tmp_path: Path, tiny_dataset: Path, fp32_package: Path, tiny_model_package: Path
) -> None:
    config = mirror_config(
        tmp_path, tiny_dataset, mirror={"holdout": 0.5}, gate={"cost_rounds": 1, "cost_pairs": 16}
    )
    teacher = fake_teacher_package(tmp_path / "models")
    dataset = load_dataset(config)
    rows = [
        record(f"live {q}", f"item {i} {q}", (i + 1) / 5, teacher)
        for q in range(20)
        for i in range(4)
    ]
    report = ingest_mirror(config, [write_jsonl(tmp_path / "m.jsonl", rows)], dataset)
    held = report["teachers"][teacher]["holdout_pairs"]
    assert held > 0
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(fp32_package, first)
    shutil.copytree(tiny_model_package, second)
    config_file = config.save(tmp_path / "config.json")

    statuses = []
    for candidate, current in ((first, second), (second, first)):
        argv = ["gate", "--config", str(config_file), "--candidate", str(candidate)]
        statuses.append(main([*argv, "--current", str(current)]))
        verdict = gate_verdict(candidate)
        assert verdict["heldback"]["pairs"] == held
        assert statuses[-1] == (0 if verdict["verdict"] == "pass" else 1)
        assert verdict["checks"]["cost"]["candidate"] > 0
        load_package(candidate)  # the checksums still hold
        # Strict JSON on disk (NaN would not be).
        json.loads((candidate / "manifest.json").read_text(), parse_constant=pytest.fail)
    a, b = gate_verdict(first)["checks"], gate_verdict(second)["checks"]
    # Each run measured both packages the same way: the numbers agree crosswise ...
    assert a["validation"]["candidate"] == pytest.approx(b["validation"]["current"])
    assert a["mirror"]["current"] == pytest.approx(b["mirror"]["candidate"])
    # ... so no package can beat the other on validation both ways: one run fails.
    assert not (a["validation"]["passed"] and b["validation"]["passed"])
    assert 1 in statuses
    assert read_manifest(first).evaluation["gate"]["current_package"] == str(second)


def test_gate_refuses_one_package_against_itself(
    tmp_path: Path, tiny_dataset: Path, fp32_package: Path
) -> None:
    config = mirror_config(tmp_path, tiny_dataset)
    with pytest.raises(PipelineError, match="same directory"):
        run_gate(config, fp32_package, fp32_package)
