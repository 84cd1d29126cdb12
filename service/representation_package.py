"""A representation package: its manifest (``kind: "representation"``), loaded and verified.

The export (``training.onnx_export.representation``) writes it and the service reads it,
so the manifest's models live here, on the serving side (the export imports them, as it
imports :class:`~service.model_package.ScoreSpec`). A package directory holds:

- ``query.<variant>.onnx`` and ``item.<variant>.onnx`` per variant (fp32, fp16, int8): the
  shared BERT encoder, inputs ``input_ids``/``attention_mask``/``token_type_ids``, output
  ``last_hidden_state``;
- the head in ``manifest.head`` (pooling, optional ``projection.npy`` ``(hidden, dim)``,
  L2 normalisation, ``logit = scale * similarity + bias``, sigmoid), computed in numpy
  by :mod:`relevance_core.representation`;
- ``item_vectors``: the stored item representation (dim, dtype, bytes per item);
- the tokenizer (no truncation: each side cuts to its own ``max_length``).

:func:`package_kind` tells a representation package from a cross-encoder one
(:mod:`service.model_package`, no ``kind`` key) before either is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.model_package import (
    MANIFEST_NAME,
    ModelPackage,
    ModelPackageError,
    ScoreCalibration,
    ScoreSpec,
    _resolve,
    load_package,
    verify_files,
)

REPRESENTATION = "representation"
CROSS_ENCODER = "cross-encoder"
PackageKind = Literal["cross-encoder", "representation"]
HEAD_FILE = "representation_head.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
SIDES = ("query", "item")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SideGraph(_Strict):
    file: str


class RepresentationVariant(_Strict):
    """Both graphs of one precision, where they run, and what the export measured."""

    precision: Literal["fp32", "fp16", "int8"]
    query: SideGraph
    item: SideGraph
    providers: list[str]
    batch_invariant: bool
    parity: dict[str, Any] = Field(default_factory=dict)
    build: dict[str, Any] = Field(default_factory=dict)


class SideSpec(_Strict):
    """How one side's text is encoded: ``[CLS] text [SEP]``, cut, padded, token type 0."""

    max_length: int = Field(gt=2)
    template: str = "[CLS] text [SEP]"
    truncation: str = "longest_first (single text, cut to max_length)"
    padding: str = "longest"
    token_type_ids: int = 0


class HeadManifest(_Strict):
    file: str = HEAD_FILE
    pooling: Literal["mean", "none"]
    projection: str | None  # file of W (hidden, dim) float32: v = h @ W
    normalize: Literal["l2"] = "l2"
    similarity: str
    scale: float
    bias: float
    logit: str = "scale * similarity + bias"
    activation: Literal["sigmoid"] = "sigmoid"


class ItemVectors(_Strict):
    """The stored item representation and what a catalogue of it costs in memory."""

    dim: int
    dtype: Literal["float32", "float16"]
    per_item: Literal["one vector", "one vector per token"]
    bytes_per_vector: int
    mean_vectors_per_item: float
    max_vectors_per_item: int
    bytes_per_item: float
    catalogue_items: int
    catalogue_bytes: int
    catalogue_source: str
    parity: dict[str, Any] = Field(default_factory=dict)


class RepresentationManifest(_Strict):
    """``manifest.json`` of a representation package (``kind: representation``)."""

    format_version: Literal[1] = 1
    kind: Literal["representation"] = "representation"
    architecture: Literal["bi-encoder", "late-interaction"]
    name: str
    version: str
    backbone: str
    inputs: list[str] = Field(default_factory=lambda: list(INPUT_NAMES))
    output: str = OUTPUT_NAME
    hidden_size: int
    tokenizer: str = "tokenizer.json"
    query: SideSpec
    item: SideSpec
    head: HeadManifest
    item_vectors: ItemVectors
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    # Platt scaling of the head's logit before the sigmoid (training.score_calibration),
    # as in a cross-encoder package: scores that mean what ``score.classes`` say.
    calibration: ScoreCalibration | None = None
    variants: dict[str, RepresentationVariant]
    files: dict[str, str]
    evaluation: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)

    # The cross-encoder manifest's attribute the routes and the engine read.
    @property
    def activation(self) -> str:
        return self.head.activation

    def graph_files(self) -> set[str]:
        return {getattr(v, side).file for v in self.variants.values() for side in SIDES}


