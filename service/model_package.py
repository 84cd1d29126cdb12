"""Self-describing model package: manifest, graphs, tokenizer, checksums.

A package directory (``models/<name>/``) holds ``manifest.json``, the tokenizer files
and one ONNX graph per variant (``model.fp32.onnx``, ``model.fp16.onnx``,
``model.int8.onnx``). Everything the service needs to know about the model (max
length, truncation, activation, score semantics, which variant suits which execution
provider) comes from the manifest, never from service settings.

Only the INT8 graph is committed; FP32 and FP16 are git-ignored and rebuilt by the
export, so a variant graph may be absent. A file that is present must match its
SHA-256, and the files every variant needs (tokenizer, config) must be present.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# Re-exported (the export writes package checksums through this module): one SHA-256 helper.
from relevance_core.hashing import sha256_file as sha256_file

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
VARIANT_NAMES = ("fp32", "fp16", "int8")
VariantName = Literal["fp32", "fp16", "int8"]


class ModelPackageError(RuntimeError):
    """A package is missing, malformed, or a file in it fails its checksum."""


def _resolve(root: Path, rel: str) -> Path:
    """Join a manifest path to the package root, refusing paths that leave it."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise ModelPackageError(f"{root}: manifest names an unsafe file path {rel!r}")
    return root.joinpath(*pure.parts)


