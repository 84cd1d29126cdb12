"""Settings come from RELEVANCE_* variables; the CLI flags win over them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import parse_settings
from service.settings import DEFAULT_MODEL_DIR, Settings


def test_defaults_and_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().model_dir == DEFAULT_MODEL_DIR and Settings().provider == "cpu"
    monkeypatch.setenv("RELEVANCE_MAX_BATCH_SIZE", "17")
    monkeypatch.setenv("RELEVANCE_PROVIDER", "cuda")
    monkeypatch.setenv("RELEVANCE_TEACHER_DIR", "/teacher")
    settings = Settings()
    assert settings.max_batch_size == 17 and settings.provider == "cuda"
    assert settings.teacher_dir == Path("/teacher")
    # set but empty (`make serve TEACHER_DIR=`): no teacher, not the current directory
    for empty in ("", "  "):
        monkeypatch.setenv("RELEVANCE_TEACHER_DIR", empty)
        assert Settings().teacher_dir is None


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELEVANCE_PROVIDER", "tpu")
    with pytest.raises(ValidationError, match="provider"):
        Settings()
    monkeypatch.delenv("RELEVANCE_PROVIDER")
    with pytest.raises(ValidationError, match="default_deadline_ms"):
        Settings(default_deadline_ms=10, max_deadline_ms=5)


def test_cli_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELEVANCE_PORT", "9000")
    monkeypatch.setenv("RELEVANCE_MODEL_DIR", "/env/model")
    monkeypatch.setenv("RELEVANCE_HOST", "0.0.0.0")
    settings = parse_settings(["--port", "8123", "--model", "/cli/model"])
    assert settings.port == 8123 and settings.model_dir == Path("/cli/model")
    assert settings.host == "0.0.0.0"  # no flag given: the environment stays


def test_models_and_aliases_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELEVANCE_MODELS", "minilm-homedepot, candidate=minilm-homedepot-1.3.0")
    monkeypatch.setenv("RELEVANCE_MODEL_ALIASES", '{"rerank-english-v3.0": "minilm-homedepot"}')
    monkeypatch.setenv("RELEVANCE_CANARY_MODEL", "candidate")
    monkeypatch.setenv("RELEVANCE_CANARY_SHARE", "0.1")
    settings = Settings()
    assert settings.models == {
        "minilm-homedepot": "minilm-homedepot",
        "candidate": "minilm-homedepot-1.3.0",
    }
    assert settings.model_aliases == {"rerank-english-v3.0": "minilm-homedepot"}
    assert (settings.canary_model, settings.canary_share) == ("candidate", 0.1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"models": {"a": "../elsewhere"}}, "not a name"),
        ({"models": "a=pkg/sub"}, "not a name"),
        ({"models": {"a": "a"}, "default_model": "b"}, "default_model"),
        ({"models": {"a": "a", "b": "b"}, "canary_model": "a"}, "must not be the default"),
        ({"canary_model": "b"}, "canary_model needs models"),
        ({"models": {"a": "a", "b": "b"}, "canary_model": "b", "canary_share": 1.5}, "share"),
    ],
)
def test_model_settings_are_checked(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)  # type: ignore[arg-type]
