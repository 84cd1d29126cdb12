"""Scenario (b'), traffic shapes: a fan-out, lone small requests and the peak against the
raw session, and the score cache.

One server; each row runs on it idle, in this order:

1. **Raw ceiling** (not a row of its own): the raw ONNX Runtime session's best pairs/s
   (``loadtest.bench.measure_ceiling``: pre-tokenized batches of the same request mix, in request
   order and sorted by length, every batch size of a short ladder, idle threads spinning
   and not) at the variant, provider
   and intra-op threads the server reports in ``/info``, measured in this process while
   the server is idle.
2. **Lone small request**: 20 sequential 10-item ``/score`` requests (cache bypassed);
   their p50 over 10 is the served cost of a pair, held within :data:`LONE_LIMIT` of the
   raw session's best per-pair cost.
3. **Score cache**: one 20-item request answered once (misses), then the same request 50
   times in a row: p50 within :data:`CACHE_P50_LIMIT_S`, every pair of the repeats a hit
   by ``relevance_score_cache_lookups_total``.
4. **Fan-out**: 64 concurrent 4-item ``/score`` requests sent at once (one connection
   each, cache bypassed, new texts every run), ten runs: held when all 640 are 200.
5. **Service / raw ceiling at peak**: the capacity's pairs/s (3 closed-loop clients, from
   the overload scenario or measured here), and, as ``loadtest.bench`` climbs, closed
   loops at more clients; the best of them over the raw ceiling, held at
   :data:`CEILING_SHARE` or more.

The verdicts are pure functions (``*_failures``), tested in
``tests/reliability/test_load_rules.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import httpx

from loadtest import rawhttp
from loadtest.loadgen import Prepared, closed_loop
from loadtest.reliability.common import (
    Row,
    RunConfig,
    get_json,
    metric_sum,
    metrics_text,
    scoring_requests,
    serving,
    why_not,
)
from loadtest.reliability.overload import (
    CAPACITY_CONCURRENCY,
    ITEMS,
    Capacity,
    load_requests,
    measure_capacity,
)
from loadtest.stats import percentile

FANOUT_REQUESTS = 64
FANOUT_ITEMS = 4
FANOUT_RUNS = 10
LONE_ITEMS = 10
LONE_REQUESTS = 20
LONE_WARMUP = 3
# A lone small request may cost at most this much per pair over the session's best (issue 15).
LONE_LIMIT = 1.3
# The service's peak throughput over the raw session's best (issue 15).
CEILING_SHARE = 0.9
CACHE_ITEMS = 20
CACHE_REPEATS = 50
CACHE_P50_LIMIT_S = 0.005
CACHE_LOOKUPS = "relevance_score_cache_lookups_total"
# More clients than the capacity's 3, as loadtest.bench's ladder climbs (2 cores: 4 in
# flight is already overload; 8 shows whether more queued work buys throughput).
PEAK_CONCURRENCY = (6, 12)
CEILING_SIZES = (4, 8, 16, 32, 64)


def run(cfg: RunConfig, capacity: Capacity | None) -> list[Row]:
    with serving("traffic", cfg, env={"RELEVANCE_LOG_LEVEL": "warning"}) as server:
        url = server.url
        info = get_json(url + "/info")
        deadline_s = info["limits"]["default_deadline_ms"] / 1000
        ceiling = raw_ceiling(cfg, info["model"])
        rows = [
            lone_request_row(url, ceiling, cfg.seed),
            cache_row(url, cfg.seed),
            fanout_row(url, deadline_s, cfg.seed),
            peak_row(url, ceiling, capacity, cfg.quick, deadline_s, cfg.seed),
        ]
    return rows


# --------------------------------------------------------------------------- the raw session


def session_provider(name: str) -> str:
    """``/info``'s execution provider (an ORT name) as ``OnnxScorer.load`` takes it."""
    return "cuda" if name.startswith("CUDA") else "cpu"


