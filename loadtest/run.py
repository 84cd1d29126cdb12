"""``python -m loadtest.run``: a headless locust run with an SLO verdict.

Starts the service on 127.0.0.1 (or targets ``--url``: loopback only, unless
``--allow-remote`` names a host you own), runs ``--users`` locust users of
``loadtest/locustfile.py`` for ``--duration`` seconds (and at most ``--max-requests``
requests), then prints and saves p50/p95/p99, requests/s, pairs/s, errors by status and
whether the SLO held. Exit code: 0 SLO held, 1 SLO missed, 2 could not run.

    python -m loadtest.run --users 8 --duration 30
    python -m loadtest.run --url http://127.0.0.1:8000 --items 50-100 --shadow-share 0.05
"""

# ruff: noqa: E402
from __future__ import annotations

# locust runs on gevent: patch the standard library before anything imports ssl or socket.
from gevent import monkey

monkey.patch_all()

# isort: split
import argparse
import datetime as dt
import json
import os
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.servers import (
    REPO_ROOT,
    ServerProcess,
    TargetRefused,
    batch_stats,
    check_target,
    free_port,
    http_status,
    mean_batch,
    service_argv,
    start_server,
)
from loadtest.stats import Sample, Slo, summarize
from loadtest.workload import DATA_ENV, Mix, parse_range

