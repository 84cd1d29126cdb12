"""Fixtures of the deployment tests: each overlay rendered once by kubectl's kustomize."""

from __future__ import annotations

from typing import Any

import pytest
from k8stools import OVERLAYS, render


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def rendered_overlays() -> dict[str, list[dict[str, Any]]]:
    """Every overlay's manifests, rendered once per session."""
    return {name: render(f"overlays/{name}") for name in OVERLAYS}


@pytest.fixture(scope="session")
def docs(overlay: str, rendered_overlays: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rendered_overlays[overlay]