def raw_ceiling(cfg: RunConfig, model: dict[str, Any]) -> dict[str, Any]:
    """The raw session's best pairs/s at the server's variant and provider: one session at
    the server's threads (all cores when it runs sessions side by side), and one session
    of a thread per core side by side."""
    from loadtest import bench
    from loadtest.workload import Catalogue, Mix, RequestFactory
    from service.warmup import cores

    execution = model["execution"]
    tuning = model.get("tuning") or {}
    instances = int(tuning.get("model_instances") or 1)
    threads = int(tuning.get("intra_op_threads") or 0) if instances == 1 else 0
    sizes = set(CEILING_SIZES) | ({int(tuning["max_batch_size"])} if tuning else set())
    if not cfg.quick:
        sizes |= {128}
    # At least one pass over every pair per setting: 256 pairs is ~1.3 s a setting for the
    # MiniLM INT8 graph on 2 cores; the full run takes four times as many.
    plan = replace(
        bench.QUICK,
        batch_sizes=tuple(sorted(sizes)),
        offline_pairs=256 if cfg.quick else 1024,
        offline_budget_s=1.0 if cfg.quick else 6.0,
    )
    mix = Mix(ITEMS[0], ITEMS[1], rerank_share=0.3)
    requests = RequestFactory(Catalogue.load(), mix, cfg.seed).take(100)
    pairs = [(r.query, t) for r in requests for t in r.texts][: plan.offline_pairs]
    time.sleep(1.0)  # the server's idle threads stop spinning
    figures = bench.measure_ceiling(
        cfg.model,
        session_provider(execution["provider"]),
        execution["variant"],
        threads,
        pairs,
        plan,
        side_by_side=max(instances, cores()) if cores() > 1 else 0,
    )
    figures["intra_op_threads"] = 1 if figures["instances"] > 1 else threads
    figures["pairs"] = len(pairs)
    return figures


def _ceiling_text(ceiling: dict[str, Any]) -> str:
    spin = "spinning" if ceiling["spinning"] else "no spinning"
    threads = ceiling["intra_op_threads"] or "ORT default"
    instances = int(ceiling.get("instances") or 1)
    layout = f"{instances} sessions side by side, " if instances > 1 else ""
    return (
        f"raw session {ceiling['pairs_per_s']} pairs/s (batch {ceiling['batch_size']}, "
        f"{layout}{spin}, {ceiling['variant']} on {ceiling['provider']}, {threads} threads)"
    )


# --------------------------------------------------------------------------- lone request


def per_pair_ratio(p50_s: float, items: int, ceiling_pairs_per_s: float) -> float:
    """A request's served cost of a pair over the raw session's best cost of a pair."""
    return (p50_s / items) * ceiling_pairs_per_s


def lone_request_failures(statuses: Sequence[int], ratio: float | None) -> list[str]:
    out = []
    bad = Counter(s for s in statuses if s != 200)
    if bad:
        out.append(f"statuses {dict(bad)}")
    if ratio is None:
        out.append("no answer to time")
    elif ratio > LONE_LIMIT:
        out.append(f"{ratio:.2f}x the raw session's per-pair cost (> {LONE_LIMIT}x)")
    return out


def small_batch_pairs_per_s(ceiling: dict[str, Any], items: int) -> tuple[float, str] | None:
    """The raw session's best pairs/s over the batch sizes of at most ``items`` pairs it
    measured, and which one (what a lone request of ``items`` pairs could reach at best)."""
    sizes = {
        key: rate
        for key, rate in ceiling.get("by_batch_size", {}).items()
        if int(key.split()[0]) <= items
    }
    if not sizes:
        return None
    key = max(sizes, key=sizes.__getitem__)
    return sizes[key], f"batch {key}"