DEFAULT_MODEL = REPO_ROOT / "models" / "minilm-homedepot"
EXIT_SLO_MISSED = 1
EXIT_CANNOT_RUN = 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.split("\n")[0])
    target = p.add_argument_group("target")
    target.add_argument("--url", help="load this running service instead of starting one")
    target.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --url outside loopback (only a host you own and may load)",
    )
    target.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="package to serve")
    target.add_argument("--startup-timeout", type=float, default=180.0, help="seconds")
    load = p.add_argument_group("load")
    load.add_argument("--users", type=int, default=8)
    load.add_argument("--spawn-rate", type=float, help="users started per second (default: all)")
    load.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    load.add_argument("--max-requests", type=int, default=100_000, help="stop after this many")
    load.add_argument("--items", default="20-200", help="candidates per request, MIN-MAX")
    load.add_argument("--rerank-share", type=float, default=0.3)
    load.add_argument("--shadow-share", type=float, default=0.0)
    load.add_argument("--wait-ms", default="0", help="think time MIN-MAX ms (0: closed loop)")
    load.add_argument("--data", type=Path, help=f"data file (default ${DATA_ENV} or shared data)")
    load.add_argument("--seed", type=int, default=0)
    slo = p.add_argument_group("SLO (defaults: what the target's /info reports)")
    slo.add_argument("--slo-ms", type=float, help="latency budget per slo-items requests")
    slo.add_argument("--slo-items", type=int)
    slo.add_argument("--slo-target", type=float, default=0.99, help="share of requests in budget")
    p.add_argument("--out", type=Path, help="result JSON (default runs/loadtest/<time>.json)")
    args = p.parse_args(argv)
    if args.users < 1 or args.duration <= 0 or args.max_requests < 1:
        p.error("--users, --duration and --max-requests must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    low, high = parse_range(args.items)
    mix = Mix(low, high, args.rerank_share, args.shadow_share, seed=args.seed)
    # The locustfile reads its knobs from the environment (as in the locust container).
    os.environ.update(mix.to_env())
    os.environ["LOADTEST_WAIT_MS"] = args.wait_ms
    os.environ["LOADTEST_MAX_REQUESTS"] = str(args.max_requests)
    if args.data:
        os.environ[DATA_ENV] = str(args.data)
    server: ServerProcess | None = None
    try:
        if args.url:
            url = check_target(args.url, allow_remote=args.allow_remote)
            if http_status(url + "/healthz", timeout_s=5) != 200:
                print(f"error: {url}/healthz does not answer 200", file=sys.stderr)
                return EXIT_CANNOT_RUN
        else:
            port = free_port()
            server = start_server("service", service_argv(args.model, port), port)
            url = server.url
            print(f"starting the service on {url} with {args.model} ...", flush=True)
            server.wait_ready("/readyz", args.startup_timeout)
    except (TargetRefused, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if server:
            server.stop()
        return EXIT_CANNOT_RUN

    slo = target_slo(url, args.slo_ms, args.slo_items, args.slo_target)
    if args.shadow_share > 0:
        print(
            "note: /shadow/score answers 503 unless the service has a teacher "
            "(RELEVANCE_TEACHER_DIR) and 429 while its teacher slots are busy; those count "
            "as failures but not against the SLO",
            flush=True,
        )
    try:
        before = batch_stats(url)
        samples, elapsed_s = run_locust(
            url, args.users, args.spawn_rate, args.duration, args.max_requests
        )
        after = batch_stats(url)
    finally:
        if server:
            server.stop()

    result: dict[str, Any] = {
        "tool": "loadtest.run",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": url,
        "started_service": server is not None,
        "model": str(args.model) if server else None,
        "users": args.users,
        "duration_s": args.duration,
        "mix": {k: v for k, v in vars(mix).items() if not k.startswith("_")},
        **summarize(samples, elapsed_s, slo),
        "server_mean_batch_pairs": mean_batch(before, after),
    }
    out = args.out or REPO_ROOT / "runs" / "loadtest" / f"{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"saved {out}")
    return 0 if result["slo"]["held"] else EXIT_SLO_MISSED


def target_slo(url: str, latency_ms: float | None, items: int | None, target: float) -> Slo:
    """Flags first, then the SLO the target's ``/info`` reports, then the service defaults."""
    reported: dict[str, Any] = {}
    try:
        with urllib.request.urlopen(url + "/info", timeout=5) as r:
            reported = json.loads(r.read()).get("slo") or {}
    except (OSError, ValueError):
        pass
    if not reported:
        from service.settings import Settings

        defaults = Settings()
        reported = {"latency_ms": defaults.slo_latency_ms, "per_items": defaults.slo_items}
    return Slo(
        latency_ms or float(reported["latency_ms"]), items or int(reported["per_items"]), target
    )


def run_locust(
    url: str, users: int, spawn_rate: float | None, duration_s: float, max_requests: int
) -> tuple[list[Sample], float]:
    """Run the locustfile's users in this process; bounded by time and by request count."""
    import gevent
    from locust.env import Environment
    from locust.log import setup_logging

    from loadtest.locustfile import RankingStackUser

    setup_logging("WARNING")
    samples: list[Sample] = []

    def on_request(
        response_time: float,
        context: dict[str, Any] | None = None,
        response: Any = None,
        **_: Any,
    ) -> None:
        context = context or {}
        status = int(getattr(response, "status_code", 0) or 0) if response is not None else 0
        samples.append(
            Sample(
                context.get("endpoint", "?"),
                int(context.get("items", 0)),
                response_time / 1000,
                status,
            )
        )

    env = Environment(user_classes=[RankingStackUser], host=url, stop_timeout=30)
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    started = time.monotonic()
    runner.start(users, spawn_rate=spawn_rate or users)
    deadline = started + duration_s
    # Stop on time, on the request cap, or when every user has stopped itself.
    while time.monotonic() < deadline and len(samples) < max_requests:
        gevent.sleep(0.1)
        if runner.user_count == 0 and time.monotonic() - started > 1:
            break
    runner.quit()
    elapsed = time.monotonic() - started
    return samples, elapsed


def report(result: dict[str, Any]) -> str:
    slo = result["slo"]
    lines = [
        f"target {result['target']}  users {result['users']}  {result['elapsed_s']} s  "
        f"mean items {result['mean_items']}",
        f"requests {result['requests']}  failures {result['failures']}  "
        f"errors by status {result['errors_by_status'] or '{}'}",
        f"latency p50 {result['p50_ms']} ms  p95 {result['p95_ms']} ms  p99 {result['p99_ms']} ms",
        f"throughput {result['requests_per_s']} requests/s  {result['pairs_per_s']} pairs/s"
        + (
            f"  (server mean batch {result['server_mean_batch_pairs']} pairs)"
            if result.get("server_mean_batch_pairs")
            else ""
        ),
    ]
    for name, figures in result["by_endpoint"].items():
        lines.append(
            f"  {name:7s} {figures['requests']:6d} requests  {figures['failures']} failed  "
            f"p50 {figures['p50_ms']} p95 {figures['p95_ms']} p99 {figures['p99_ms']} ms"
        )
    verdict = "HELD" if slo["held"] else "MISSED"
    lines.append(f"SLO {verdict}: {slo['rule']}; compliance {slo['compliance']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
