"""Scenario (b), load against capacity: measure it, then offer 0.5x, 2x and 5x of it.

Capacity is the goodput of a closed loop that keeps the model busy. Then load is offered
with Poisson arrivals that do not slow down when the server does (``loadgen.open_loop``),
for a bounded time: at half the capacity, next to nothing may be refused (at most
:data:`HALF_LOAD_MAX_REFUSED`) and admitted requests keep to the SLO at p99; at 2x and 5x
every request must get an answer (200, 429, 503 or 504) no later than its deadline,
admitted requests (200 and 504) keep to the SLO at p99, the goodput (pairs answered 200
within their SLO budget, per second) stays at :data:`GOODPUT_SHARE` of the capacity or
more, memory stays bounded, and once the load stops a lone request is as fast as before
within seconds. Every request bypasses the score cache (``"cache": false``): they are
cycled, and a repeat answered from the cache would count as throughput the model never
delivered.

The verdicts are pure functions of the samples (:func:`half_load_failures`,
:func:`overload_failures`), tested in ``tests/reliability/test_load_rules.py``.
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
    why_not,
)
from loadtest.stats import Sample, percentile

ALLOWED = {200, 429, 503, 504}
REFUSED = (429, 503)
ADMITTED = (200, 504)
# Answers may come this much after the deadline (HTTP, the client's own scheduling).
DEADLINE_SLACK_S = 1.0
RECOVERY_LIMIT_S = 5.0
RSS_GROWTH_LIMIT_MIB = 256.0
CAPACITY_CONCURRENCY = 3
ITEMS = (20, 100)  # candidates per request: within one SLO unit (budget = the SLO latency)
HALF_LOAD = 0.5
OVERLOADS = (2, 5)
# At half load a ranking stack should see almost no refusals (issue 15).
HALF_LOAD_MAX_REFUSED = 0.01
# Under overload the model keeps working for admitted requests: pairs answered within their
# SLO budget per second stay at this share of the capacity or more (issue 15).
GOODPUT_SHARE = 0.9


@dataclass(frozen=True)
class Capacity:
    requests_per_s: float
    pairs_per_s: float
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class OpenLoopFigures:
    """What the verdicts of an open-loop run are decided on."""

    sent: int
    not_sent: int
    statuses: dict[int, int]
    lost: int
    late: int
    refused: int
    # p99 over admitted requests of latency / SLO budget (None: nothing admitted).
    p99_over_budget: float | None
    within_slo: int
    goodput_pairs_per_s: float
    # The same p99 on the server's own clock (x-total-time: arrival to answer), for the
    # admitted requests that carried it: the gap to p99_over_budget is time outside the
    # server's handling (connection, kernel queues, the load client on the same cores).
    server_p99_over_budget: float | None = None

    @property
    def refused_share(self) -> float:
        return self.refused / self.sent if self.sent else 0.0


def open_loop_figures(
    samples: list[Sample],
    not_sent: int,
    elapsed_s: float,
    slo: dict[str, Any],
    deadline_s: float,
) -> OpenLoopFigures:
    """Counts, lateness and goodput of an open-loop run's samples.

    Goodput counts the pairs of requests answered 200 within their SLO budget, over the
    seconds from the first send to the last answer (the drain included: conservative).
    """
    in_slo = [s for s in samples if s.status == 200 and s.latency_s <= _budget_s(s, slo)]
    ratios = [s.latency_s / _budget_s(s, slo) for s in samples if s.status in ADMITTED]
    server = [
        s.server_s / _budget_s(s, slo)
        for s in samples
        if s.status in ADMITTED and s.server_s is not None
    ]
    return OpenLoopFigures(
        sent=len(samples),
        not_sent=not_sent,
        statuses=dict(sorted(Counter(s.status for s in samples).items())),
        lost=sum(1 for s in samples if s.status == 0),
        late=sum(1 for s in samples if s.latency_s > deadline_s + DEADLINE_SLACK_S),
        refused=sum(1 for s in samples if s.status in REFUSED),
        p99_over_budget=percentile(ratios, 99) if ratios else None,
        within_slo=len(in_slo),
        goodput_pairs_per_s=round(sum(s.items for s in in_slo) / max(elapsed_s, 1e-9), 1),
        server_p99_over_budget=percentile(server, 99) if server else None,
    )


def _answer_failures(f: OpenLoopFigures) -> list[str]:
    """What every open-loop run must hold: all sent, all answered in time, as allowed."""
    out = []
    if f.lost:
        out.append(f"{f.lost} lost")
    if f.not_sent:
        out.append(f"{f.not_sent} not sent (client cap)")
    if set(f.statuses) - ALLOWED:
        out.append(f"statuses {sorted(set(f.statuses) - ALLOWED)} not allowed")
    if f.late:
        out.append(f"{f.late} answered after their deadline")
    if f.p99_over_budget is None:
        out.append("nothing admitted")
    elif f.p99_over_budget > 1.0:
        out.append(f"admitted p99 {f.p99_over_budget:.0%} of its SLO budget")
    return out


def half_load_failures(f: OpenLoopFigures) -> list[str]:
    """Why a run at half the capacity did not hold (empty: held)."""
    out = _answer_failures(f)
    if f.refused_share > HALF_LOAD_MAX_REFUSED:
        out.append(f"{f.refused_share:.1%} refused (> {HALF_LOAD_MAX_REFUSED:.0%})")
    return out


def overload_failures(
    f: OpenLoopFigures,
    capacity_pairs_per_s: float,
    recovery_s: float | None,
    rss_growth_mib: float | None,
) -> list[str]:
    """Why a run past the capacity did not hold (empty: held)."""
    out = _answer_failures(f)
    if f.goodput_pairs_per_s < GOODPUT_SHARE * capacity_pairs_per_s:
        out.append(
            f"goodput {f.goodput_pairs_per_s} pairs/s < {GOODPUT_SHARE:.0%} of capacity "
            f"{capacity_pairs_per_s}"
        )
    if recovery_s is None or recovery_s > RECOVERY_LIMIT_S:
        out.append(f"normal latency after {_seconds(recovery_s)}")
    if rss_growth_mib is not None and rss_growth_mib > RSS_GROWTH_LIMIT_MIB:
        out.append(f"RSS grew {rss_growth_mib:.0f} MiB")
    return out


def load_requests(seed: int) -> list[Prepared]:
    """The mix of the capacity and open-loop runs (score cache bypassed)."""
    return scoring_requests(300, min_items=ITEMS[0], max_items=ITEMS[1], seed=seed, cache=False)


def run(cfg: RunConfig) -> tuple[list[Row], Capacity | None]:
    capacity_s = 8.0 if cfg.quick else 20.0
    open_s = 10.0 if cfg.quick else 30.0
    with serving("overload", cfg, env={"RELEVANCE_LOG_LEVEL": "warning"}) as server:
        url, pid = server.url, server.process.pid
        info = get_json(url + "/info")
        slo, limits = info["slo"], info["limits"]
        deadline_s = limits["default_deadline_ms"] / 1000
        requests = load_requests(cfg.seed)
        probe = requests[0]
        baseline = asyncio.run(_probe_latencies(url, probe, 10))
        normal_s = percentile(baseline, 50)
        capacity, row = measure_capacity(url, requests, capacity_s, deadline_s)
        row.numbers += f"; idle latency of one request {normal_s * 1000:.0f} ms"
        row.details["idle_ms"] = round(normal_s * 1000, 1)
        rows = [row]
        run_at = _OpenLoop(url, pid, requests, probe, normal_s, capacity, open_s, deadline_s, slo)
        rows.append(run_at.half_load(cfg.seed))
        for factor in OVERLOADS:
            rows.append(run_at.overload(factor, cfg.seed))
    return rows, capacity


def measure_capacity(
    url: str, requests: list[Prepared], duration_s: float, deadline_s: float
) -> tuple[Capacity, Row]:
    """Goodput of :data:`CAPACITY_CONCURRENCY` closed-loop clients, and its report row."""
    samples, elapsed = asyncio.run(
        closed_loop(
            url,
            requests,
            CAPACITY_CONCURRENCY,
            duration_s,
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
    row = Row(
        "Capacity",
        f"closed loop, {CAPACITY_CONCURRENCY} clients, {duration_s:.0f} s, "
        f"{ITEMS[0]}-{ITEMS[1]} items (70% /score, 30% /rerank), score cache bypassed",
        bool(ok),
        "measured, not judged: the load the open-loop runs multiply",
        f"{capacity.requests_per_s} requests/s = {capacity.pairs_per_s} pairs/s; "
        f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms; statuses "
        f"{dict(Counter(s.status for s in samples))}",
        {"capacity": capacity.__dict__},
    )
    return capacity, row


@dataclass(frozen=True)
class _OpenLoop:
    """One server, its requests and capacity: the runs at a multiple of the capacity."""

    url: str
    pid: int
    requests: list[Prepared]
    probe: Prepared
    normal_s: float
    capacity: Capacity
    duration_s: float
    deadline_s: float
    slo: dict[str, Any]

    def _send(self, factor: float, seed: int) -> tuple[list[Sample], float, int, float]:
        rate = factor * self.capacity.requests_per_s
        samples, elapsed, not_sent = asyncio.run(
            open_loop(
                self.url,
                self.requests,
                rate,
                self.duration_s,
                max_outstanding=2000,
                timeout_s=self.deadline_s + 10,
                seed=seed,
            )
        )
        return samples, elapsed, not_sent, rate

    def _load(self, factor: float, rate: float, samples: list[Sample], not_sent: int) -> str:
        offered = (len(samples) + not_sent) / self.duration_s
        short = offered < 0.9 * rate
        return (
            f"open loop (Poisson) at {rate:.1f} requests/s = {factor:g}x capacity for "
            f"{self.duration_s:.0f} s; offered {offered:.1f}/s"
            + (" (the client could not offer more on this machine)" if short else "")
        )

    def _figures_text(self, f: OpenLoopFigures, samples: list[Sample]) -> str:
        lost_kinds = Counter(s.error for s in samples if s.status == 0)
        admitted = latency_figures(samples, ADMITTED)
        refused = latency_figures(samples, REFUSED)
        return (
            f"sent {f.sent}, answered {f.sent - f.lost}, lost {f.lost}"
            + (f" ({dict(lost_kinds)})" if f.lost else "")
            + (f", not sent (client cap) {f.not_sent}" if f.not_sent else "")
            + f"; statuses {f.statuses}; refused {f.refused} ({f.refused_share:.1%}); "
            f"admitted p50 {admitted['p50_ms']} ms, p99 {admitted['p99_ms']} ms = "
            f"{_pct(f.p99_over_budget)} of its SLO budget (server-side "
            f"{_pct(f.server_p99_over_budget)}); goodput "
            f"{f.goodput_pairs_per_s} pairs/s ({f.within_slo} answered 200 within budget) = "
            f"{_pct(f.goodput_pairs_per_s / self.capacity.pairs_per_s)} of capacity; "
            f"429/503 p99 {_ms(refused['p99_ms'])}; slowest {_max_ms(samples)} ms "
            f"(deadline {self.deadline_s * 1000:.0f} ms)"
        )

    def _details(
        self, rate: float, f: OpenLoopFigures, samples: list[Sample], elapsed: float
    ) -> dict[str, Any]:
        return {
            "target_rate": rate,
            "offered_rate": round((f.sent + f.not_sent) / self.duration_s, 2),
            **f.__dict__,
            "refused_share": round(f.refused_share, 4),
            "lost_kinds": dict(Counter(s.error for s in samples if s.status == 0)),
            "admitted": latency_figures(samples, ADMITTED),
            "refused_latency": latency_figures(samples, REFUSED),
            "capacity_pairs_per_s": self.capacity.pairs_per_s,
            "elapsed_s": round(elapsed, 2),
            # When the late ones were sent, how big, how late (client and server side):
            # whether they cluster at the start of the load, before admission learned it.
            "over_budget": [
                {
                    "sent_at_s": round(s.started_s, 2),
                    "items": s.items,
                    "latency_ms": round(s.latency_s * 1000, 1),
                    "server_ms": round(s.server_s * 1000, 1) if s.server_s is not None else None,
                }
                for s in samples
                if s.status in ADMITTED and s.latency_s > _budget_s(s, self.slo)
            ],
        }

    def half_load(self, seed: int) -> Row:
        samples, elapsed, not_sent, rate = self._send(HALF_LOAD, seed + 1)
        f = open_loop_figures(samples, not_sent, elapsed, self.slo, self.deadline_s)
        failures = half_load_failures(f)
        return Row(
            "Half load",
            self._load(HALF_LOAD, rate, samples, not_sent),
            not failures,
            f"at most {HALF_LOAD_MAX_REFUSED:.0%} refused (429/503); admitted p99 within "
            "the SLO; every request answered by its deadline; none lost",
            self._figures_text(f, samples) + why_not(failures),
            {**self._details(rate, f, samples, elapsed), "failures": failures},
        )

    def overload(self, factor: int, seed: int) -> Row:
        before = snapshot(self.pid)
        admission_start = get_json(self.url + "/info").get("load")
        with Sampler(self.pid, interval_s=0.25) as proc:
            samples, elapsed, not_sent, rate = self._send(factor, seed + factor)
            # What admission had learned by the end of the load (lateness, tail guard).
            admission_load = get_json(self.url + "/info").get("load")
            drain_s = max(0.0, elapsed - self.duration_s)
            settle_s, probes = asyncio.run(_recovery(self.url, self.probe, self.normal_s))
        after = snapshot(self.pid)
        f = open_loop_figures(samples, not_sent, elapsed, self.slo, self.deadline_s)
        rss_before = before.rss_mib if before else None
        growth = (
            (proc.max_rss_mib - rss_before)
            if proc.max_rss_mib is not None and rss_before is not None
            else None
        )
        recovery_s = drain_s + settle_s if settle_s is not None else None
        failures = overload_failures(f, self.capacity.pairs_per_s, recovery_s, growth)
        numbers = (
            self._figures_text(f, samples) + f"; RSS {rss_before} -> max {proc.max_rss_mib} -> "
            f"{after.rss_mib if after else 'n/a'} MiB; back to normal latency "
            f"{_seconds(recovery_s)} after the load stopped ({probes} probes)" + why_not(failures)
        )
        return Row(
            f"Overload {factor}x",
            self._load(factor, rate, samples, not_sent),
            not failures,
            "every request answered 200/429/503/504 by its deadline; none lost; admitted p99 "
            f"within the SLO; goodput (pairs/s answered 200 within their SLO budget) >= "
            f"{GOODPUT_SHARE:.0%} of capacity; memory bounded; normal latency within "
            f"{RECOVERY_LIMIT_S:.0f} s",
            numbers,
            {
                **self._details(rate, f, samples, elapsed),
                "rss_before_mib": rss_before,
                "rss_max_mib": proc.max_rss_mib,
                "rss_after_mib": after.rss_mib if after else None,
                "drain_s": round(drain_s, 2),
                "recovery_s": recovery_s,
                "admission_at_start": admission_start,
                "admission_at_end": admission_load,
                "failures": failures,
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


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value} ms"


def _pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.0%}"


def _seconds(value: float | None) -> str:
    return "never (30 s)" if value is None else f"{value:.1f} s"


def _max_ms(samples: list[Sample]) -> str:
    return f"{max(s.latency_s for s in samples) * 1000:.0f}" if samples else "n/a"
