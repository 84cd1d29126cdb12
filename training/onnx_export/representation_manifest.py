"""The representation package's manifest: building and verifying it (its pydantic models are
:mod:`service.representation_package`'s, the reader's, re-exported here).

A representation package (two ONNX graphs, query and item, plus a small numpy head) has a
manifest of its own kind (``kind: "representation"``): which student architecture, the
head's pooling/projection/similarity/scale/bias, the stored item vectors (dim, dtype,
bytes per item, a 50k-item catalogue's memory) and every variant's files and gates.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from relevance_core.hashing import sha256_file
from service.representation_package import (
    HeadManifest,
    ItemVectors,
    RepresentationManifest,
    RepresentationVariant,
    SideGraph,
    SideSpec,
)
from training.onnx_export import ExportError
from training.onnx_export.manifest import export_provenance, package_files
from training.representation import BI_ENCODER
from training.representation.model import PROJECTION_FILE, HeadSpec
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
# The manifest's models are the service's (it reads what the export writes): re-exported.
__all__ = [
    "HeadManifest",
    "ItemVectors",
    "RepresentationManifest",
    "RepresentationVariant",
    "SideGraph",
    "SideSpec",
]


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
