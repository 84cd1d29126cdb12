"""Build a model package: export, try each variant's recipes against its gates, write.

:func:`export_package` exports the FP32 graph once, then for each variant tries its
recipes in order (:func:`_build_variant`), scoring every candidate on the parity pairs;
the package directory is assembled in a temporary directory and swapped in by rename.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.model_package import VARIANT_NAMES, VariantSpec, write_manifest
from training.artifacts import TOKENIZER_FILES
from training.onnx_export import ExportError, quiet
from training.onnx_export.calibration import MAX_CALIBRATION_PAIRS, spread, write_calibration
from training.onnx_export.manifest import build_manifest
from training.onnx_export.parity import (
    MAX_BATCH_INVARIANCE_DIFF,
    ParityResult,
    ValidationPair,
    batch_invariance,
    check_fp32_parity,
    check_ranking_parity,
    invariance_pairs,
)
from training.onnx_export.recipes import RECIPES, Recipe
from training.onnx_export.scoring import fp16_providers, session_scores, torch_scores

logger = logging.getLogger(__name__)

GRAPH_FILES = {name: f"model.{name}.onnx" for name in VARIANT_NAMES}
VARIANT_PROVIDERS = {
    "fp32": ["CPUExecutionProvider", "CUDAExecutionProvider"],
    "fp16": ["CUDAExecutionProvider"],
    "int8": ["CPUExecutionProvider"],
}
# Copied from the student into the package: everything a consumer needs to rebuild the
# tokenizer or an ORTModel.
PACKAGE_COPIED_FILES = (*TOKENIZER_FILES, "config.json")
# Used for the FP32-vs-torch check when the caller has no validation pairs (tests).
SMOKE_PAIRS: tuple[ValidationPair, ...] = (
    ("q0", "angle bracket", "Simpson Strong-Tie 12-Gauge Angle", 3.0),
    ("q0", "angle bracket", "BEHR Premium Textured DeckOver 1-gal. Wood Coating", 1.0),
    ("q1", "rain shower head", "Delta Vero 1-Handle Shower Only Faucet Trim Kit in Chrome", 2.33),
    ("q1", "rain shower head", "Whirlpool 1.9 cu. ft. Over the Range Microwave", 1.0),
    (
        "q2",
        "emergency light",
        "Lithonia Lighting Quantum 2-Light Black LED Emergency Fixture",
        2.67,
    ),
    ("q2", "emergency light", "House of Fara 3/4 in. x 3 in. x 8 ft. MDF Fluted Casing", 1.0),
)


@dataclass
class _VariantOutcome:
    name: str
    graph: Path | None = None
    spec: VariantSpec | None = None
    scores: np.ndarray | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _ParityData:
    """The pairs every candidate graph is scored on, and the scores it is judged against."""

    tokenizer_path: Path
    max_length: int
    text_pairs: list[tuple[str, str]]
    query_ids: list[Hashable]
    grades: list[float]
    ranking_checked: bool
    torch_scores: np.ndarray
    # Batch-invariance probe (see invariance_pairs) and where the calibration pairs came from.
    probes: list[tuple[str, str]] = field(default_factory=list)
    company: list[tuple[str, str]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)


def _check_student_dir(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{config_path}: not a saved HF model directory")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    num_labels = len(config.get("id2label", {})) or config.get("num_labels")
    if num_labels != 1:
        raise ExportError(f"{config_path}: student must have num_labels=1, got {num_labels}")
    if not (model_dir / "tokenizer.json").is_file():
        raise ExportError(f"{model_dir}: tokenizer.json is missing (save a fast tokenizer)")
    return config


def export_package(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    max_length: int,
    variants: Sequence[str] = VARIANT_NAMES,
    validation_pairs: Sequence[ValidationPair] | None = None,
    calibration_pairs: Sequence[tuple[str, str]] | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    recipes: Mapping[str, Sequence[Recipe]] = RECIPES,
) -> Path:
    """Export a saved ``BertForSequenceClassification`` (num_labels=1) to a model package.

    ``out_dir`` is the package directory itself (``models/<name>``); an existing package
    there is replaced as a whole. ``validation_pairs`` are ``(query_id, query, text,
    grade)``; without them the FP32 check runs on a few built-in pairs and the FP16/INT8
    ranking checks are skipped (recorded as such in the manifest). ``calibration_pairs``
    (``(query, text)``; best drawn from the training split, see
    :func:`~training.onnx_export.calibration.calibration_pairs_from_frame`) set the static
    INT8 activation ranges; by default the validation pairs (or the built-in pairs) are
    used. At most ``MAX_CALIBRATION_PAIRS`` are used, evenly spread over the list.
    ``extra_manifest`` sets further manifest keys (``backbone``, ``evaluation``,
    ``provenance``, ``score``).
    ``recipes`` are the candidates per variant, best first. Returns ``out_dir``.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    unknown = set(variants) - set(VARIANT_NAMES)
    if unknown or not variants:
        raise ExportError(f"variants must be a non-empty subset of {VARIANT_NAMES}, got {variants}")
    hf_config = _check_student_dir(model_dir)
    pairs = list(validation_pairs) if validation_pairs else list(SMOKE_PAIRS)
    text_pairs = [(p[1], p[2]) for p in pairs]
    tokenizer_path = model_dir / "tokenizer.json"
    if calibration_pairs:
        calibration, source = [(p[0], p[1]) for p in calibration_pairs], "caller"
    else:
        source = "validation pairs" if validation_pairs else "built-in smoke pairs"
        calibration = text_pairs
    calibration = spread(calibration, MAX_CALIBRATION_PAIRS)
    probes, company = invariance_pairs(text_pairs)
    data = _ParityData(
        tokenizer_path=tokenizer_path,
        max_length=max_length,
        text_pairs=text_pairs,
        query_ids=[p[0] for p in pairs],
        grades=[float(p[3]) for p in pairs],
        ranking_checked=bool(validation_pairs),
        torch_scores=torch_scores(model_dir, tokenizer_path, max_length, text_pairs),
        probes=probes,
        company=company,
        calibration={"pairs": len(calibration), "source": source},
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-export-", dir=out_dir.parent) as tmp:
        work = Path(tmp)
        export_dir = work / "export"
        _main_export(model_dir, export_dir)
        if "int8" in variants:
            write_calibration(export_dir, tokenizer_path, max_length, calibration)

        # FP32 is always built: it is the reference of the FP16/INT8 ranking checks.
        fp32 = _build_variant("fp32", recipes["fp32"], export_dir, work, data, reference=None)
        if fp32.spec is None:
            raise ExportError(f"no FP32 graph passed parity: {fp32.attempts}")
        outcomes = {"fp32": fp32}
        for variant in ("fp16", "int8"):
            if variant in variants:
                outcomes[variant] = _build_variant(
                    variant, recipes[variant], export_dir, work, data, reference=fp32.scores
                )
        written = {v: o for v, o in outcomes.items() if o.spec is not None and v in variants}
        rejected = {v: o.attempts for v, o in outcomes.items() if o.spec is None}
        if not written:
            raise ExportError(f"no requested variant passed parity: {rejected}")

        package = work / "package"
        package.mkdir()
        for file_name in PACKAGE_COPIED_FILES:
            if (model_dir / file_name).is_file():
                shutil.copy2(model_dir / file_name, package / file_name)
        for variant, outcome in written.items():
            shutil.copy2(outcome.graph, package / GRAPH_FILES[variant])  # type: ignore[arg-type]
        manifest = build_manifest(
            package,
            name=name,
            version=version,
            max_length=max_length,
            hf_config=hf_config,
            variants={v: o.spec for v, o in written.items()},  # type: ignore[misc]
            rejected=rejected,
            extra=dict(extra_manifest or {}),
        )
        write_manifest(package, manifest)
        _replace_dir(package, out_dir, work / "previous")
    return out_dir


@dataclass(frozen=True)
class _Candidate:
    """A graph that passed its parity gate."""

    recipe: Recipe
    graph: Path
    scores: np.ndarray
    parity: dict[str, Any]
    invariant: bool


def _build_variant(
    variant: str,
    recipes: Sequence[Recipe],
    export_dir: Path,
    work: Path,
    data: _ParityData,
    *,
    reference: np.ndarray | None,
) -> _VariantOutcome:
    """Try the variant's recipes in order; keep the first graph that passes its parity gate.

    A passing graph that is not batch-invariant is held back while a later recipe that is
    expected to be batch-invariant may still pass; it is used only if none does. The
    written variant records every other attempt as ``rejected_recipes``.
    """
    attempts: list[dict[str, Any]] = []
    fallback: _Candidate | None = None
    for i, recipe in enumerate(recipes):
        if fallback is not None and not recipe.batch_invariant:
            break  # nothing batch-invariant is left to try
        candidate = _try_candidate(
            variant, recipe, export_dir, work / f"{variant}-{i}", data, reference, attempts
        )
        if candidate is None:
            continue
        if candidate.invariant:
            logger.info("%s variant from %s: %s", variant, recipe.label, candidate.parity)
            return _written(variant, candidate, data, rejected=list(attempts))
        logger.warning(
            "%s recipe %s passed parity but is not batch-invariant (max diff %.2e)",
            variant,
            recipe.label,
            candidate.parity["batch_invariance_max_abs_diff"],
        )
        attempts.append(
            {"recipe": recipe.label, **candidate.parity, "reason": "not batch-invariant"}
        )
        fallback = fallback or candidate
    if fallback is not None:
        label = fallback.recipe.label
        logger.warning("%s variant from %s, which is NOT batch-invariant", variant, label)
        others = [a for a in attempts if a["recipe"] != label]
        return _written(variant, fallback, data, rejected=others)
    logger.error("%s variant not written, every recipe failed: %s", variant, attempts)
    return _VariantOutcome(variant, attempts=attempts)


def _try_candidate(
    variant: str,
    recipe: Recipe,
    export_dir: Path,
    work_dir: Path,
    data: _ParityData,
    reference: np.ndarray | None,
    attempts: list[dict[str, Any]],
) -> _Candidate | None:
    """Build, score and gate one recipe; a failure is appended to ``attempts``."""
    try:
        graph = recipe.make(export_dir, work_dir)
    except Exception as exc:  # one recipe failing must not stop the others
        logger.warning("%s recipe %s failed to build: %s", variant, recipe.label, exc)
        attempts.append({"recipe": recipe.label, "error": f"build: {exc}"})
        return None
    providers = fp16_providers() if variant == "fp16" else ["CPUExecutionProvider"]
    try:
        scores, provider, invariance = _score_graph(graph, data, providers)
    except Exception as exc:  # a graph that does not load is a failed candidate
        logger.warning("%s recipe %s failed to run: %s", variant, recipe.label, exc)
        attempts.append({"recipe": recipe.label, "error": f"run: {exc}"})
        return None
    if reference is None:
        result = check_fp32_parity(data.torch_scores, scores)
    elif data.ranking_checked:
        result = check_ranking_parity(data.query_ids, data.grades, reference, scores)
    else:
        result = ParityResult(True, {"status": "skipped", "reason": "no validation pairs"})
    parity = {
        **result.numbers,
        "provider": provider,
        "batch_invariance_max_abs_diff": invariance,
        "threshold_batch_invariance": MAX_BATCH_INVARIANCE_DIFF,
        "batch_invariance_pairs": {"alone": len(data.probes), "company": len(data.company)},
    }
    if not data.ranking_checked and reference is None:
        parity["pairs_source"] = "built-in smoke pairs"
    if variant == "fp16" and provider != "CUDAExecutionProvider":
        parity["note"] = "no CUDA EP on the export machine: FP16 parity ran on the CPU EP"
    if not result.passed:
        logger.warning("%s recipe %s failed parity: %s", variant, recipe.label, result.reason)
        attempts.append({"recipe": recipe.label, "reason": result.reason, **parity})
        return None
    invariant = invariance <= MAX_BATCH_INVARIANCE_DIFF
    return _Candidate(recipe, graph, scores, parity, invariant)


def _written(
    variant: str, candidate: _Candidate, data: _ParityData, rejected: list[dict[str, Any]]
) -> _VariantOutcome:
    """The outcome of a variant written from ``candidate``."""
    build = {**candidate.recipe.build, "recipe": candidate.recipe.label}
    if build.get("mode") == "static":
        build["calibration"] = data.calibration
    if rejected:
        build["rejected_recipes"] = rejected
    spec = VariantSpec(
        file=GRAPH_FILES[variant],
        precision=variant,  # type: ignore[arg-type]
        providers=VARIANT_PROVIDERS[variant],
        batch_invariant=candidate.invariant,
        parity=candidate.parity,
        build=build,
    )
    return _VariantOutcome(
        variant, graph=candidate.graph, spec=spec, scores=candidate.scores, attempts=rejected
    )


def _score_graph(
    graph: Path, data: _ParityData, providers: Sequence[str]
) -> tuple[np.ndarray, str, float]:
    """Scores of a candidate graph, the provider that actually ran it, its batch invariance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=list(providers))
    scores = session_scores(session, data.tokenizer_path, data.max_length, data.text_pairs)
    invariance = batch_invariance(
        session, data.tokenizer_path, data.max_length, data.probes, data.company
    )
    return scores, session.get_providers()[0], invariance


def _main_export(model_dir: Path, export_dir: Path) -> None:
    from optimum.exporters.onnx import main_export

    # Dynamic batch_size/sequence_length axes are optimum's default for this task;
    # our own parity check replaces optimum's validation.
    # The tracer warns about constants in transformers' mask code, harmless for a fixed graph.
    with quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*results are registered as constants.*")
        main_export(
            str(model_dir),
            export_dir,
            task="text-classification",
            library_name="transformers",
            device="cpu",
            do_validation=False,
            local_files_only=True,
        )


def _replace_dir(new: Path, target: Path, backup: Path) -> None:
    """Swap ``new`` in for ``target`` so readers never see a half-written package."""
    if target.exists():
        target.rename(backup)
    new.rename(target)
