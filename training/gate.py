"""The promotion gate: ``python -m training gate --candidate models/X --current models/Y``.

A candidate package may replace the current one only if, measured here on both, the same
way the service scores (:class:`training.evaluation.baselines.PackageScorer`):

- **validation**: its pairwise accuracy on the validation split's human grades beats the
  current package's by more than ``gate.min_gain``;
- **live traffic**: its pairwise agreement with the teacher on the held-back mirror pairs
  (``role = holdout`` of the ingested mirror files the candidate's provenance names; those
  were never trained on) beats the current package's by more than ``gate.min_gain``.
  Pairwise agreement is pairwise accuracy with the teacher's score as the grade; the mean
  Spearman per query is reported beside it;
- **cost**: its cost per pair, timed on the same validation pairs in alternating rounds
  (the fastest round of each), is at most ``1 + gate.cost_margin`` times the current's.

The verdict and every number go into the candidate's ``manifest.json`` under
``evaluation.gate`` (the manifest is not among the checksummed files, and the package is
verified again after writing). The exit status is 0 for pass, 1 for fail; ``promote``
refuses a package without a passing verdict.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.model_package import load_package, read_manifest, write_manifest
from training.artifacts import PipelineError, load_dataset
from training.config import TrainConfig
from training.data import query_subset
from training.evaluation.metrics import pairwise_accuracy, spearman
from training.mirror_ingest import heldback_pairs

logger = logging.getLogger(__name__)

GATE_KEY = "gate"


def mean_query_spearman(
    query_ids: Sequence[str], reference: np.ndarray, scores: np.ndarray
) -> float:
    """Mean over queries of Spearman's rho (queries where it is undefined left out)."""
    frame = pd.DataFrame({"q": list(query_ids), "r": reference, "s": scores})
    rhos = [
        spearman(group["r"].to_numpy(), group["s"].to_numpy())
        for _, group in frame.groupby("q", sort=False)
    ]
    defined = [rho for rho in rhos if not math.isnan(rho)]
    return float(np.mean(defined)) if defined else math.nan


def decide(candidate: dict[str, float], current: dict[str, float], gate: Any) -> dict:
    """The verdict from both packages' numbers (``validation_pairwise_accuracy``,
    ``mirror_pairwise_agreement``, ``ms_per_pair``) under ``gate`` (a
    :class:`training.config.GateConfig`): every check must pass."""
    checks: dict[str, dict[str, Any]] = {}
    for name, metric in (
        ("validation", "validation_pairwise_accuracy"),
        ("mirror", "mirror_pairwise_agreement"),
    ):
        cand, cur = candidate[metric], current[metric]
        delta = cand - cur
        ok = not (math.isnan(cand) or math.isnan(cur)) and delta > gate.min_gain
        checks[name] = {
            "metric": metric,
            "candidate": cand,
            "current": cur,
            "delta": delta,
            "rule": f"candidate - current > {gate.min_gain:g}",
            "passed": bool(ok),
        }
    ratio = candidate["ms_per_pair"] / current["ms_per_pair"]
    checks["cost"] = {
        "metric": "ms_per_pair",
        "candidate": candidate["ms_per_pair"],
        "current": current["ms_per_pair"],
        "ratio": ratio,
        "rule": f"candidate / current <= {1 + gate.cost_margin:g}",
        "passed": bool(ratio <= 1 + gate.cost_margin),
    }
    failed = [name for name, check in checks.items() if not check["passed"]]
    return {"verdict": "fail" if failed else "pass", "failed": failed, "checks": checks}


def _cost_ms_per_pair(
    scorers: Sequence[Any], queries: list[str], texts: list[str], rounds: int
) -> list[float]:
    """Fastest of ``rounds`` timed passes per scorer, rounds alternating between scorers."""
    for scorer in scorers:  # warm-up: first-run allocations are not the model's cost
        scorer.score(queries[:8], texts[:8])
    best = [math.inf] * len(scorers)
    for _ in range(rounds):
        for index, scorer in enumerate(scorers):
            started = time.perf_counter()
            scorer.score(queries, texts)
            elapsed_ms = (time.perf_counter() - started) * 1000 / max(1, len(texts))
            best[index] = min(best[index], elapsed_ms)
    return best


