"""Scenario (c), faults of the service's own parts.

* The teacher shadow hangs, raises, or is absent (its directory missing), with every
  ``/score`` request mirrored to it: ``/score`` results must be identical to a server
  without a teacher, at the same latency.
* The model package is corrupt or missing: the service must exit with an error that names
  the file, and never answer on its port.
* SIGTERM in the middle of a load: every request the server accepted is answered before it
  exits; what was refused is counted.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from loadtest.loadgen import Prepared, no_answer_kind
from loadtest.reliability.common import (
    Row,
    RunConfig,
    get_json,
    latency_figures,
    launch,
    metric_sum,
    metrics_text,
    scoring_requests,
    serving,
)
from loadtest.servers import REPO_ROOT, free_port, http_status, service_argv
from loadtest.stats import Sample

SHADOW_TIMEOUT_S = 2.0
TEACHER_CASES = ("hang", "raise", "absent")


def run(cfg: RunConfig) -> list[Row]:
    return [*_teacher_faults(cfg), _package_faults(cfg), _sigterm_under_load(cfg)]


# ---------------------------------------------------------------------- teacher shadow


def _score_run(url: str, requests: list[Prepared]) -> tuple[list[list[float]], list[Sample]]:
    scores, samples = [], []
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        for prepared in requests:
            t0 = time.monotonic()
            r = client.post(
                prepared.path, content=prepared.body, headers={"content-type": "application/json"}
            )
            samples.append(Sample("score", prepared.items, time.monotonic() - t0, r.status_code))
            body = r.json() if r.status_code == 200 else {}
            scores.append([s["score"] for s in body.get("scores", [])])
    return scores, samples


def _shadow_call(url: str) -> tuple[int, float, str]:
    body = {"query": "cordless drill", "items": ["DEWALT 20V drill", "garden hose"]}
    t0 = time.monotonic()
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        r = client.post("/shadow/score", json=body)
    return r.status_code, (time.monotonic() - t0) * 1000, r.json().get("error", "")[:80]


def _wait_teacher_settled(url: str, timeout_s: float = 120.0) -> str:
    """Wait until the shadow is no longer loading; returns its status."""
    deadline = time.monotonic() + timeout_s
    status = "loading"
    while time.monotonic() < deadline:
        status = str((get_json(url + "/info").get("shadow") or {}).get("status"))
        if status != "loading":
            break
        time.sleep(0.2)
    return status


def _teacher_faults(cfg: RunConfig) -> list[Row]:
    count = 40 if cfg.quick else 200
    requests = [p for p in scoring_requests(count * 2, min_items=10, max_items=50, seed=cfg.seed)]
    requests = [p for p in requests if p.endpoint == "score"][:count]
    env = {
        "RELEVANCE_LOG_LEVEL": "warning",
        "RELEVANCE_SHADOW_MIRROR_RATE": "1",
        "RELEVANCE_SHADOW_TIMEOUT_S": str(SHADOW_TIMEOUT_S),
    }
    with serving("shadow-baseline", cfg, env={"RELEVANCE_LOG_LEVEL": "warning"}) as server:
        _score_run(server.url, requests[:5])  # warm the connection and caches alike
        baseline, base_samples = _score_run(server.url, requests)
    base = latency_figures(base_samples)
    rows = []
    for case in TEACHER_CASES:
        extra = dict(env)
        if case == "absent":
            extra["RELEVANCE_TEACHER_DIR"] = str(Path(tempfile.gettempdir()) / "no-such-teacher")
        teacher = None if case == "absent" else case
        server = launch(f"shadow-{case}", cfg, env=extra, teacher=teacher)
        try:
            _wait_teacher_settled(server.url)
            _score_run(server.url, requests[:5])
            scores, samples = _score_run(server.url, requests)
            shadow = _shadow_call(server.url)
            text = metrics_text(server.url)
            mirror = {
                outcome: metric_sum(
                    text, "relevance_shadow_requests_total", source="mirror", outcome=outcome
                )
                for outcome in ("ok", "error", "timeout", "dropped", "unavailable")
            }
        finally:
            t0 = time.monotonic()
            code = server.stop(30)
            stop_s = time.monotonic() - t0
        figures = latency_figures(samples)
        same = scores == baseline
        diff = max(
            (
                abs(a - b)
                for xs, ys in zip(scores, baseline, strict=True)
                for a, b in zip(xs, ys, strict=False)
            ),
            default=0.0,
        )
        statuses = Counter(s.status for s in samples)
        expected_shadow = 504 if case == "hang" else 503
        slower = (figures["p50_ms"] or 0) - (base["p50_ms"] or 0)
        held = (
            same
            and set(statuses) == {200}
            and shadow[0] == expected_shadow
            and slower <= max(5.0, 0.25 * (base["p50_ms"] or 0))
            and stop_s < 30
        )
        rows.append(
            Row(
                f"Teacher {'absent (directory missing)' if case == 'absent' else case + 's'}",
                f"{len(requests)} /score requests, every one mirrored to the teacher "
                f"(mirror rate 1, timeout {SHADOW_TIMEOUT_S:g} s)",
                held,
                "/score results identical to a server without a teacher, latency unchanged; "
                + (
                    "/shadow/score answers 504 after its timeout"
                    if case == "hang"
                    else "/shadow/score answers 503 at once"
                )
                + "; the server still stops",
                f"results identical: {same} (max |diff| {diff:g}); /score p50/p99 "
                f"{figures['p50_ms']}/{figures['p99_ms']} ms vs {base['p50_ms']}/"
                f"{base['p99_ms']} ms without a teacher; /shadow/score {shadow[0]} in "
                f"{shadow[1]:.0f} ms ({shadow[2]}); mirror outcomes "
                f"{ {k: int(v) for k, v in mirror.items() if v} }; stopped in {stop_s:.1f} s "
                f"(exit {code})",
                {
                    "identical": same,
                    "max_abs_diff": diff,
                    "latency": figures,
                    "baseline_latency": base,
                    "shadow": shadow,
                    "mirror": mirror,
                    "stop_s": stop_s,
                },
            )
        )
    return rows


# ---------------------------------------------------------------------- model package


def _damaged_packages(source: Path, root: Path) -> list[tuple[str, Path, str]]:
    """(case, directory, what the error must name) for each way a package can be broken."""
    out = []

    def copy(name: str) -> Path:
        target = root / name
        shutil.copytree(source, target)
        return target

    graph = _served_graph(source)
    flipped = copy("flipped")
    data = bytearray((flipped / graph).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / graph).write_bytes(bytes(data))
    out.append((f"{graph}: one byte flipped", flipped, graph))

    truncated = copy("truncated-graph")
    raw = (truncated / graph).read_bytes()
    (truncated / graph).write_bytes(raw[: len(raw) // 3])
    out.append((f"{graph}: cut to a third", truncated, graph))

    manifest = copy("bad-manifest")
    text = (manifest / "manifest.json").read_text()
    (manifest / "manifest.json").write_text(text[: len(text) // 2])
    out.append(("manifest.json: cut in half", manifest, "manifest.json"))

    tokenizer = copy("no-tokenizer")
    (tokenizer / "tokenizer.json").unlink()
    out.append(("tokenizer.json: deleted", tokenizer, "tokenizer.json"))

    out.append(("package directory missing", root / "does-not-exist", "does-not-exist"))
    return out


def _served_graph(package: Path) -> str:
    """The graph the CPU service loads: FP32 when present (batch-invariant), else INT8."""
    manifest = json.loads((package / "manifest.json").read_text())
    for variant in ("fp32", "int8"):
        spec = manifest.get("variants", {}).get(variant)
        if spec and (package / spec["file"]).is_file():
            return str(spec["file"])
    raise FileNotFoundError(f"{package}: no CPU graph")


def _package_faults(cfg: RunConfig) -> Row:
    results = []
    with tempfile.TemporaryDirectory(prefix="reliability-packages-") as tmp:
        for case, model_dir, culprit in _damaged_packages(cfg.model, Path(tmp)):
            results.append(_refuses(case, model_dir, culprit, cfg.log_dir))
    held = all(r["held"] for r in results)
    numbers = "; ".join(
        f"{r['case']}: exit {r['exit']} in {r['seconds']:.1f} s, port answered: "
        f'{r["answered"]}, error: "{r["error"][:120]}"'
        for r in results
    )
    return Row(
        "Corrupt or missing model package",
        f"{len(results)} damaged packages, each started with python -m service",
        held,
        "exits (status 3) before listening, with one error line naming the file and no "
        "traceback; never answers a request",
        numbers,
        {"cases": results},
    )


def _refuses(case: str, model_dir: Path, culprit: str, log_dir: Path) -> dict[str, Any]:
    port = free_port()
    log = log_dir / f"package-{re.sub(r'[^a-z0-9]+', '-', case.lower())}.log"
    started = time.monotonic()
    answered = False
    with log.open("wb") as out:
        proc = subprocess.Popen(
            service_argv(model_dir, port), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT
        )
        while proc.poll() is None and time.monotonic() - started < 120:
            answered = answered or http_status(f"http://127.0.0.1:{port}/healthz", 0.5) != 0
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    errors = [m.group(1) for m in re.finditer(r"ERROR service[\w.]*: (.*)", text)]
    error = errors[0] if errors else "(no error line)"
    traceback_printed = "Traceback" in text
    # The message names the package twice (where it looked, what failed): keep the second.
    error = error.split(": ", 1)[-1].replace(str(model_dir.parent) + "/", "")
    return {
        "case": case,
        "exit": proc.returncode,
        "seconds": seconds,
        "answered": answered,
        "error": error,
        "traceback": traceback_printed,
        "held": proc.returncode == 3 and not (answered or traceback_printed) and culprit in error,
    }


# ---------------------------------------------------------------------- SIGTERM


def _sigterm_under_load(cfg: RunConfig) -> Row:
    load_s = 6.0 if cfg.quick else 15.0
    concurrency = 8
    requests = scoring_requests(200, min_items=20, max_items=100, seed=cfg.seed)
    server = launch("sigterm", cfg, env={"RELEVANCE_LOG_LEVEL": "info"})
    try:
        samples, signal_at, exited_s = asyncio.run(
            _load_and_signal(server.url, server.process, requests, concurrency, load_s)
        )
    finally:
        code = server.stop(5)
    log = server.log_path.read_text(errors="replace")
    access = [line for line in log.splitlines() if re.search(r'"POST /(score|rerank) HTTP', line)]
    after_signal = log.split("Shutting down", 1)[1] if "Shutting down" in log else ""
    answered_after = len(
        [line for line in after_signal.splitlines() if re.search(r'"POST /(score|rerank)', line)]
    )
    cancelled = re.findall(r"Cancel (\d+) running task", log)
    unanswered = re.findall(r"(\d+) pairs unanswered", log)
    answered = [s for s in samples if s.status != 0]
    before = [s for s in answered if s.started_s + s.latency_s < signal_at]
    in_flight = [s for s in answered if s.started_s < signal_at <= s.started_s + s.latency_s]
    refused = [s for s in samples if s.status == 0 and s.error == "refused"]
    cut = [s for s in samples if s.status == 0 and s.error != "refused"]
    statuses = Counter(s.status for s in answered)
    held = (
        len(access) == len(answered)
        and not cancelled
        and not unanswered
        and "Application shutdown complete" in log
        and exited_s is not None
    )
    return Row(
        "SIGTERM under load",
        f"closed loop, {concurrency} clients, {load_s:.0f} s; SIGTERM after {signal_at:.1f} s",
        held,
        "every request the server read was answered before it exited (its access log and "
        "the clients agree); nothing cancelled or left in the queue",
        f"answered {len(answered)} ({len(before)} before the signal, {len(in_flight)} sent "
        f"before it and answered after it; statuses {dict(statuses)}); server "
        f"access log {len(access)} ({answered_after} after the signal); refused after the "
        f"listener closed {len(refused)}; connection closed before a request was read "
        f"{len(cut)}; cancelled tasks {sum(map(int, cancelled))}, unanswered pairs "
        f"{sum(map(int, unanswered))}; exited {_exit_text(exited_s)} after the signal "
        f"(status {code})",
        {
            "answered": len(answered),
            "in_flight_answered": len(in_flight),
            "access_log": len(access),
            "refused": len(refused),
            "closed_before_read": len(cut),
            "exit": code,
            "exit_after_s": exited_s,
        },
    )


def _exit_text(seconds: float | None) -> str:
    return "not within 60 s" if seconds is None else f"{seconds:.1f} s"


async def _load_and_signal(
    url: str,
    process: subprocess.Popen[bytes],
    requests: list[Prepared],
    concurrency: int,
    load_s: float,
) -> tuple[list[Sample], float, float | None]:
    """Closed-loop load; SIGTERM halfway; each client stops once the server is gone."""
    samples: list[Sample] = []
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=limits, trust_env=False
    ) as client:

        async def worker(offset: int) -> None:
            i = offset
            while time.monotonic() - started < load_s:
                prepared = requests[i % len(requests)]
                i += concurrency
                sent = time.monotonic() - started
                try:
                    r = await client.post(
                        prepared.path,
                        content=prepared.body,
                        headers={"content-type": "application/json"},
                    )
                    status, error = r.status_code, ""
                except httpx.HTTPError as exc:
                    status, error = 0, no_answer_kind(exc)
                samples.append(
                    Sample(
                        prepared.endpoint,
                        prepared.items,
                        time.monotonic() - started - sent,
                        status,
                        started_s=sent,
                        error=error,
                    )
                )
                if status == 0:
                    return  # the server is gone: do not spin on refused connections

        async def watch_exit(signal_at: float) -> float | None:
            while time.monotonic() - started - signal_at < 60:
                if process.poll() is not None:
                    return time.monotonic() - started - signal_at
                await asyncio.sleep(0.05)
            return None

        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(load_s / 2)
        signal_at = time.monotonic() - started
        process.send_signal(signal.SIGTERM)
        exited_s, *_ = await asyncio.gather(watch_exit(signal_at), *tasks)
    return samples, signal_at, exited_s
