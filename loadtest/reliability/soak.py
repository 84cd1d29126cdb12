"""Scenario (d), soak: steady load for a bounded time; nothing may grow.

Open-loop load at half the measured capacity. Per window (a minute; 10 s with
``--quick``): requests, errors, p50/p99, and the server's resident memory, threads and
open file handles. Held when there are no errors, p99 of the last window is within 1.5x of
the first (+20 ms), memory after the first window grows by at most the stated bound, and
threads and file handles end where they started. 429s (admission shedding a burst) are
counted, not judged.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from loadtest.loadgen import open_loop
from loadtest.procstats import ProcSnapshot, Sampler, snapshot
from loadtest.reliability.common import Row, RunConfig, get_json, scoring_requests, serving
from loadtest.reliability.overload import Capacity
from loadtest.stats import percentile

LOAD_SHARE = 0.5
RSS_GROWTH_LIMIT_MIB = 32.0
P99_GROWTH = 1.5
THREAD_SLACK = 2
FD_SLACK = 4


def run(cfg: RunConfig, capacity: Capacity | None, duration_s: float) -> Row:
    window_s = 10.0 if cfg.quick else 60.0
    with serving("soak", cfg, env={"RELEVANCE_LOG_LEVEL": "warning"}) as server:
        url, pid = server.url, server.process.pid
        deadline_s = get_json(url + "/info")["limits"]["default_deadline_ms"] / 1000
        requests = scoring_requests(
            # The soak cycles its bodies: repeats would be score-cache hits, not model work.
            500,
            min_items=20,
            max_items=100,
            seed=cfg.seed + 7,
            cache=False,
        )
        if capacity is None:  # overload did not run: a quick estimate of its own
            from loadtest.loadgen import closed_loop
            from loadtest.reliability.overload import CAPACITY_CONCURRENCY

            samples, elapsed = asyncio.run(
                closed_loop(url, requests, CAPACITY_CONCURRENCY, 8.0, timeout_s=deadline_s + 10)
            )
            rate = LOAD_SHARE * sum(s.ok for s in samples) / elapsed
        else:
            rate = LOAD_SHARE * capacity.requests_per_s
        start = snapshot(pid)
        with Sampler(pid, interval_s=1.0) as proc:
            samples, elapsed, not_sent = asyncio.run(
                open_loop(
                    url,
                    requests,
                    rate,
                    duration_s,
                    max_outstanding=1000,
                    timeout_s=deadline_s + 10,
                    seed=cfg.seed + 11,
                )
            )
        end = snapshot(pid)
    windows = _windows(samples, proc.samples, window_s, duration_s)
    statuses = Counter(s.status for s in samples)
    # 429s are the admission policy shedding a burst, reported but not judged here: a soak
    # looks for leaks and drift. Lost requests and 5xx are errors.
    errors = sum(n for status, n in statuses.items() if status == 0 or status >= 500)
    errors += not_sent
    first, last = windows[0], windows[-1]
    baseline_rss = first["rss_mib"]  # after the first window: allocator and caches warm
    rss_growth = (
        (end.rss_mib - baseline_rss) if end is not None and baseline_rss is not None else None
    )
    # Threads and files from the end of the first window too: pools start their threads
    # on first use, which is not a leak.
    threads = (first["threads"], end.threads if end else None)
    fds = (first["open_fds"], end.open_fds if end else None)
    p99_ok = (
        first["p99_ms"] is not None
        and last["p99_ms"] is not None
        and last["p99_ms"] <= P99_GROWTH * first["p99_ms"] + 20
    )
    held = (
        errors == 0
        and p99_ok
        and rss_growth is not None
        and rss_growth <= RSS_GROWTH_LIMIT_MIB
        and _within(threads, THREAD_SLACK)
        and _within(fds, FD_SLACK)
    )
    per_window = "; ".join(
        f"{w['from_s']:.0f}-{w['to_s']:.0f} s: p99 {w['p99_ms']} ms, {w['errors']} not 200, "
        f"RSS {w['rss_mib']} MiB, machine load {w['load1']}"
        for w in windows
    )
    return Row(
        f"Soak ({duration_s / 60:g} min)",
        f"open loop at {rate:.1f} requests/s ({LOAD_SHARE:.0%} of capacity), "
        f"{len(samples)} requests",
        held,
        f"no 5xx, nothing lost; p99 of the last window <= {P99_GROWTH}x the first + 20 ms; "
        f"RSS growth after the first window <= {RSS_GROWTH_LIMIT_MIB:.0f} MiB; threads and "
        "open files at the end as after the first window",
        f"statuses {dict(statuses)}"
        + (f", not sent {not_sent}" if not_sent else "")
        + f"; threads {start.threads if start else 'n/a'} at start, {threads[0]} after the first "
        f"window, {threads[1]} at the end; open files {fds[0]} -> {fds[1]}; RSS "
        f"{start.rss_mib if start else 'n/a'} at start, {baseline_rss} after the first window, "
        f"{end.rss_mib if end else 'n/a'} at the end (growth {_mib(rss_growth)}), max "
        f"{proc.max_rss_mib} MiB; per window: {per_window}",
        {
            "rate": rate,
            "statuses": dict(statuses),
            "windows": windows,
            "start": start.__dict__ if start else None,
            "end": end.__dict__ if end else None,
            "rss_growth_mib": rss_growth,
        },
    )


def _windows(
    samples: list[Any], procs: list[ProcSnapshot], window_s: float, duration_s: float
) -> list[dict[str, Any]]:
    out = []
    start = 0.0
    while start < duration_s - 1e-6:
        stop = min(start + window_s, duration_s)
        chosen = [s for s in samples if start <= s.started_s < stop]
        ok = [s.latency_s * 1000 for s in chosen if s.status == 200]
        # The process reading closest to the end of the window.
        reading = min(procs, key=lambda p: abs(p.at_s - stop)) if procs else None
        out.append(
            {
                "from_s": start,
                "to_s": stop,
                "requests": len(chosen),
                "errors": len(chosen) - len(ok),
                "p50_ms": round(percentile(ok, 50), 1) if ok else None,
                "p99_ms": round(percentile(ok, 99), 1) if ok else None,
                "rss_mib": reading.rss_mib if reading else None,
                "threads": reading.threads if reading else None,
                "open_fds": reading.open_fds if reading else None,
                "load1": reading.load1 if reading else None,
            }
        )
        start = stop
    return out


def _within(pair: tuple[int | None, int | None], slack: int) -> bool:
    before, after = pair
    return before is not None and after is not None and after <= before + slack


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f} MiB"
