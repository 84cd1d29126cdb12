"""ensure-default: a verified package is kept (without importing torch); a broken one is
rebuilt from the cached students and labels, never by the teacher."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.model_package import load_package
from training import default_package, stages
from training.__main__ import main
from training.config import TrainConfig, load_config
from training.default_package import ensure_default

REPO = Path(__file__).resolve().parents[2]


def test_ensure_default_keeps_a_verified_package(
    tmp_path: Path, fp32_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(overrides={"paths": {"models_dir": str(tmp_path)}}, environ={})
    shutil.copytree(fp32_package, config.default_package_dir)
    built: list[TrainConfig] = []
    monkeypatch.setattr(default_package, "rebuild_default", lambda c: built.append(c))
    assert main(["ensure-default", "--set", f"paths.models_dir={json.dumps(str(tmp_path))}"]) == 0
    assert ensure_default(config) == config.default_package_dir and not built
    # A corrupt file fails verification: the package is rebuilt from cached inputs.
    (config.default_package_dir / "tokenizer.json").write_text("{}")
    ensure_default(config)
    assert built == [config]


def test_ensure_default_imports_no_torch_when_the_package_verifies(
    tmp_path: Path, fp32_package: Path
) -> None:
    shutil.copytree(fp32_package, tmp_path / "minilm-homedepot")
    code = (
        "import sys\n"
        "from training.__main__ import main\n"
        "rc = main(['ensure-default', '--config', 'training/configs/cpu-session.toml',"
        f" '--set', 'paths.models_dir={json.dumps(str(tmp_path))}'])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["0", "False"], out.stderr


def test_ensure_default_rebuilds_without_the_teacher(
    pipeline_copy: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = pipeline_copy
    package_dir = config.default_package_dir
    chosen = load_package(package_dir).manifest.provenance["student"]["run"]

    def no_teacher(*_: object, **__: object) -> None:
        raise AssertionError("ensure-default must not run the teacher")

    monkeypatch.setattr(stages, "LazyTeacher", no_teacher)
    monkeypatch.setattr(stages, "stage_teacher", no_teacher)
    shutil.rmtree(package_dir)
    assert ensure_default(config) == package_dir
    assert load_package(package_dir).manifest.provenance["student"]["run"] == chosen
