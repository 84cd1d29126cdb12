"""A small client of the admin API's model routes, for scripts (the closed loop, load tests).

Standard library only, blocking::

    admin = AdminClient("http://127.0.0.1:8000", token)
    admin.swap("candidate", "minilm-homedepot-1.3.0")   # load (or replace) and warm up
    admin.set_canary("candidate", 0.1)                   # 10% of the queries naming no model
    admin.swap("minilm-homedepot", "minilm-homedepot-1.3.0")  # promote
    admin.stop_canary(); admin.unload("candidate"); admin.wait_drained()

Each call raises :class:`AdminError` (with the service's status and error body) on a
refusal, e.g. a package that fails its checksums (422, field ``package``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote


class AdminError(RuntimeError):
    """The service refused an admin call; ``status`` and ``body`` are its answer."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body.get('error', body)}")
        self.status = status
        self.body = body


class AdminClient:
    """The ``/admin/models`` and ``/admin/canary`` routes of one service."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s  # a swap answers after the new version has warmed up

    def models(self) -> dict[str, Any]:
        """Loaded models, draining versions, the canary and the packages on disk."""
        return self._call("GET", "/admin/models")

    def swap(self, name: str, package: str) -> dict[str, Any]:
        """Serve ``name`` with ``package`` (a directory name in the models directory);
        returns once the new version serves (``replaced``: the version it replaced)."""
        return self._call("PUT", f"/admin/models/{quote(name, safe='')}", {"package": package})

    def unload(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/admin/models/{quote(name, safe='')}")

    def set_canary(self, model: str, share: float) -> dict[str, Any]:
        return self._call("PUT", "/admin/canary", {"model": model, "share": share})

    def stop_canary(self) -> dict[str, Any]:
        return self._call("DELETE", "/admin/canary")

    def wait_drained(self, timeout_s: float = 120.0, poll_s: float = 0.1) -> bool:
        """Wait until no replaced version is still draining; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.models()["draining"]:
                return True
            time.sleep(poll_s)
        return False

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                detail = json.load(exc)
            except ValueError:
                detail = {"error": exc.reason}
            raise AdminError(exc.code, detail) from None
