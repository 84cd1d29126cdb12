"""Security: non-root image, bounded dependencies, no path-taking endpoint, admin off by
default and token-gated, size limits enforced before tokenization."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from reliability_support import serving

from loadtest.reliability.security import (
    Check,
    admin_checks,
    file_access_sites,
    final_stage_user,
    is_root,
    limit_checks,
    static_checks,
)

TOKEN = "s3cret-token"


def _failed(checks: list[Check]) -> list[str]:
    return [f"{c.name}: {c.detail}" for c in checks if not c.ok]


def test_static_checks_hold(reliability_app: Callable[..., FastAPI]) -> None:
    default = reliability_app().openapi()
    admin = reliability_app(admin_token=TOKEN).openapi()
    checks = static_checks(default, admin)
    assert not _failed(checks), _failed(checks)
    assert len(checks) >= 8


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM a AS b\nUSER app\nFROM c\nRUN x \\\n  y\n")
    assert final_stage_user(dockerfile) is None and is_root(None)  # a new stage is root
    assert is_root("0:0") and is_root("app:root") and not is_root("relevance:relevance")
    # The scan finds file access; the HTTP layer has none.
    sites = file_access_sites()
    assert any(s.startswith("service/shadow.py") for s in sites)
    assert not any(s.startswith("service/api/") for s in sites)


def test_admin_and_limits_on_a_running_app(reliability_app: Callable[..., FastAPI]) -> None:
    async def body() -> list[Check]:
        async with (
            serving(reliability_app()) as default,
            serving(reliability_app(admin_token=TOKEN)) as with_token,
        ):
            return [*await admin_checks(default, with_token, TOKEN), *await limit_checks(default)]

    checks = asyncio.run(body())
    assert not _failed(checks), _failed(checks)