def lone_request_row(url: str, ceiling: dict[str, Any], seed: int) -> Row:
    requests = scoring_requests(
        LONE_WARMUP + LONE_REQUESTS,
        min_items=LONE_ITEMS,
        max_items=LONE_ITEMS,
        seed=seed + 21,
        rerank_share=0.0,
        cache=False,
    )
    timed = sequential(url, requests)[LONE_WARMUP:]
    ok = [latency for latency, status in timed if status == 200]
    p50_s = percentile(ok, 50) if ok else None
    ratio = per_pair_ratio(p50_s, LONE_ITEMS, ceiling["pairs_per_s"]) if p50_s else None
    failures = lone_request_failures([status for _, status in timed], ratio)
    best_pair_ms = 1000 / ceiling["pairs_per_s"]
    small = small_batch_pairs_per_s(ceiling, LONE_ITEMS)
    return Row(
        "Lone small request vs the raw session",
        f"{LONE_REQUESTS} sequential {LONE_ITEMS}-item /score requests on an idle server "
        f"(after {LONE_WARMUP} untimed), score cache bypassed",
        not failures,
        f"p50 / {LONE_ITEMS} <= {LONE_LIMIT}x the raw session's best per-pair cost "
        "(same graph, provider and threads, this machine, this run)",
        f"p50 {_ms(p50_s)} = {_ms(p50_s / LONE_ITEMS if p50_s else None, 2)} a pair, p99 "
        f"{_ms(percentile(ok, 99) if ok else None)}; {_ceiling_text(ceiling)} = "
        f"{best_pair_ms:.2f} ms a pair; ratio {_x(ratio)}"
        + (
            f" (context: the raw session's own best at batches of at most {LONE_ITEMS} "
            f"pairs, {small[1]}, is {1000 / small[0]:.2f} ms a pair = "
            f"{1000 / small[0] / best_pair_ms:.2f}x its best)"
            if small
            else ""
        )
        + why_not(failures),
        {
            "latencies_ms": [round(x * 1000, 1) for x in ok],
            "p50_ms": _round_ms(p50_s),
            "ratio": ratio,
            "ceiling": ceiling,
            "failures": failures,
        },
    )


def sequential(url: str, requests: Sequence[Prepared]) -> list[tuple[float, int]]:
    """(latency s, status) of each request sent alone, one after another, one connection."""
    out = []
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        for prepared in requests:
            t0 = time.monotonic()
            r = client.post(
                prepared.path, content=prepared.body, headers={"content-type": "application/json"}
            )
            out.append((time.monotonic() - t0, r.status_code))
    return out


# --------------------------------------------------------------------------- score cache


def cache_lookups(url: str) -> tuple[float, float]:
    """(hits, misses) of the score cache so far, from ``/metrics``."""
    text = metrics_text(url)
    return metric_sum(text, CACHE_LOOKUPS, result="hit"), metric_sum(
        text, CACHE_LOOKUPS, result="miss"
    )


def cache_failures(
    latencies_s: Sequence[float], statuses: Sequence[int], hits: float, lookups: float
) -> list[str]:
    """Held: every repeat 200, p50 within the limit, every pair of the repeats a hit."""
    out = []
    bad = Counter(s for s in statuses if s != 200)
    if bad:
        out.append(f"statuses {dict(bad)}")
    if not latencies_s:
        out.append("no answer to time")
    elif (p50_s := percentile(latencies_s, 50)) > CACHE_P50_LIMIT_S:
        out.append(f"p50 {p50_s * 1000:.1f} ms > {CACHE_P50_LIMIT_S * 1000:g} ms")
    if lookups <= 0:
        out.append(f"no {CACHE_LOOKUPS} counted")
    elif hits < lookups:
        out.append(f"hit rate of the repeats {hits / lookups:.1%} (< 100%)")
    return out


