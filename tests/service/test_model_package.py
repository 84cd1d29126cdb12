"""Loading and verifying a model package (service/model_package.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.model_package import (
    MANIFEST_NAME,
    ModelPackageError,
    ScoreSpec,
    load_package,
    sha256_file,
    verify_files,
)


@pytest.fixture
def package_copy(tiny_model_package: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny package that a test may damage."""
    return Path(shutil.copytree(tiny_model_package, tmp_path / "pkg"))


def _rewrite_manifest(package: Path, **changes: object) -> None:
    path = package / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_load_verified_package(tiny_model_package: Path) -> None:
    package = load_package(tiny_model_package, variant="int8")
    manifest = package.manifest
    assert manifest.format_version == 1
    assert manifest.activation == "sigmoid"
    assert manifest.truncation == "only_second"
    assert set(manifest.variants) == {"fp32", "fp16", "int8"}
    assert package.tokenizer_path == tiny_model_package / "tokenizer.json"
    assert package.variant_path("int8") == tiny_model_package / "model.int8.onnx"
    assert set(package.available_variants()) == {"fp32", "fp16", "int8"}
    for rel, digest in manifest.files.items():
        assert sha256_file(tiny_model_package / rel) == digest


def test_select_variant_by_provider(tiny_model_package: Path) -> None:
    package = load_package(tiny_model_package)
    assert package.manifest.variants["int8"].batch_invariant is True
    assert package.select_variant(["CPUExecutionProvider"]) == "int8"
    assert package.select_variant(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "fp16"


def test_cpu_prefers_fp32_over_an_int8_that_is_not_batch_invariant(package_copy: Path) -> None:
    data = json.loads((package_copy / MANIFEST_NAME).read_text())
    data["variants"]["int8"]["batch_invariant"] = False
    (package_copy / MANIFEST_NAME).write_text(json.dumps(data))
    package = load_package(package_copy)
    assert not package.is_batch_invariant("int8")
    assert package.select_variant(["CPUExecutionProvider"]) == "fp32"
    # ... but still runs it when it is the only CPU graph on disk.
    (package_copy / "model.fp32.onnx").unlink()
    assert load_package(package_copy).select_variant(["CPUExecutionProvider"]) == "int8"


def test_batch_invariance_of_older_manifests(package_copy: Path) -> None:
    # Without the export's measurement: a dynamic INT8 graph is assumed not invariant.
    data = json.loads((package_copy / MANIFEST_NAME).read_text())
    for spec in data["variants"].values():
        spec.pop("batch_invariant", None)
    data["variants"]["int8"]["build"]["mode"] = "dynamic"
    (package_copy / MANIFEST_NAME).write_text(json.dumps(data))
    package = load_package(package_copy)
    assert package.is_batch_invariant("fp32") and not package.is_batch_invariant("int8")
    assert package.select_variant(["CPUExecutionProvider"]) == "fp32"


def test_corrupt_graph_is_refused_naming_the_file(package_copy: Path) -> None:
    with open(package_copy / "model.int8.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelPackageError, match=r"model\.int8\.onnx: SHA-256 mismatch"):
        load_package(package_copy, variant="int8")


def test_corrupt_unused_graph_is_refused_too(package_copy: Path) -> None:
    # A file that is present must match, even if this process would not run it.
    (package_copy / "model.fp16.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelPackageError, match=r"model\.fp16\.onnx: SHA-256 mismatch"):
        load_package(package_copy, variant="int8")


def test_corrupt_tokenizer_is_refused(package_copy: Path) -> None:
    path = package_copy / "tokenizer.json"
    path.write_text(path.read_text().replace("[CLS]", "[CLX]", 1))
    with pytest.raises(ModelPackageError, match=r"tokenizer\.json: SHA-256 mismatch"):
        load_package(package_copy)


def test_missing_tokenizer_is_refused(package_copy: Path) -> None:
    (package_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelPackageError, match=r"tokenizer\.json: file listed in the manifest"):
        load_package(package_copy)


def test_missing_ignored_graph_is_allowed_unless_requested(package_copy: Path) -> None:
    # FP32/FP16 graphs are git-ignored: a fresh clone has only the INT8 one.
    (package_copy / "model.fp32.onnx").unlink()
    (package_copy / "model.fp16.onnx").unlink()
    package = load_package(package_copy)
    assert package.available_variants() == ["int8"]
    assert package.select_variant(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "int8"
    with pytest.raises(ModelPackageError, match=r"model\.fp32\.onnx: graph of variant 'fp32'"):
        package.variant_path("fp32")
    with pytest.raises(ModelPackageError, match=r"model\.fp32\.onnx: file listed in the manifest"):
        load_package(package_copy, variant="fp32")


def test_missing_manifest_and_dir(package_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match="does not exist"):
        load_package(tmp_path / "nowhere")
    (package_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ModelPackageError, match=r"manifest\.json: manifest is missing"):
        load_package(package_copy)


def test_invalid_manifest_is_refused(package_copy: Path) -> None:
    _rewrite_manifest(package_copy, activation="softmax")
    with pytest.raises(ModelPackageError, match="invalid manifest"):
        load_package(package_copy)


def test_unknown_variant(package_copy: Path) -> None:
    with pytest.raises(ModelPackageError, match="no variant 'bf16'"):
        load_package(package_copy, variant="bf16")


def test_paths_may_not_leave_the_package(package_copy: Path) -> None:
    data = json.loads((package_copy / MANIFEST_NAME).read_text())
    data["files"]["../outside.txt"] = "0" * 64
    (package_copy / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match="unsafe file path"):
        load_package(package_copy)


def test_verify_files_generic(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.bin").write_bytes(b"abc")
    files = {"sub/weights.bin": sha256_file(tmp_path / "sub" / "weights.bin")}
    assert verify_files(tmp_path, files) == ["sub/weights.bin"]
    assert verify_files(tmp_path, {**files, "gone.bin": "0" * 64}, optional=["gone.bin"]) == [
        "sub/weights.bin"
    ]
    with pytest.raises(ModelPackageError, match=r"gone\.bin: file listed"):
        verify_files(tmp_path, {"gone.bin": "0" * 64})
    (tmp_path / "sub" / "weights.bin").write_bytes(b"abd")
    with pytest.raises(ModelPackageError, match=r"weights\.bin: SHA-256 mismatch"):
        verify_files(tmp_path, files)


@pytest.mark.parametrize(
    ("score", "name"),
    [
        (0.0, "irrelevant"),
        (0.2499, "irrelevant"),
        (0.25, "partial"),
        (0.7499, "partial"),
        (0.75, "exact"),
        (1.0, "exact"),
    ],
)
def test_score_classes(score: float, name: str) -> None:
    assert ScoreSpec().classify(score) == name
