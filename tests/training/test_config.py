"""TrainConfig: defaults, files, environment, validation, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from training.config import DATA_ENV_VAR, REPO_ROOT, TrainConfig, load_config


def test_defaults_point_at_the_shared_data_and_repo_dirs() -> None:
    config = load_config(environ={})
    assert config.path("data") == (REPO_ROOT / "../shared/data/homedepot/train.csv").resolve()
    assert config.path("labels_dir") == REPO_ROOT / "labels"
    assert config.teacher_package_dir == REPO_ROOT / "models" / "teacher-qwen05b-l14"
    assert config.default_package_dir == REPO_ROOT / "models" / "minilm-homedepot"
    assert config.loss.pointwise_weight == 1.0 and config.loss.margin_weight == 1.0


def test_toml_file_env_and_overrides_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[paths]\ndata = "/from/file.csv"\n[student]\nepochs = 0.5\n'
        "[teacher]\nlora_layers = 2\ntarget_modules = ['q_proj']\n"
    )
    config = load_config(path, environ={})
    assert str(config.path("data")) == "/from/file.csv"
    assert config.student.epochs == 0.5
    assert config.teacher.lora_layers == 2 and config.teacher.target_modules == ("q_proj",)
    config = load_config(path, environ={DATA_ENV_VAR: "/from/env.csv"})
    assert str(config.path("data")) == "/from/env.csv"
    config = load_config(path, {"paths": {"data": "/flag.csv"}}, environ={DATA_ENV_VAR: "/env.csv"})
    assert str(config.path("data")) == "/flag.csv"


def test_saved_json_round_trips(tmp_path: Path) -> None:
    config = load_config(overrides={"curve": {"augment_multiples": [2.0, 0.5]}}, environ={})
    saved = config.save(tmp_path / "run" / "train_config.json")
    again = load_config(saved, environ={})
    assert again == config
    assert again.curve.augment_multiples == (0.5, 2.0)
    assert json.loads(saved.read_text())["teacher"]["lora_layers"] == config.teacher.lora_layers


def test_fingerprint_follows_its_sections() -> None:
    base = load_config(environ={})
    changed = load_config(overrides={"student": {"learning_rate": 1e-4}}, environ={})
    assert base.fingerprint("student") != changed.fingerprint("student")
    assert base.fingerprint("teacher", "augment") == changed.fingerprint("teacher", "augment")
    assert base.fingerprint("student", extra=1) != base.fingerprint("student", extra=2)


@pytest.mark.parametrize(
    "overrides",
    [
        {"student": {"no_such_knob": 1}},
        {"split": {"train": 0.9, "validation": 0.1, "test": 0.1}},
        {"curve": {"augment_multiples": [0.0]}},
        {"student": {"batch_size": 0}},
    ],
)
def test_invalid_values_are_rejected(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        load_config(overrides=overrides, environ={})


def test_unknown_file_type_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("a: 1")
    with pytest.raises(ValueError, match=r"\.json or \.toml"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.json")


def test_config_is_immutable() -> None:
    config = TrainConfig()
    with pytest.raises(ValidationError):
        config.student = config.student  # type: ignore[misc]


def test_loss_target_knobs_at_their_old_behaviour_keep_old_fingerprints() -> None:
    base = load_config(environ={})
    neutral = load_config(
        overrides={"loss": {"human_teacher_weight": 0.0, "margin_scale": "per_source"}},
        environ={},
    )
    assert base.fingerprint("loss") == neutral.fingerprint("loss")
    for loss in ({"human_teacher_weight": 1.0}, {"margin_scale": "teacher"}):
        changed = load_config(overrides={"loss": loss}, environ={})
        assert changed.fingerprint("loss") != base.fingerprint("loss")
    with pytest.raises(ValidationError):
        load_config(overrides={"loss": {"human_teacher_weight": 1.5}}, environ={})
    with pytest.raises(ValidationError):
        load_config(overrides={"loss": {"margin_scale": "logits"}}, environ={})


@pytest.mark.parametrize("layers", [[[3, 1]], [[]], [[1, 1]], [[-1, 2]]])
def test_small_student_layers_must_be_distinct_and_increasing(layers: list) -> None:
    with pytest.raises(ValidationError, match=r"small\.layers"):
        load_config(overrides={"small": {"layers": layers}}, environ={})


def test_full_teacher_recipe_distils_on_the_teachers_scale() -> None:
    from training.config import REPO_ROOT

    config = load_config(REPO_ROOT / "training/configs/cpu-full-teacher.toml", environ={})
    assert config.loss.human_teacher_weight == 1.0 and config.loss.margin_scale == "teacher"
    assert "train" in config.label.splits and not config.label.eval_queries
    assert config.curve.end_seeds
    assert config.small.layers and all(len(layers) <= 3 for layers in config.small.layers)
    # The committed default package's recipe keeps the old targets.
    session = load_config(REPO_ROOT / "training/configs/cpu-session.toml", environ={})
    assert session.loss == load_config(environ={}).loss
    assert session.loss.human_teacher_weight == 0.0 and session.loss.margin_scale == "per_source"


def test_how_a_student_run_goes_is_not_its_identity() -> None:
    base = load_config(environ={})
    runtimes = (
        {"checkpoint_minutes": 1.0},
        {"precision": "fp32"},
        {"precision": "bf16"},
        {"threads": 7},
    )
    for runtime in runtimes:
        changed = load_config(overrides={"student": runtime}, environ={})
        assert changed.fingerprint("student") == base.fingerprint("student")
    # What it learns from still is.
    changed = load_config(overrides={"student": {"learning_rate": 3e-5}}, environ={})
    assert changed.fingerprint("student") != base.fingerprint("student")


def test_a_removed_knob_still_loads_at_its_old_value_and_keeps_identities() -> None:
    """Term matching was removed: stored configs (results/, default-choice.json) hold
    ``student.term_matching: false`` and must load and hash as before; true is refused."""
    config = load_config(environ={})
    stored = config.to_dict()
    stored["student"]["term_matching"] = False
    stored["curve"]["term_matching_ablation"] = False
    assert TrainConfig.model_validate(stored) == config
    # The identity of every run trained before the removal had the knob at False.
    import hashlib

    data = config.to_dict()
    data["student"]["term_matching"] = False
    for key in ("checkpoint_minutes", "precision", "threads"):
        data["student"].pop(key)
    if data["student"].get("layers") is None:
        data["student"].pop("layers")
    blob = json.dumps([{"student": data["student"]}, None], sort_keys=True, default=str)
    assert config.fingerprint("student") == hashlib.sha256(blob.encode()).hexdigest()[:12]
    stored["student"]["term_matching"] = True
    with pytest.raises(ValidationError, match="term matching was removed"):
        TrainConfig.model_validate(stored)
