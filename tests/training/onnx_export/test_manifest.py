"""The manifest: a checksum of every file, the export's provenance, refused keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from relevance_core.hashing import sha256_file
from service.model_package import VariantSpec
from training.onnx_export import ExportError
from training.onnx_export.manifest import build_manifest, summarize


def _spec() -> VariantSpec:
    return VariantSpec(
        file="model.fp32.onnx",
        precision="fp32",
        providers=["CPUExecutionProvider"],
        batch_invariant=True,
        parity={"max_abs_score_diff": 1e-6, "provider": "CPUExecutionProvider"},
        build={"recipe": "plain"},
    )


def test_manifest_checksums_every_file_and_records_the_export(tmp_path: Path) -> None:
    (tmp_path / "model.fp32.onnx").write_bytes(b"graph")
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "vocab.txt").write_text("[PAD]\n")
    (tmp_path / "manifest.json").write_text("{}")  # never listed in itself
    manifest = build_manifest(
        tmp_path,
        name="pkg",
        version="1",
        max_length=32,
        hf_config={"model_type": "bert"},
        variants={"fp32": _spec()},
        rejected={"int8": [{"recipe": "x", "reason": "y"}]},
        extra={"provenance": {"run": "r"}},
    )
    assert manifest.files == {
        "model.fp32.onnx": sha256_file(tmp_path / "model.fp32.onnx"),
        "tokenizer.json": sha256_file(tmp_path / "tokenizer.json"),
        "sub/vocab.txt": sha256_file(tmp_path / "sub" / "vocab.txt"),
    }
    export = manifest.provenance["export"]
    assert manifest.provenance["run"] == "r"
    assert export["rejected"] == {"int8": [{"recipe": "x", "reason": "y"}]}
    assert {"exported_at", "tools", "machine"} <= set(export)
    assert manifest.backbone == "bert"
    with pytest.raises(ExportError, match="manifest would be invalid"):
        build_manifest(
            tmp_path,
            name="pkg",
            version="1",
            max_length=32,
            hf_config={},
            variants={"fp32": _spec()},
            rejected={},
            extra={"colour": "blue"},
        )


def test_summary_names_variants_and_rejections(fp32_package: Path) -> None:
    text = summarize(fp32_package)
    assert text.splitlines()[0] == "minilm-homedepot 0 (max_length 64)"
    assert "fp32: model.fp32.onnx" in text and "batch-invariant" in text
