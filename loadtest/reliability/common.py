"""What the reliability scenarios share: servers to start, requests to send, result rows."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.loadgen import Prepared
from loadtest.servers import REPO_ROOT, ServerProcess, free_port, service_argv, start_server
from loadtest.stats import Sample, percentile
from loadtest.workload import Catalogue, Mix, RequestFactory

STARTUP_TIMEOUT_S = 240.0


@dataclass
class Row:
    """One line of the report's table, plus the figures behind it."""

    scenario: str
    load: str
    held: bool
    what: str
    numbers: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """What every scenario needs to know."""

    model: Path
    quick: bool
    log_dir: Path
    seed: int = 0


def launch(
    name: str,
    cfg: RunConfig,
    *,
    env: Mapping[str, str] | None = None,
    teacher: str | None = None,
    model: Path | None = None,
    wait: bool = True,
) -> ServerProcess:
    """Start the service on a free loopback port; ``teacher`` runs it with a fake teacher
    (``loadtest.faults``). Waits for ``/readyz`` unless ``wait`` is false."""
    port = free_port()
    model_dir = model or cfg.model
    if teacher is None:
        argv = service_argv(model_dir, port)
    else:
        argv = [sys.executable, "-m", "loadtest.faults", "--teacher", teacher]
        argv += service_argv(model_dir, port)[3:]  # the same --host/--port/--model flags
    server = start_server(name, argv, port, env=dict(env or {}), log_dir=cfg.log_dir)
    if wait:
        try:
            server.wait_ready("/readyz", STARTUP_TIMEOUT_S)
        except RuntimeError:
            server.stop()
            raise
    return server


@contextlib.contextmanager
def serving(name: str, cfg: RunConfig, **kwargs: Any) -> Iterator[ServerProcess]:
    server = launch(name, cfg, **kwargs)
    try:
        yield server
    finally:
        server.stop(30)


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def scoring_requests(
    count: int,
    *,
    min_items: int,
    max_items: int,
    seed: int = 0,
    deadline_ms: int | None = None,
    rerank_share: float = 0.3,
    cache: bool | None = None,
) -> list[Prepared]:
    """``/score`` and ``/rerank`` bodies drawn from the Home Depot data (synthetic if absent).

    ``cache=False`` sends ``"cache": false`` (the score cache bypassed, every pair scored by
    the model): what load runs that cycle their requests need, else repeats are cache hits.
    """
    mix = Mix(min_items, max_items, rerank_share=rerank_share)
    factory = RequestFactory(Catalogue.load(), mix, seed)
    out = []
    for request in factory.take(count):
        body = request.body()
        if deadline_ms is not None and request.endpoint == "score":
            body["deadline_ms"] = deadline_ms
        if cache is not None:
            body["cache"] = cache
        out.append(
            Prepared(request.endpoint, request.path, json.dumps(body).encode(), len(request.texts))
        )
    return out


def latency_figures(samples: list[Sample], statuses: tuple[int, ...] = (200,)) -> dict[str, Any]:
    chosen = [s.latency_s * 1000 for s in samples if s.status in statuses]
    if not chosen:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(chosen),
        "p50_ms": round(percentile(chosen, 50), 1),
        "p99_ms": round(percentile(chosen, 99), 1),
        "max_ms": round(max(chosen), 1),
    }


def sequential_latency(url: str, requests: list[Prepared], repeat: int = 1) -> list[float]:
    """Latency (s) of each request sent alone, one after another."""
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        for _ in range(repeat):
            for prepared in requests:
                t0 = time.monotonic()
                r = client.post(
                    prepared.path,
                    content=prepared.body,
                    headers={"content-type": "application/json"},
                )
                out.append(time.monotonic() - t0)
                r.raise_for_status()
    return out


def machine() -> dict[str, Any]:
    """CPU, cores, memory and load: where the figures were measured."""
    import os
    import platform

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_gib = round(int(first.split()[1]) / 1024 / 1024, 1)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    versions = {}
    for package in ("onnxruntime", "fastapi", "uvicorn", "schemathesis"):
        with contextlib.suppress(Exception):
            from importlib import metadata

            versions[package] = metadata.version(package)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "load_average": [round(x, 2) for x in load] if load else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def git_commit() -> str:
    """The short commit of the checkout, flagged when tracked files have local changes."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" (with local changes)" if dirty else "")


def why_not(failures: list[str]) -> str:
    """What a row's numbers end with when it did not hold: the rules it broke."""
    return f"; broken: {'; '.join(failures)}" if failures else ""


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"