def measure(
    config: TrainConfig,
    candidate_dir: Path,
    current_dir: Path,
    mirror_files: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Both packages' numbers on the same validation pairs, held-back pairs and cost sample."""
    from training.evaluation.baselines import PackageScorer

    settings = config.gate
    dataset = load_dataset(config)
    validation = dataset.splits["validation"]
    if settings.validation_queries:
        validation = query_subset(validation, settings.validation_queries, seed=config.split.seed)
    heldback = heldback_pairs(config, mirror_files)
    scorers = [
        PackageScorer(path, settings.threads, settings.batch_size)
        for path in (candidate_dir, current_dir)
    ]
    results = []
    for scorer in scorers:
        val_scores = scorer.score(validation["query"].tolist(), validation["title"].tolist())
        live_scores = scorer.score(heldback["query"].tolist(), heldback["title"].tolist())
        teacher = heldback["teacher_score"].to_numpy(dtype=np.float64)
        results.append(
            {
                "name": scorer.manifest.name,
                "version": scorer.manifest.version,
                "variant": scorer.scorer.variant,
                "validation_pairwise_accuracy": pairwise_accuracy(
                    validation["query_key"].tolist(), validation["grade"].to_numpy(), val_scores
                ),
                "mirror_pairwise_agreement": pairwise_accuracy(
                    heldback["query_key"].tolist(), teacher, live_scores
                )
                if len(heldback)
                else math.nan,
                "mirror_spearman": mean_query_spearman(
                    heldback["query_key"].tolist(), teacher, live_scores
                ),
            }
        )
    sample = validation.sample(
        n=min(settings.cost_pairs, len(validation)), random_state=config.split.seed
    )
    costs = _cost_ms_per_pair(
        scorers, sample["query"].tolist(), sample["title"].tolist(), settings.cost_rounds
    )
    for result, cost in zip(results, costs, strict=True):
        result["ms_per_pair"] = cost
    return {
        "candidate": results[0],
        "current": results[1],
        "validation": {
            "pairs": len(validation),
            "queries": int(validation["query_key"].nunique()),
        },
        "heldback": {
            "pairs": len(heldback),
            "queries": int(heldback["query_key"].nunique()),
            "files": list(mirror_files) if mirror_files is not None else "all (configured teacher)",
        },
        "cost": {
            "pairs": len(sample),
            "rounds": settings.cost_rounds,
            "batch_size": settings.batch_size,
            "threads": settings.threads,
        },
    }


def run_gate(
    config: TrainConfig,
    candidate_dir: Path,
    current_dir: Path,
    mirror_files: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Measure, decide, and write the verdict into the candidate's manifest; returns it."""
    candidate_dir, current_dir = Path(candidate_dir), Path(current_dir)
    if candidate_dir.resolve() == current_dir.resolve():
        raise PipelineError("the candidate and the current package are the same directory")
    candidate_manifest = load_package(candidate_dir).manifest
    load_package(current_dir)  # both verify before anything is measured
    if mirror_files is None:
        mirror = candidate_manifest.provenance.get("student", {}).get("mirror") or {}
        if mirror.get("files"):
            mirror_files = [f["file"] for f in mirror["files"]]
    measured = measure(config, candidate_dir, current_dir, mirror_files)
    verdict = decide(measured["candidate"], measured["current"], config.gate)
    if measured["heldback"]["pairs"] == 0:
        verdict["note"] = "no held-back mirror pairs: ingest mirrored traffic first"
    result = {
        **verdict,
        **measured,
        "current_package": str(current_dir),
        "settings": config.gate.model_dump(),
        "gated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_verdict(candidate_dir, result)
    checks = verdict["checks"]
    logger.info(
        "gate %s: validation %.4f vs %.4f, mirror agreement %.4f vs %.4f, "
        "cost %.3f vs %.3f ms/pair (x%.2f)",
        verdict["verdict"].upper(),
        checks["validation"]["candidate"],
        checks["validation"]["current"],
        checks["mirror"]["candidate"],
        checks["mirror"]["current"],
        checks["cost"]["candidate"],
        checks["cost"]["current"],
        checks["cost"]["ratio"],
    )
    return result


def write_verdict(package_dir: Path, result: dict[str, Any]) -> None:
    """``evaluation.gate`` in the package's manifest; the package still verifies after."""
    manifest = read_manifest(package_dir)
    evaluation = {**manifest.evaluation, GATE_KEY: _json_safe(result)}
    write_manifest(package_dir, manifest.model_copy(update={"evaluation": evaluation}))
    load_package(package_dir)


def gate_verdict(package_dir: Path) -> dict[str, Any] | None:
    """The gate's result recorded in a package's manifest, or None."""
    return read_manifest(package_dir).evaluation.get(GATE_KEY)


def _json_safe(value: Any) -> Any:
    """NaN (a metric with nothing to compare) as null: manifest.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
