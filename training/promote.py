"""Roll a gated package out to a running service: ``python -m training promote``.

Two steps, through the service's admin API (``service/api/admin.py``, bearer token):

1. ``--step canary``: load the package as ``<model>-canary`` (``PUT /admin/models/...``:
   verified, loaded and warmed up by the service before it serves) and send it
   ``--canary-share`` of the requests that name no model (``PUT /admin/canary``, sticky
   per query). Compare the two versions on live traffic with the per-model metrics.
2. ``--step swap``: hot-swap ``<model>`` to the package (requests in flight finish on the
   old version), then stop the canary and unload it.

Before either step the package must verify here, carry a passing gate verdict
(``evaluation.gate``, :mod:`training.gate`), and the version the gate compared it with
must be the one serving ``<model>`` now: a verdict against another version proves
nothing about this one. The service names packages from its models directory, never
by path: the package is sent by its directory name, so the directory must be one of
that models directory (the same disk, or a volume both see).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import httpx

from service.model_package import load_package
from training.artifacts import PipelineError
from training.gate import gate_verdict

logger = logging.getLogger(__name__)

Step = Literal["canary", "swap"]


def check_promotable(package_dir: Path) -> dict[str, Any]:
    """The package's passing gate verdict; PipelineError when it has none or failed."""
    load_package(package_dir)
    verdict = gate_verdict(package_dir)
    if verdict is None:
        raise PipelineError(
            f"{package_dir} has no gate verdict; run `python -m training gate --candidate "
            f"{package_dir} --current <the package serving now>` first"
        )
    if verdict.get("verdict") != "pass":
        raise PipelineError(
            f"{package_dir} failed its gate ({', '.join(verdict.get('failed', []))}); "
            "it is not promoted"
        )
    return verdict


def _served(described: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((m for m in described.get("models", []) if m["name"] == name), None)


async def _call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    if response.status_code >= 400:
        raise PipelineError(f"{method} {path}: {response.status_code} {response.text[:500]}")
    return response.json()


async def promote(
    client: httpx.AsyncClient,
    package_dir: Path,
    model: str,
    step: Step,
    *,
    canary_share: float = 0.1,
    canary_name: str | None = None,
) -> dict[str, Any]:
    """One rollout step of ``package_dir`` for the serving name ``model``; returns what the
    service answered. ``client`` carries the base URL and the admin token."""
    package_dir = Path(package_dir)
    verdict = check_promotable(package_dir)
    canary_name = canary_name or f"{model}-canary"
    described = await _call(client, "GET", "/admin/models")
    serving = _served(described, model)
    if serving is None:
        raise PipelineError(f"the service serves no model {model!r}: {described.get('models')}")
    gated_against = verdict["current"]["version"]
    if serving["version"] != gated_against:
        raise PipelineError(
            f"{model} serves version {serving['version']}, the gate compared the candidate "
            f"with {gated_against}: gate it against the version serving now"
        )
    package = package_dir.name
    if step == "canary":
        loaded = await _call(
            client, "PUT", f"/admin/models/{canary_name}", json={"package": package}
        )
        canary = await _call(
            client, "PUT", "/admin/canary", json={"model": canary_name, "share": canary_share}
        )
        logger.info(
            "%s %s takes %.0f%% of %s's traffic as %s",
            package,
            loaded["version"],
            100 * canary_share,
            model,
            canary_name,
        )
        return {"step": step, "loaded": loaded, "canary": canary["canary"]}
    swapped = await _call(client, "PUT", f"/admin/models/{model}", json={"package": package})
    result: dict[str, Any] = {"step": step, "swapped": swapped, "canary_removed": None}
    canary = described.get("canary") or {}
    if canary.get("model") == canary_name:
        await _call(client, "DELETE", "/admin/canary")
    if _served(described, canary_name) is not None:
        result["canary_removed"] = await _call(client, "DELETE", f"/admin/models/{canary_name}")
    logger.info("%s now serves %s %s", model, package, swapped["version"])
    return result


def admin_client(url: str, token: str, timeout_s: float = 300.0) -> httpx.AsyncClient:
    """A client of the service's admin API (a swap answers once the new version serves)."""
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
    )
