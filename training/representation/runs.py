"""Names, fingerprints and teacher labels of representation runs (no torch).

A representation run lives under ``runs/students/<architecture>-n<N>/`` (``N`` labeled
augmentation pairs; ``<architecture>-human-only`` for none) beside the cross-encoder
runs. Its teacher labels come from the file ``representation.labels`` names under
``paths.labels_dir`` (a committee's labels, or the LLM teacher's): any CSV with
``query_key``, ``product_id`` and ``teacher_score``, joined with the augmentation set.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from training.artifacts import (
    Dataset,
    PipelineError,
    augment_data_version,
    load_augmentation,
    with_scores,
)
from training.config import TrainConfig
from training.label import stored_labels


def representation_run_name(architecture: str, augment_pairs: int) -> str:
    return f"{architecture}-human-only" if not augment_pairs else f"{architecture}-n{augment_pairs}"


def labels_file(config: TrainConfig) -> Path | None:
    """The teacher label file of the representation student, or None (human labels only)."""
    name = config.representation.labels
    if not name:
        return None
    path = Path(name)
    return path if path.is_absolute() else config.path("labels_dir") / path


def labels_sha256(config: TrainConfig) -> str | None:
    """SHA-256 of the label file's contents, the same whether it is stored plain or sealed
    (gzipped, as committed), so sealing it does not make a trained run stale."""
    import gzip
    import hashlib

    path = labels_file(config)
    stored = None if path is None else stored_labels(path)
    if stored is None:
        return None
    opener = gzip.open if stored.suffix == ".gz" else open
    digest = hashlib.sha256()
    with opener(stored, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def labeled_pairs(config: TrainConfig, dataset: Dataset) -> pd.DataFrame | None:
    """Augmentation pairs that carry a label in :func:`labels_file` (``teacher_score``)."""
    path = labels_file(config)
    if path is None:
        return None
    stored = stored_labels(path)
    if stored is None:
        raise PipelineError(
            f"representation.labels names {path}, which does not exist; set it to a label "
            "file under labels/ (e.g. committee-<id>/<version>-n<N>.csv) or to none"
        )
    labels = pd.read_csv(stored, dtype={"query_key": str, "product_id": str})
    missing = {"query_key", "product_id", "teacher_score"} - set(labels.columns)
    if missing:
        raise PipelineError(f"{path} lacks the columns {sorted(missing)}")
    labels = labels.dropna(subset=["teacher_score"])
    labeled = with_scores(load_augmentation(config, dataset), labels)
    if labeled.empty:
        version = augment_data_version(config, dataset)
        raise PipelineError(
            f"no pair of {path} is in the augmentation set {version}: the labels were made "
            "for another data or augment config"
        )
    return labeled.reset_index(drop=True)


def label_source(config: TrainConfig) -> str | None:
    """What labeled the augmentation pairs: ``committee``, ``teacher`` or None."""
    name = config.representation.labels
    if not name:
        return None
    return "committee" if Path(name).parts[0].startswith("committee-") else "teacher"


def representation_fingerprint(
    config: TrainConfig, dataset: Dataset, labels_sha256: str | None, pairs: int
) -> str:
    """Identity of a representation run: split, student, loss, representation, its labels."""
    extra = {
        "data": dataset.sha256,
        "labels": labels_sha256,
        "augment": augment_data_version(config, dataset) if pairs else None,
        "n": pairs,
        "kind": "representation",
    }
    return config.fingerprint("split", "student", "loss", "representation", extra=extra)


def variant_configs(config: TrainConfig) -> list[TrainConfig]:
    """``config`` and one config per ``representation.also`` entry (its architecture and
    dim, nothing else changed): the representation runs the represent stage trains."""
    out = [
        config.model_copy(
            update={"representation": config.representation.model_copy(update={"also": ()})}
        )
    ]
    seen = {(config.representation.architecture, config.representation.dim)}
    for variant in config.representation.also:
        if (variant.architecture, variant.dim) in seen:
            continue
        seen.add((variant.architecture, variant.dim))
        section = config.representation.model_copy(
            update={"architecture": variant.architecture, "dim": variant.dim, "also": ()}
        )
        out.append(config.model_copy(update={"representation": section}))
    return out


def representation_runs(config: TrainConfig, dataset: Dataset) -> dict[str, str]:
    """Name -> fingerprint of every representation run ``python -m training represent``
    trains under ``config`` (main first, then each of ``also``): what a stored result is
    matched against once its weights are gone. The variants share their labels, read once."""
    labeled = labeled_pairs(config, dataset)
    pairs = 0 if labeled is None else len(labeled)
    sha = labels_sha256(config)
    return {
        representation_run_name(variant.representation.architecture, pairs): (
            representation_fingerprint(variant, dataset, sha, pairs)
        )
        for variant in variant_configs(config)
    }


def representation_package_dir(config: TrainConfig, architecture: str) -> Path:
    """Where a representation run of ``architecture`` is exported: the configured package
    for the main architecture, ``<package>-<architecture>`` for another (so exporting the
    second kind never overwrites the first)."""
    name = config.export.representation_package
    if architecture != config.representation.architecture:
        name = f"{name}-{architecture}"
    return config.path("models_dir") / name
