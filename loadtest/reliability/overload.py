"""Scenario (b), overload: measure capacity, then offer 2x and 5x of it, open-loop.

Capacity is the goodput of a closed loop that keeps the model busy. Overload is offered
with Poisson arrivals that do not slow down when the server does (``loadgen.open_loop``),
for a bounded time. Every request must get an answer (200, 429, 503 or 504) no later than
its deadline; admitted requests (200 and 504) must keep to the SLO at p99; memory must
stay bounded; once the load stops, a lone request must be as fast as before within
seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

from loadtest.loadgen import Prepared, closed_loop, open_loop
from loadtest.procstats import Sampler, snapshot
from loadtest.reliability.common import (
    Row,
    RunConfig,
    get_json,
    latency_figures,
    scoring_requests,
    serving,
)
from loadtest.stats import Sample, percentile

ALLOWED = {200, 429, 503, 504}
# Answers may come this much after the deadline (HTTP, the client's own scheduling).
DEADLINE_SLACK_S = 1.0
RECOVERY_LIMIT_S = 5.0
RSS_GROWTH_LIMIT_MIB = 256.0
CAPACITY_CONCURRENCY = 3
ITEMS = (20, 100)  # candidates per request: within one SLO unit (budget = the SLO latency)


@dataclass(frozen=True)
class Capacity:
    requests_per_s: float
    pairs_per_s: float
    p50_ms: float | None
    p99_ms: float | None


def run(cfg: RunConfig) -> tuple[list[Row], Capacity | None]:
    capacity_s = 8.0 if cfg.quick else 20.0
    overload_s = 10.0 if cfg.quick else 30.0
    with serving("overload", cfg, env={"RELEVANCE_LOG_LEVEL": "warning"}) as server:
        url, pid = server.url, server.process.pid
        info = get_json(url + "/info")
        slo, limits = info["slo"], info["limits"]
        deadline_s = limits["default_deadline_ms"] / 1000
        requests = scoring_requests(300, min_items=ITEMS[0], max_items=ITEMS[1], seed=cfg.seed)
        probe = requests[0]
        baseline = asyncio.run(_probe_latencies(url, probe, 10))
        normal_s = percentile(baseline, 50)

        samples, elapsed = asyncio.run(
            closed_loop(
                url,
                requests,
                CAPACITY_CONCURRENCY,
                capacity_s,
                timeout_s=deadline_s + 10,
                # Refused clients back off as told; retrying at once would flood the cores
                # with refusals and understate what the server can do.
                honour_retry_after=True,
            )
        )
        ok = [s for s in samples if s.ok]
        figures = latency_figures(samples)
        capacity = Capacity(
            round(len(ok) / elapsed, 2),
            round(sum(s.items for s in ok) / elapsed, 1),
            figures["p50_ms"],
            figures["p99_ms"],
        )
        rows = [
            Row(
                "Capacity",
                f"closed loop, {CAPACITY_CONCURRENCY} clients, {capacity_s:.0f} s, "
                f"{ITEMS[0]}-{ITEMS[1]} items (70% /score, 30% /rerank)",
                bool(ok),
                "measured, not judged: the load the overload runs multiply",
                f"{capacity.requests_per_s} requests/s = {capacity.pairs_per_s} pairs/s; "
                f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms; statuses "
                f"{dict(Counter(s.status for s in samples))}; idle latency of one request "
                f"{normal_s * 1000:.0f} ms",
                {"capacity": capacity.__dict__, "idle_ms": round(normal_s * 1000, 1)},
            )
        ]
        for factor in (2, 5):
            rows.append(
                _overload(
                    url,
                    pid,
                    requests,
                    probe,
                    normal_s,
                    factor,
                    capacity,
                    overload_s,
                    deadline_s,
                    slo,
                    cfg.seed,
                )
            )
    return rows, capacity


def _overload(
    url: str,
    pid: int,
    requests: list[Prepared],
    probe: Prepared,
    normal_s: float,
    factor: int,
    capacity: Capacity,
    duration_s: float,
    deadline_s: float,
    slo: dict[str, Any],
    seed: int,
) -> Row:
    rate = factor * capacity.requests_per_s
    before = snapshot(pid)
    with Sampler(pid, interval_s=0.25) as proc:
        samples, elapsed, not_sent = asyncio.run(
            open_loop(
                url,
                requests,
                rate,
                duration_s,
                max_outstanding=2000,
                timeout_s=deadline_s + 10,
                seed=seed + factor,
            )
        )
        drain_s = max(0.0, elapsed - duration_s)
        settle_s, probes = asyncio.run(_recovery(url, probe, normal_s))
    after = snapshot(pid)
    statuses = Counter(s.status for s in samples)
    lost = [s for s in samples if s.status == 0]
    lost_kinds = Counter(s.error for s in lost)
    budget_s = {s: _budget_s(s, slo) for s in samples}
    admitted = [s for s in samples if s.status in (200, 504)]
    ratios = [s.latency_s / budget_s[s] for s in admitted]
    p99_ratio = percentile(ratios, 99) if ratios else None
    admitted_figures = latency_figures(samples, (200, 504))
    refused_figures = latency_figures(samples, (429, 503))
    in_slo = sum(1 for s in samples if s.status == 200 and s.latency_s <= budget_s[s])
    late = [s for s in samples if s.latency_s > deadline_s + DEADLINE_SLACK_S]
    offered = (len(samples) + not_sent) / duration_s
    rss_before = before.rss_mib if before else None
    growth = (
        (proc.max_rss_mib - rss_before)
        if proc.max_rss_mib is not None and rss_before is not None
        else None
    )
    recovery_s = drain_s + settle_s if settle_s is not None else None
    held = (
        not lost
        and not_sent == 0
        and set(statuses) <= ALLOWED
        and not late
        and p99_ratio is not None
        and p99_ratio <= 1.0
        and recovery_s is not None
        and recovery_s <= RECOVERY_LIMIT_S
        and (growth is None or growth <= RSS_GROWTH_LIMIT_MIB)
    )
    short = offered < 0.9 * rate
    numbers = (
        f"sent {len(samples)}, answered {len(samples) - len(lost)}, lost {len(lost)}"
        + (f" ({dict(lost_kinds)})" if lost else "")
        + (f", not sent (client cap) {not_sent}" if not_sent else "")
        + f"; statuses {dict(sorted(statuses.items()))}; admitted p50 "
        f"{admitted_figures['p50_ms']} ms, p99 {admitted_figures['p99_ms']} ms = "
        f"{_pct(p99_ratio)} of its SLO budget ({in_slo} answered 200 within budget); "
        f"429/503 p99 {refused_figures['p99_ms']} ms; slowest {_max_ms(samples)} ms "
        f"(deadline {deadline_s * 1000:.0f} ms); RSS {rss_before} -> max "
        f"{proc.max_rss_mib} -> {after.rss_mib if after else 'n/a'} MiB; back to normal "
        f"latency {_seconds(recovery_s)} after the load stopped ({probes} probes)"
    )
    return Row(
        f"Overload {factor}x",
        f"open loop (Poisson) at {rate:.1f} requests/s = {factor}x capacity for "
        f"{duration_s:.0f} s; offered {offered:.1f}/s"
        + (" (the client could not offer more on this machine)" if short else ""),
        held,
        "every request answered 200/429/503/504 by its deadline; none lost; admitted p99 "
        "within the SLO; memory bounded; normal latency within "
        f"{RECOVERY_LIMIT_S:.0f} s",
        numbers,
        {
            "target_rate": rate,
            "offered_rate": round(offered, 2),
            "sent": len(samples),
            "lost": len(lost),
            "lost_kinds": dict(lost_kinds),
            "not_sent": not_sent,
            "statuses": dict(statuses),
            "admitted": admitted_figures,
            "refused": refused_figures,
            "p99_over_budget": p99_ratio,
            "within_slo": in_slo,
            "late": len(late),
            "rss_before_mib": rss_before,
            "rss_max_mib": proc.max_rss_mib,
            "rss_after_mib": after.rss_mib if after else None,
            "drain_s": round(drain_s, 2),
            "recovery_s": recovery_s,
        },
    )


def _budget_s(sample: Sample, slo: dict[str, Any]) -> float:
    return float(slo["latency_ms"]) / 1000 * max(1.0, sample.items / int(slo["per_items"]))


async def _probe_latencies(url: str, probe: Prepared, count: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
        for _ in range(count):
            t0 = time.monotonic()
            r = await client.post(
                probe.path, content=probe.body, headers={"content-type": "application/json"}
            )
            if r.status_code == 200:
                out.append(time.monotonic() - t0)
    return out


async def _recovery(
    url: str, probe: Prepared, normal_s: float, *, limit_s: float = 30.0
) -> tuple[float | None, int]:
    """Seconds until three probes in a row are as fast as before the load (None: never)."""
    threshold = 1.5 * normal_s + 0.01
    started = time.monotonic()
    streak, sent = 0, 0
    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
        while time.monotonic() - started < limit_s:
            t0 = time.monotonic()
            r = await client.post(
                probe.path, content=probe.body, headers={"content-type": "application/json"}
            )
            sent += 1
            fast = r.status_code == 200 and time.monotonic() - t0 <= threshold
            streak = streak + 1 if fast else 0
            if streak == 3:
                return round(time.monotonic() - started, 2), sent
            await asyncio.sleep(0.05)
    return None, sent


def _pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.0%}"


def _seconds(value: float | None) -> str:
    return "never (30 s)" if value is None else f"{value:.1f} s"


def _max_ms(samples: list[Sample]) -> str:
    return f"{max(s.latency_s for s in samples) * 1000:.0f}" if samples else "n/a"
