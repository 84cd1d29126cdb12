"""The representation package's manifest: its pydantic models, building and verifying it.

A representation package (two ONNX graphs, query and item, plus a small numpy head) has a
manifest of its own kind (``kind: "representation"``): which student architecture, the
head's pooling/projection/similarity/scale/bias, the stored item vectors (dim, dtype,
bytes per item, a 50k-item catalogue's memory) and every variant's files and gates.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relevance_core.hashing import sha256_file
from service.model_package import ScoreSpec
from training.onnx_export import ExportError
from training.onnx_export.manifest import export_provenance, package_files
from training.representation import BI_ENCODER, HEAD_FILE
from training.representation.model import INPUT_NAMES, PROJECTION_FILE, HeadSpec
from training.representation.scoring import ITEM, QUERY

SIDES = (QUERY, ITEM)
MANIFEST_NAME = "manifest.json"
OUTPUT_NAME = "last_hidden_state"
# How the package stores an item's vectors; float16 halves float32 at a score change
# well under the gates (measured by the export: item_vectors.parity).
STORAGE_DTYPES = ("float32", "float16")
DEFAULT_STORAGE = "float16"
# The catalogue size whose memory the manifest states.
CATALOGUE_ITEMS = 50_000


def graph_file(side: str, variant: str) -> str:
    return f"{side}.{variant}.onnx"


# --------------------------------------------------------------------------- manifest


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
    variants: dict[str, RepresentationVariant]
    files: dict[str, str]
    evaluation: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)


def read_representation_manifest(package_dir: str | Path) -> RepresentationManifest:
    path = Path(package_dir) / MANIFEST_NAME
    return RepresentationManifest.model_validate_json(path.read_text())


def _manifest(
    package: Path,
    *,
    spec: HeadSpec,
    name: str,
    version: str,
    backbone: str,
    variants: Mapping[str, RepresentationVariant],
    rejected: Mapping[str, Any],
    vectors: dict[str, Any],
    extra: dict[str, Any],
) -> RepresentationManifest:
    files = package_files(package, MANIFEST_NAME)
    provenance = export_provenance(extra, rejected)
    bi = spec.architecture == BI_ENCODER
    head = HeadManifest(
        pooling="mean" if bi else "none",
        projection=PROJECTION_FILE if spec.projection else None,
        similarity=(
            "dot product of the two L2-normalised vectors (cosine)"
            if bi
            else "mean over the query's tokens of the max dot product with the item's "
            "tokens (MaxSim; padding excluded on both sides)"
        ),
        scale=spec.scale,
        bias=spec.bias,
    )
    try:
        return RepresentationManifest(
            architecture=spec.architecture,  # type: ignore[arg-type]
            name=name,
            version=version,
            backbone=backbone,
            hidden_size=spec.hidden_size,
            query=SideSpec(max_length=spec.query_max_length),
            item=SideSpec(max_length=spec.item_max_length),
            head=head,
            item_vectors=ItemVectors(**vectors),
            variants=dict(variants),
            files=files,
            provenance=provenance,
            **extra,
        )
    except ValidationError as exc:
        raise ExportError(f"the manifest would be invalid:\n{exc}") from exc


def verify_representation_package(package_dir: str | Path) -> RepresentationManifest:
    """The manifest, after checking every listed file that is present against its SHA-256."""
    package_dir = Path(package_dir)
    manifest = read_representation_manifest(package_dir)
    for rel, digest in manifest.files.items():
        path = package_dir / rel
        if path.is_file() and sha256_file(path) != digest:
            raise ExportError(f"{path}: checksum mismatch")
    return manifest