def cache_row(url: str, seed: int) -> Row:
    (request,) = scoring_requests(
        1, min_items=CACHE_ITEMS, max_items=CACHE_ITEMS, seed=seed + 31, rerank_share=0.0
    )
    hits0, misses0 = cache_lookups(url)
    ((first_s, first_status),) = sequential(url, [request])
    hits1, misses1 = cache_lookups(url)
    repeats = sequential(url, [request] * CACHE_REPEATS)
    hits2, misses2 = cache_lookups(url)
    repeat_hits, repeat_lookups = hits2 - hits1, (hits2 - hits1) + (misses2 - misses1)
    ok = [latency for latency, status in repeats if status == 200]
    failures = cache_failures(ok, [s for _, s in repeats], repeat_hits, repeat_lookups)
    all_lookups = (hits2 + misses2) - (hits0 + misses0)
    overall = (hits2 - hits0) / all_lookups if all_lookups else None
    return Row(
        "Score cache",
        f"one {CACHE_ITEMS}-item /score request, then the same request {CACHE_REPEATS} times "
        "in a row on an idle server",
        not failures,
        f"repeats answered 200 in <= {CACHE_P50_LIMIT_S * 1000:g} ms p50; every pair of the "
        f"repeats a hit by /metrics ({CACHE_LOOKUPS})",
        f"first answer {first_status} in {_ms(first_s)} ({misses1 - misses0:.0f} misses, "
        f"{hits1 - hits0:.0f} hits); repeats p50 {_ms(percentile(ok, 50) if ok else None, 2)}, "
        f"p99 {_ms(percentile(ok, 99) if ok else None, 2)}; /metrics: {repeat_hits:.0f} hits "
        f"of {repeat_lookups:.0f} lookups during the repeats, hit rate over the row "
        f"{'n/a' if overall is None else f'{overall:.1%}'}" + why_not(failures),
        {
            "first_ms": _round_ms(first_s),
            "latencies_ms": [round(x * 1000, 2) for x in ok],
            "repeat_hits": repeat_hits,
            "repeat_lookups": repeat_lookups,
            "hit_rate": overall,
            "failures": failures,
        },
    )


# --------------------------------------------------------------------------- fan-out


def fanout_failures(runs: Sequence[Counter[int]], per_run: int) -> list[str]:
    """Held: every request of every run answered 200."""
    out = []
    for i, statuses in enumerate(runs, 1):
        ok = statuses.get(200, 0)
        if ok != per_run or sum(statuses.values()) != per_run:
            out.append(f"run {i}: {ok}/{per_run} answered 200 ({dict(sorted(statuses.items()))})")
    return out


async def _burst(url: str, requests: Sequence[Prepared], timeout_s: float) -> Counter[int]:
    async def one(prepared: Prepared) -> int:
        try:
            status, _ = await rawhttp.post(url, prepared.path, prepared.body, timeout_s=timeout_s)
        except rawhttp.NoAnswer:
            return 0
        return status

    return Counter(await asyncio.gather(*(one(p) for p in requests)))


def fanout_row(url: str, deadline_s: float, seed: int) -> Row:
    requests = scoring_requests(
        FANOUT_REQUESTS * FANOUT_RUNS,
        min_items=FANOUT_ITEMS,
        max_items=FANOUT_ITEMS,
        seed=seed + 41,
        rerank_share=0.0,
        cache=False,
    )
    runs: list[Counter[int]] = []
    walls: list[float] = []
    for i in range(FANOUT_RUNS):
        chunk = requests[i * FANOUT_REQUESTS : (i + 1) * FANOUT_REQUESTS]
        t0 = time.monotonic()
        runs.append(asyncio.run(_burst(url, chunk, deadline_s + 10)))
        walls.append(time.monotonic() - t0)
        time.sleep(0.5)  # idle again: each run is a burst on an idle server
    failures = fanout_failures(runs, FANOUT_REQUESTS)
    per_run = ", ".join(
        f"{r.get(200, 0)}/{FANOUT_REQUESTS} in {w * 1000:.0f} ms"
        for r, w in zip(runs, walls, strict=True)
    )
    total_ok = sum(r.get(200, 0) for r in runs)
    return Row(
        "Fan-out",
        f"{FANOUT_REQUESTS} concurrent {FANOUT_ITEMS}-item /score requests sent at once (one "
        f"connection each) on an idle server, {FANOUT_RUNS} runs, score cache bypassed",
        not failures,
        f"every one of the {FANOUT_REQUESTS * FANOUT_RUNS} answered 200, "
        f"{FANOUT_RUNS} runs of {FANOUT_RUNS}",
        f"{total_ok}/{FANOUT_REQUESTS * FANOUT_RUNS} answered 200; per run (200s, first send "
        f"to last answer): {per_run}" + why_not(failures),
        {
            "runs": [dict(r) for r in runs],
            "wall_ms": [round(w * 1000, 1) for w in walls],
            "failures": failures,
        },
    )


