"""The package manifest: file checksums, export provenance, and a summary of a package."""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from relevance_core.hashing import sha256_file
from service.model_package import MANIFEST_NAME, Manifest, ScoreSpec, VariantSpec, read_manifest
from training.onnx_export import ExportError


def _versions() -> dict[str, str]:
    versions = {}
    for dist in ("optimum", "optimum-onnx", "onnxruntime", "onnx", "torch", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def build_manifest(
    package: Path,
    *,
    name: str,
    version: str,
    max_length: int,
    hf_config: Mapping[str, Any],
    variants: Mapping[str, VariantSpec],
    rejected: Mapping[str, list[dict[str, Any]]],
    extra: dict[str, Any],
) -> Manifest:
    """The manifest of the files in ``package``; ``extra["provenance"]`` gains ``export``."""
    files = package_files(package)
    provenance = export_provenance(extra, rejected)
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "backbone": hf_config.get("_name_or_path") or hf_config.get("model_type", "bert"),
        "max_length": max_length,
        "score": ScoreSpec(),
        "variants": dict(variants),
        "files": files,
        "provenance": provenance,
        **extra,
    }
    try:
        return Manifest.model_validate(fields)
    except ValidationError as exc:
        raise ExportError(f"the manifest would be invalid:\n{exc}") from exc


def summarize(package_dir: str | Path) -> str:
    """A few lines on what an export wrote: variants, sizes, parity, rejected variants."""
    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    lines = [f"{manifest.name} {manifest.version} (max_length {manifest.max_length})"]
    for variant, spec in manifest.variants.items():
        size_mb = (package_dir / spec.file).stat().st_size / 1e6
        parity = spec.parity
        if "max_abs_score_diff" in parity:
            detail = f"max|diff| vs torch {parity['max_abs_score_diff']:.2e}"
        elif "mean_kendall_tau_vs_fp32" in parity:
            detail = (
                f"pair-acc {parity['pairwise_accuracy']:.4f} (fp32 "
                f"{parity['pairwise_accuracy_fp32']:.4f}), "
                f"tau vs fp32 {parity['mean_kendall_tau_vs_fp32']:.4f}"
            )
        else:
            detail = f"parity {parity.get('status', 'n/a')}"
        if "batch_invariance_max_abs_diff" in parity:
            verdict = "batch-invariant" if spec.batch_invariant else "NOT batch-invariant"
            detail += f", {verdict} ({parity['batch_invariance_max_abs_diff']:.1e})"
        lines.append(
            f"  {variant}: {spec.file} {size_mb:.1f} MB, {spec.build.get('recipe')}, {detail}, "
            f"checked on {parity.get('provider')}"
        )
    for variant, attempts in manifest.provenance.get("export", {}).get("rejected", {}).items():
        reasons = "; ".join(f"{a['recipe']}: {a.get('reason') or a.get('error')}" for a in attempts)
        lines.append(f"  {variant}: NOT WRITTEN ({reasons})")
    return "\n".join(lines)


def package_files(package: Path, manifest_name: str = MANIFEST_NAME) -> dict[str, str]:
    """SHA-256 of every file under ``package`` except its manifest, by relative path."""
    return {
        p.relative_to(package).as_posix(): sha256_file(p)
        for p in sorted(package.rglob("*"))
        if p.is_file() and p.name != manifest_name
    }


def export_provenance(extra: dict[str, Any], rejected: Mapping[str, Any]) -> dict[str, Any]:
    """``extra["provenance"]`` (popped) with the export's time, tools, machine and rejects."""
    provenance = dict(extra.pop("provenance", {}))
    provenance["export"] = {
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tools": _versions(),
        "machine": {"platform": platform.platform(), "cpu": _cpu_model()},
        "rejected": dict(rejected),
    }
    return provenance
