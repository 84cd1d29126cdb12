"""``python -m loadtest.hot_swap``: steady load, a hot swap mid-run, and a canary split.

Drives Poisson arrivals of ``/score`` requests (no ``model`` named, so the canary split
applies; the score cache bypassed, so every pair meets the model) and, ``--swap-at``
seconds in, swaps the version serving ``--name`` through the admin API. It reports:

* failed (5xx or no answer) and refused (429) requests before, during and after the swap;
  "during" runs from the swap's request to the old version's release (drain);
* latency p50/p99 in each phase (the swap's blip: the new version loads and warms up next
  to the traffic, then both engines run while the old one drains);
* which version answered: a request sent after the switch that the old version answered
  would be a bug (``stale_after_switch``);
* with ``--canary MODEL --share S``: the measured share of requests the canary answered,
  against ``S`` and against the exact share the query hash gives for the queries sent.

Two ways to run it::

    # self-contained: two copies of a package (default: a tiny random one, built once
    # under runs/hot_swap/) in a temporary models directory, a service on loopback
    python -m loadtest.hot_swap --duration 20 --rate 10
    # the real package on a quiet machine (the measurement for docs/reliability.md)
    python -m loadtest.hot_swap --package models/minilm-homedepot --duration 120 --rate 4 \
        --items 20-40 --canary cand --share 0.1 --out runs/hot_swap/report.json
    # against a running service (RELEVANCE_ADMIN_TOKEN set, the package in its models dir)
    python -m loadtest.hot_swap --url http://127.0.0.1:8000 --token "$TOKEN" \
        --name minilm-homedepot --swap-to minilm-homedepot-1.3.0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest import rawhttp
from loadtest.servers import free_port, running, start_server
from loadtest.stats import percentile
from loadtest.workload import Catalogue, Mix, RequestFactory, parse_range
from service.admin_client import AdminClient
from service.models import canary_bucket

REPO = Path(__file__).resolve().parents[1]
TINY_DIR = REPO / "runs" / "hot_swap"


@dataclass(frozen=True)
class Answer:
    """One request: when it was sent (s from the start), how long, status, who scored it."""

    sent_s: float
    latency_s: float
    status: int
    query: str
    model: str = ""
    version: str = ""
    error: str = ""


@dataclass
class SwapTimes:
    """When the swap was asked for, switched (its answer came back) and the old one drained."""

    asked_s: float = float("nan")
    switched_s: float = float("nan")
    drained_s: float = float("nan")
    answer: dict[str, Any] | None = None


async def send(url: str, body: bytes, query: str, sent_s: float, timeout_s: float) -> Answer:
    t0 = time.monotonic()
    try:
        status, payload = await rawhttp.post(url, "/score", body, timeout_s=timeout_s)
    except rawhttp.NoAnswer as exc:
        return Answer(sent_s, time.monotonic() - t0, 0, query, error=exc.kind)
    latency = time.monotonic() - t0
    model = version = ""
    if status == 200:
        served = json.loads(payload).get("model", {})
        model, version = served.get("name", ""), served.get("version", "")
    return Answer(sent_s, latency, status, query, model, version)


async def drive(
    url: str,
    bodies: Sequence[tuple[str, bytes]],
    rate: float,
    duration_s: float,
    swap: Any,
    swap_at_s: float,
    timeout_s: float,
    seed: int = 0,
) -> tuple[list[Answer], SwapTimes]:
    """Open-loop load for ``duration_s``; ``swap(times, started)`` runs at ``swap_at_s``."""
    rng = random.Random(seed)
    started = time.monotonic()
    times = SwapTimes()
    tasks: list[asyncio.Task[Answer]] = []
    swapping = asyncio.create_task(_at(swap_at_s, started, swap, times))
    next_at, i = 0.0, 0
    while next_at < duration_s:
        delay = started + next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        query, body = bodies[i % len(bodies)]
        tasks.append(asyncio.create_task(send(url, body, query, next_at, timeout_s)))
        next_at += rng.expovariate(rate)
        i += 1
    answers = list(await asyncio.gather(*tasks))
    await swapping
    return answers, times


async def _at(at_s: float, started: float, swap: Any, times: SwapTimes) -> None:
    await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
    await swap(times, started)


def phase(answer: Answer, times: SwapTimes) -> str:
    if answer.sent_s < times.asked_s:
        # Sent before the swap but answered after it began: it lived through the swap.
        return "during" if answer.sent_s + answer.latency_s >= times.asked_s else "before"
    return "during" if answer.sent_s < times.drained_s else "after"


def summarize(
    answers: Sequence[Answer],
    times: SwapTimes,
    *,
    old_version: str,
    canary: str | None,
    share: float,
) -> dict[str, Any]:
    phases: dict[str, list[Answer]] = {"before": [], "during": [], "after": []}
    for answer in answers:
        phases[phase(answer, times)].append(answer)

    def describe(group: list[Answer]) -> dict[str, Any]:
        ok = [a.latency_s * 1000 for a in group if a.status == 200]
        return {
            "requests": len(group),
            "ok": len(ok),
            "refused_429": sum(a.status == 429 for a in group),
            "failed": sum(a.status == 0 or a.status >= 500 for a in group),
            "other_4xx": sum(400 <= a.status < 500 and a.status != 429 for a in group),
            "p50_ms": round(percentile(ok, 50), 1) if ok else None,
            "p99_ms": round(percentile(ok, 99), 1) if ok else None,
            "versions": dict(Counter(f"{a.model} {a.version}" for a in group if a.status == 200)),
            "errors": dict(Counter(a.error for a in group if a.error)),
        }

    report: dict[str, Any] = {
        "swap": {
            "asked_s": round(times.asked_s, 3),
            "switched_s": round(times.switched_s, 3),
            "drained_s": round(times.drained_s, 3),
            "answer": times.answer,
        },
        "phases": {name: describe(group) for name, group in phases.items()},
        "stale_after_switch": sum(
            a.sent_s > times.switched_s and a.version == old_version and a.model != canary
            for a in answers
        ),
    }
    if canary is not None:
        split = [a for a in answers if a.status == 200]
        expected = [canary_bucket(a.query) < share for a in split]
        report["canary"] = {
            "model": canary,
            "share": share,
            "measured": round(sum(a.model == canary for a in split) / max(1, len(split)), 4),
            "expected_for_these_queries": round(sum(expected) / max(1, len(split)), 4),
            "distinct_queries": len({a.query for a in split}),
        }
    return report


def tiny_packages(out: Path) -> Path:
    """Two tiny random packages (other weights, other versions) for a smoke run."""
    from loadtest.tiny_model import MAX_LENGTH, build_tiny_student
    from training.onnx_export.build import export_package

    for seed, version in ((0, "0.0.a"), (1, "0.0.b")):
        package = out / f"tiny-{version}"
        if (package / "manifest.json").is_file():
            continue
        student = out / f"student-{seed}"
        if not (student / "config.json").is_file():
            build_tiny_student(student, seed)
        export_package(
            student,
            package,
            name="tiny",
            version=version,
            max_length=MAX_LENGTH,
            variants=("fp32", "int8"),
            extra_manifest={"backbone": "tiny-random-bert"},
        )
    return out


def copy_package(source: Path, zoo: Path) -> tuple[str, str]:
    """``source`` twice in ``zoo``: as is, and with ``+swap`` on its version (same weights)."""
    a, b = source.name, f"{source.name}-swap"
    shutil.copytree(source, zoo / a)
    shutil.copytree(source, zoo / b)
    manifest = json.loads((zoo / b / "manifest.json").read_text())
    manifest["version"] += "+swap"
    (zoo / b / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return a, b


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.hot_swap", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--url", help="a running service (else one is started on loopback)")
    p.add_argument("--token", help="its admin token (with --url)")
    p.add_argument("--name", help="the model name to swap (with --url; default: the default)")
    p.add_argument("--swap-to", help="the package to swap to (with --url)")
    p.add_argument("--package", type=Path, help="self-contained: copy this package twice")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second (Poisson)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    p.add_argument("--swap-at", type=float, help="seconds in (default: a third of the run)")
    p.add_argument("--items", default="20-40", help="items per request, e.g. 20-40")
    p.add_argument("--canary", help="a loaded model to take --share of the traffic")
    p.add_argument("--share", type=float, default=0.1)
    p.add_argument("--cache", action="store_true", help="let requests use the score cache")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--out", type=Path, help="also write the report as JSON here")
    return p.parse_args(argv)


def request_bodies(items: str, cache: bool, count: int = 4000) -> list[tuple[str, bytes]]:
    low, high = parse_range(items)
    factory = RequestFactory(Catalogue.load(), Mix(min_items=low, max_items=high, rerank_share=0))
    bodies = []
    for request in factory.take(count):
        body: dict[str, Any] = request.body()
        body["cache"] = cache
        bodies.append((request.query, json.dumps(body).encode()))
    return bodies


async def run_against(
    url: str, admin: AdminClient, args: argparse.Namespace, name: str, swap_to: str
) -> dict[str, Any]:
    listed = await asyncio.to_thread(admin.models)
    old = next(m for m in listed["models"] if m["name"] == name)
    if args.canary:
        await asyncio.to_thread(admin.set_canary, args.canary, args.share)

    async def swap(times: SwapTimes, started: float) -> None:
        times.asked_s = time.monotonic() - started
        times.answer = await asyncio.to_thread(admin.swap, name, swap_to)
        times.switched_s = time.monotonic() - started
        await asyncio.to_thread(admin.wait_drained, args.timeout + 60)
        times.drained_s = time.monotonic() - started

    swap_at = args.swap_at if args.swap_at is not None else args.duration / 3
    answers, times = await drive(
        url,
        request_bodies(args.items, args.cache),
        args.rate,
        args.duration,
        swap,
        swap_at,
        args.timeout,
    )
    report = summarize(
        answers, times, old_version=old["version"], canary=args.canary, share=args.share
    )
    report["settings"] = {
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "swap_at_s": swap_at,
        "items": args.items,
        "cache": args.cache,
        "name": name,
        "from": f"{old['package']} {old['version']}",
        "to": swap_to,
    }
    return report


def self_contained(args: argparse.Namespace) -> dict[str, Any]:
    token = "hot-swap-loadtest"
    with tempfile.TemporaryDirectory(prefix="hot-swap-") as tmp:
        zoo = Path(tmp)
        if args.package is not None:
            a, b = copy_package(args.package, zoo)
        else:
            built = tiny_packages(TINY_DIR)
            a, b = "tiny-0.0.a", "tiny-0.0.b"
            for name in (a, b):
                shutil.copytree(built / name, zoo / name)
        models = f"main={a}" + (f",{args.canary}={b}" if args.canary else "")
        port = free_port()
        env = {
            "RELEVANCE_MODELS_DIR": str(zoo),
            "RELEVANCE_MODELS": models,
            "RELEVANCE_ADMIN_TOKEN": token,
        }
        argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
        server = start_server("service", argv, port, env=env, log_dir=zoo / "logs")
        with running(server, "/readyz", timeout_s=300):
            admin = AdminClient(server.url, token)
            return asyncio.run(run_against(server.url, admin, args, "main", b))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url:
        if not (args.token and args.swap_to):
            raise SystemExit("--url needs --token and --swap-to")
        admin = AdminClient(args.url, args.token)
        name = args.name or admin.models()["default"]
        report = asyncio.run(run_against(args.url, admin, args, name, args.swap_to))
    else:
        report = self_contained(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    during = report["phases"]["during"]
    attributable = during["failed"] + during["refused_429"] + report["stale_after_switch"]
    return 1 if attributable else 0


if __name__ == "__main__":
    raise SystemExit(main())