# --------------------------------------------------------------------------- peak


def peak_throughput(capacity_pairs_per_s: float, levels: dict[int, float]) -> tuple[int, float]:
    """(clients, pairs/s) of the best closed loop: the capacity's or a level with more clients."""
    best = (CAPACITY_CONCURRENCY, capacity_pairs_per_s)
    for clients, pairs_per_s in sorted(levels.items()):
        if pairs_per_s > best[1]:
            best = (clients, pairs_per_s)
    return best


def ceiling_failures(peak_pairs_per_s: float, ceiling_pairs_per_s: float) -> list[str]:
    ratio = peak_pairs_per_s / ceiling_pairs_per_s
    if ratio < CEILING_SHARE:
        return [f"service / raw ceiling {ratio:.2f} (< {CEILING_SHARE})"]
    return []


def peak_row(
    url: str,
    ceiling: dict[str, Any],
    capacity: Capacity | None,
    quick: bool,
    deadline_s: float,
    seed: int,
) -> Row:
    level_s = 5.0 if quick else 15.0
    requests = load_requests(seed)
    source = "the overload scenario's capacity run"
    if capacity is None:
        capacity, _ = measure_capacity(url, requests, 8.0 if quick else 20.0, deadline_s)
        source = "measured here (overload not run)"
    levels: dict[int, float] = {}
    statuses: dict[int, dict[int, int]] = {}
    for clients in PEAK_CONCURRENCY:
        samples, elapsed = asyncio.run(
            closed_loop(
                url,
                requests,
                clients,
                level_s,
                timeout_s=deadline_s + 10,
                honour_retry_after=True,
            )
        )
        levels[clients] = round(sum(s.items for s in samples if s.ok) / elapsed, 1)
        statuses[clients] = dict(sorted(Counter(s.status for s in samples).items()))
    clients, peak = peak_throughput(capacity.pairs_per_s, levels)
    ratio = peak / ceiling["pairs_per_s"]
    failures = ceiling_failures(peak, ceiling["pairs_per_s"])
    where = (
        f"the capacity's {CAPACITY_CONCURRENCY} clients reach the peak"
        if clients == CAPACITY_CONCURRENCY
        else f"peak at {clients} clients (more than the capacity's {CAPACITY_CONCURRENCY}, "
        "as loadtest.bench climbs)"
    )
    ladder = "; ".join(f"{c} clients {p} pairs/s {statuses[c]}" for c, p in sorted(levels.items()))
    return Row(
        "Service / raw ceiling at peak",
        f"closed loop, {ITEMS[0]}-{ITEMS[1]} items, cache bypassed: {CAPACITY_CONCURRENCY} "
        f"clients ({source}), then {', '.join(map(str, PEAK_CONCURRENCY))} clients "
        f"{level_s:.0f} s each (Retry-After honoured)",
        not failures,
        f"the service's peak pairs/s >= {CEILING_SHARE}x the raw session's best (same "
        "graph, provider and threads, this machine, this run)",
        f"capacity {capacity.pairs_per_s} pairs/s; {ladder}; {where}: {peak} pairs/s; "
        f"{_ceiling_text(ceiling)}; service / raw ceiling {ratio:.2f}" + why_not(failures),
        {
            "capacity_pairs_per_s": capacity.pairs_per_s,
            "capacity_source": source,
            "levels": levels,
            "statuses": statuses,
            "peak_clients": clients,
            "peak_pairs_per_s": peak,
            "ratio": round(ratio, 3),
            "ceiling": ceiling,
            "failures": failures,
        },
    )


# --------------------------------------------------------------------------- formatting


def _ms(seconds: float | None, digits: int = 0) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.{digits}f} ms"


def _round_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"