def package_kind(path: str | Path) -> PackageKind:
    """``"representation"`` or ``"cross-encoder"`` (a manifest without ``kind``)."""
    manifest_path = Path(path) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelPackageError(f"{manifest_path}: manifest is missing")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelPackageError(f"{manifest_path}: not valid JSON ({exc})") from exc
    kind = raw.get("kind", CROSS_ENCODER) if isinstance(raw, dict) else None
    if kind not in (CROSS_ENCODER, REPRESENTATION):
        raise ModelPackageError(f"{manifest_path}: unknown package kind {kind!r}")
    return kind  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RepresentationPackage:
    """A loaded, verified representation package."""

    root: Path
    manifest: RepresentationManifest
    projection: np.ndarray | None  # (hidden, dim) float32, or None

    @property
    def tokenizer_path(self) -> Path:
        return _resolve(self.root, self.manifest.tokenizer)

    def available_variants(self) -> list[str]:
        """Variants whose two graphs are both on disk."""
        return [
            name
            for name, spec in self.manifest.variants.items()
            if all(_resolve(self.root, getattr(spec, s).file).is_file() for s in SIDES)
        ]

    def graph_path(self, variant: str, side: str) -> Path:
        spec = self.manifest.variants.get(variant)
        if spec is None or variant not in self.available_variants():
            raise ModelPackageError(
                f"{self.root / MANIFEST_NAME}: variant {variant!r} is not on disk "
                f"(present: {self.available_variants()})"
            )
        return _resolve(self.root, getattr(spec, side).file)

    def select_variant(self, variant: str = "auto") -> str:
        """The graph pair to serve on CPU: ``variant`` if given, else a batch-invariant INT8,
        else FP32, else whatever is on disk (FP16 runs on CUDA only at its best)."""
        present = self.available_variants()
        if variant != "auto":
            self.graph_path(variant, "query")  # raises naming what is present
            return variant
        spec = self.manifest.variants
        for name in ("int8", "fp32", "fp16"):
            if name in present and (name != "int8" or spec[name].batch_invariant):
                return name
        return present[0]


def load_representation_package(path: str | Path) -> RepresentationPackage:
    """Load a representation package and verify its files against the manifest's SHA-256.

    Graphs may be absent (git-ignored) as long as one variant's pair is on disk; every
    other listed file must be present. Raises :class:`ModelPackageError` with the reason.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelPackageError(f"{root}: model package directory does not exist")
    manifest_path = root / MANIFEST_NAME
    if package_kind(root) != REPRESENTATION:
        raise ModelPackageError(f"{manifest_path}: not a representation package")
    try:
        manifest = RepresentationManifest.model_validate_json(manifest_path.read_text())
    except ValidationError as exc:
        raise ModelPackageError(f"{manifest_path}: invalid manifest:\n{exc}") from exc
    verify_files(root, manifest.files, optional=manifest.graph_files())
    projection = None
    if manifest.head.projection is not None:
        projection = np.load(_resolve(root, manifest.head.projection)).astype(np.float32)
        if projection.shape != (manifest.hidden_size, manifest.item_vectors.dim):
            raise ModelPackageError(
                f"{root / manifest.head.projection}: shape {projection.shape}, expected "
                f"({manifest.hidden_size}, {manifest.item_vectors.dim})"
            )
    package = RepresentationPackage(root=root, manifest=manifest, projection=projection)
    if not package.available_variants():
        raise ModelPackageError(f"{root}: no variant has both its graphs on disk")
    return package


def load_any_package(path: str | Path) -> ModelPackage | RepresentationPackage:
    """Load and verify a package of either kind (what its manifest's ``kind`` says)."""
    if package_kind(path) == REPRESENTATION:
        return load_representation_package(path)
    return load_package(path)