def verify_files(
    root: str | Path, files: Mapping[str, str], *, optional: Iterable[str] = ()
) -> list[str]:
    """Check that each ``files`` entry (relative path -> sha256) exists under ``root`` and matches.

    Paths listed in ``optional`` may be absent (a git-ignored graph); when present they
    are still verified. Returns the relative paths that were verified. Raises
    :class:`ModelPackageError` naming the first missing or corrupt file. Generic on
    purpose: the teacher package uses it too.
    """
    root = Path(root)
    optional_set = set(optional)
    verified = []
    for rel, expected in files.items():
        path = _resolve(root, rel)
        if not path.is_file():
            if rel in optional_set:
                continue
            raise ModelPackageError(f"{path}: file listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected.lower():
            raise ModelPackageError(
                f"{path}: SHA-256 mismatch (manifest {expected}, file {actual}); "
                "the file is corrupt or was replaced without re-exporting"
            )
        verified.append(rel)
    return verified


class ScoreClass(BaseModel):
    """A relevance class: scores ``>= min_score`` (up to the next class) belong to it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    min_score: float


class ScoreSpec(BaseModel):
    """What a score means: range, how it was trained, how it maps to classes."""

    model_config = ConfigDict(extra="forbid")

    range: tuple[float, float] = (0.0, 1.0)
    target: str = "expected relevance (grade - 1) / 2 on the 1..3 human grade scale"
    classes: list[ScoreClass] = Field(
        default_factory=lambda: [
            ScoreClass(name="irrelevant", min_score=0.0),
            ScoreClass(name="partial", min_score=0.25),
            ScoreClass(name="exact", min_score=0.75),
        ]
    )

    @field_validator("classes")
    @classmethod
    def _ascending(cls, classes: list[ScoreClass]) -> list[ScoreClass]:
        if not classes:
            raise ValueError("at least one score class is needed")
        bounds = [c.min_score for c in classes]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"class min_score values must strictly increase, got {bounds}")
        return classes

    def classify(self, score: float) -> str:
        """Name of the class a score falls into (the lowest class below its first bound)."""
        name = self.classes[0].name
        for c in self.classes:
            if score >= c.min_score:
                name = c.name
        return name


class ScoreCalibration(BaseModel):
    """Platt scaling applied to the graph's logit before the activation (``scale > 0``).

    Fit on validation (``training.score_calibration``) when the student's raw scores do
    not mean what ``score.classes`` say (random catalogue items scored "partial"); being
    strictly increasing, it changes no ranking. ``fit`` records how it was fit.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["platt"] = "platt"
    scale: float = Field(gt=0)
    bias: float
    fit: dict[str, Any] = Field(default_factory=dict)


class VariantSpec(BaseModel):
    """One ONNX graph of the model and where it should run."""

    model_config = ConfigDict(extra="forbid")

    file: str
    precision: VariantName
    # Execution providers this variant suits, best first.
    providers: list[str]
    # Whether a pair's score is the same (to 1e-5) whatever else shares its batch, as the
    # export measured it (parity.batch_invariance_max_abs_diff); None: not measured.
    batch_invariant: bool | None = None
    # Parity numbers measured by the export (see training/export.py); free-form by design.
    parity: dict[str, Any] = Field(default_factory=dict)
    # How the graph was produced (optimisation level, quantization config, ...).
    build: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    """The content of ``manifest.json`` (format version 1)."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    name: str
    version: str
    backbone: str
    max_length: int = Field(gt=0)
    truncation: Literal["only_second"] = "only_second"
    padding: Literal["longest"] = "longest"
    # relevance_core.activation.ACTIVATIONS; the service applies it to the graph's logits.
    activation: Literal["sigmoid", "identity"] = "sigmoid"
    # Applied to the logit before the activation (relevance_core.activation.activate);
    # None: the activation alone.
    calibration: ScoreCalibration | None = None
    inputs: list[str] = Field(
        default_factory=lambda: ["input_ids", "attention_mask", "token_type_ids"]
    )
    output: str = "logits"
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    tokenizer: str = "tokenizer.json"
    variants: dict[VariantName, VariantSpec]
    files: dict[str, str]
    evaluation: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("variants")
    @classmethod
    def _names_match(cls, variants: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        for name, spec in variants.items():
            if spec.precision != name:
                raise ValueError(f"variant {name!r} declares precision {spec.precision!r}")
        return variants

    @model_validator(mode="after")
    def _files_checksummed(self) -> Manifest:
        named = [self.tokenizer, *(v.file for v in self.variants.values())]
        missing = [f for f in named if f not in self.files]
        if missing:
            raise ValueError(f"files without a checksum in 'files': {missing}")
        return self

    def graph_files(self) -> set[str]:
        """Relative paths of all variant graphs."""
        return {v.file for v in self.variants.values()}


@dataclass(frozen=True)
class ModelPackage:
    """A loaded, verified package. Graph paths come from :meth:`variant_path`."""

    root: Path
    manifest: Manifest

    @property
    def tokenizer_path(self) -> Path:
        return _resolve(self.root, self.manifest.tokenizer)

    def available_variants(self) -> list[str]:
        """Variants whose graph file is on disk (FP32/FP16 are absent from a fresh clone)."""
        return [
            name
            for name, spec in self.manifest.variants.items()
            if _resolve(self.root, spec.file).is_file()
        ]

    def variant_path(self, name: str) -> Path:
        """Path of a variant's graph, checked to be listed and present (checksummed at load)."""
        spec = self.manifest.variants.get(name)  # type: ignore[call-overload]
        if spec is None:
            raise ModelPackageError(
                f"{self.root / MANIFEST_NAME}: no variant {name!r} "
                f"(has {sorted(self.manifest.variants)})"
            )
        path = _resolve(self.root, spec.file)
        if not path.is_file():
            raise ModelPackageError(
                f"{path}: graph of variant {name!r} is missing; FP32/FP16 graphs are not "
                "committed, rebuild them with `python -m training export`"
            )
        return path

    def is_batch_invariant(self, name: str) -> bool:
        """Whether the variant scores a pair independently of the rest of its batch.

        The export's measurement when the manifest has one; for older manifests, every
        graph but a dynamically quantized INT8 one (one activation scale per batch tensor).
        """
        spec = self.manifest.variants[name]  # type: ignore[index]
        if spec.batch_invariant is not None:
            return spec.batch_invariant
        return not (spec.precision == "int8" and spec.build.get("mode", "dynamic") == "dynamic")

    def select_variant(self, providers: Sequence[str]) -> str:
        """Best present variant for the available execution providers.

        FP16 when CUDA is available; on CPU a batch-invariant INT8, else FP32, and an INT8
        that is not batch-invariant only when it is the only graph on disk.
        """
        present = set(self.available_variants())
        order = ["fp16", "fp32", "int8"] if "CUDAExecutionProvider" in providers else []
        if "int8" in present and self.is_batch_invariant("int8"):
            order += ["int8", "fp32"]
        else:
            order += ["fp32", "int8"]
        for name in order:
            if name in present and any(
                p in providers
                for p in self.manifest.variants[name].providers  # type: ignore[index]
            ):
                return name
        raise ModelPackageError(
            f"{self.root}: no variant on disk runs on {list(providers)} "
            f"(present: {sorted(present)})"
        )


def read_manifest(path: str | Path) -> Manifest:
    """Parse and validate ``manifest.json`` from a package directory."""
    manifest_path = Path(path) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelPackageError(f"{manifest_path}: manifest is missing")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelPackageError(f"{manifest_path}: not valid JSON ({exc})") from exc
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ModelPackageError(f"{manifest_path}: invalid manifest:\n{exc}") from exc


def write_manifest(path: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` into a package directory (stable key order, trailing newline)."""
    manifest_path = Path(path) / MANIFEST_NAME
    manifest_path.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest_path


def load_package(path: str | Path, *, variant: str | None = None) -> ModelPackage:
    """Load a package and verify every file in it against the manifest's SHA-256.

    Non-graph files (tokenizer, config) must all be present. Variant graphs may be
    absent (they are git-ignored), except ``variant`` when given. Raises
    :class:`ModelPackageError` naming the file that is missing or corrupt.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelPackageError(f"{root}: model package directory does not exist")
    manifest = read_manifest(root)
    optional = manifest.graph_files()
    if variant is not None:
        spec = manifest.variants.get(variant)  # type: ignore[call-overload]
        if spec is None:
            raise ModelPackageError(
                f"{root / MANIFEST_NAME}: no variant {variant!r} (has {sorted(manifest.variants)})"
            )
        optional = optional - {spec.file}
    verify_files(root, manifest.files, optional=optional)
    package = ModelPackage(root=root, manifest=manifest)
    if not package.available_variants():
        raise ModelPackageError(f"{root}: no variant graph is on disk")
    return package
