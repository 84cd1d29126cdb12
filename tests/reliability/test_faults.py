"""Faults of the service's own parts: the shadow teacher hangs or raises; the model
package is corrupt or missing. ``/score`` must not notice the first; the second must stop
the service from starting, with an error that names the file.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from reliability_support import serving

from loadtest.faults import FakeTeacher
from loadtest.servers import REPO_ROOT, free_port, service_argv
from loadtest.stats import percentile

QUERY = "cordless drill"
REQUESTS = [[f"DEWALT 20V drill kit {i}-{j}" for j in range(6)] for i in range(10)]


async def _score_all(app: FastAPI) -> tuple[list[list[float]], list[float], dict[str, int]]:
    """Scores and latencies of REQUESTS, and what /shadow/score answers meanwhile."""
    scores, latencies = [], []
    async with serving(app) as client:
        await app.state.shadow.wait_loaded(10)
        for texts in REQUESTS:
            t0 = time.monotonic()
            r = await client.post("/score", json={"query": QUERY, "items": texts})
            latencies.append(time.monotonic() - t0)
            assert r.status_code == 200, r.text
            scores.append([s["score"] for s in r.json()["scores"]])
        t0 = time.monotonic()
        shadow = await client.post("/shadow/score", json={"query": QUERY, "items": ["a", "b"]})
        shadow_s = time.monotonic() - t0
    return scores, latencies, {"status": shadow.status_code, "ms": int(shadow_s * 1000)}


@pytest.mark.parametrize("mode", ["hang", "raise"])
def test_teacher_fault_leaves_score_unchanged(
    reliability_app: Callable[..., FastAPI], mode: str
) -> None:
    teacher = FakeTeacher(mode)

    async def body() -> None:
        baseline, base_latency, no_teacher = await _score_all(reliability_app())
        app = reliability_app(
            teacher_loader=lambda: teacher,
            shadow_mirror_rate=1.0,
            shadow_queue_size=2,
            shadow_timeout_s=0.3,
        )
        try:
            scores, latency, shadow = await _score_all(app)
        finally:
            teacher.release()  # let the hung threads end
        assert scores == baseline  # bit for bit
        assert teacher.calls >= 1  # the mirror did reach the faulty teacher
        # Latency unchanged, up to the noise of a shared machine.
        assert percentile(latency, 50) <= 2 * percentile(base_latency, 50) + 0.05
        assert no_teacher["status"] == 503
        # The shadow endpoint itself answers at once: 504 after its timeout, or 503.
        assert shadow["status"] == (504 if mode == "hang" else 503), shadow
        assert shadow["ms"] < 300 + 1000

    asyncio.run(body())


def _corrupt(package: Path, how: str, tmp: Path) -> tuple[Path, str]:
    """A damaged copy of the package and the name the error must mention."""
    if how == "missing directory":
        return tmp / "no-such-package", "no-such-package"
    copy = tmp / "package"
    shutil.copytree(package, copy)
    if how == "graph bytes flipped":
        graph = copy / "model.fp32.onnx"
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
        return copy, "model.fp32.onnx"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["graph bytes flipped", "missing directory"])
def test_corrupt_package_refuses_to_start(
    tiny_model_package: Path, tmp_path: Path, how: str
) -> None:
    model_dir, culprit = _corrupt(tiny_model_package, how, tmp_path)
    port = free_port()
    started = time.monotonic()
    proc = subprocess.run(
        service_argv(model_dir, port, sys.executable),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    elapsed = time.monotonic() - started
    # uvicorn's exit status for a failed startup; the server never listened.
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "ERROR service" in line]
    assert errors and culprit in errors[0], proc.stderr[-2000:]
    assert "Uvicorn running" not in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert elapsed < 60
