"""The representation student against the cross-encoder, side by side in one run (issue 17).

``python -m loadtest.representation_bench --model models/<representation package>
--cross-encoder models/minilm-homedepot`` starts the service on each package in turn
(loopback, score cache off so that every pair reaches a model) and measures, with the
same request shape (one query, 100 Home Depot titles) and the same load (``--concurrency``
closed-loop clients, 2 by default: moderate on two cores):

1. ``cross_encoder_100``: the cross-encoder package alone;
2. ``unseen_100``: the representation package, every item new to its store (no title is
   sent twice, so each request encodes its 100 items);
3. ``seen_100``: the same, every item already stored (the item sets are sent once before);
4. ``cascade20_seen_100``: seen items, the best 20 re-scored by the cross-encoder
   (``cascade_top_k`` 20; the service runs with ``RELEVANCE_CASCADE_MODEL_DIR``);
5. memory: the store's own estimate per item after the runs, and a catalogue of
   ``--catalogue-items`` (50,000) distinct titles preloaded at start-up
   (``RELEVANCE_ITEM_PRELOAD``): time to ready, the store's bytes, and the server's
   resident memory against the same server without a catalogue.

Latencies are client-side, per request (p50/p99, ms). A benchmark, not a test: run it on a
quiet machine; ``--quick`` (3 s a phase, 5,000 catalogue items) only shows it works. JSON
goes to ``--out`` and a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from loadtest.loadgen import Prepared, closed_loop
from loadtest.procstats import snapshot
from loadtest.reliability.common import git_commit, machine
from loadtest.servers import free_port, running, service_argv, start_server
from loadtest.stats import percentile
from loadtest.workload import Catalogue

ITEMS = 100
SEEN_SETS = 20
CASCADE_K = 20


def unique_titles(catalogue: Catalogue, needed: int) -> list[str]:
    """``needed`` distinct titles: the catalogue's, then numbered variants if it is short."""
    titles = list(catalogue.titles)
    k = 0
    while len(titles) < needed:
        titles.append(f"{catalogue.titles[k % len(catalogue.titles)]} (variant {k})")
        k += 1
    return titles[:needed]


def write_catalogue(path: Path, titles: Sequence[str]) -> Path:
    """``titles`` as a preload catalogue (JSONL, ids ``c0``, ``c1``, ...) at ``path``."""
    with path.open("w") as handle:
        for i, title in enumerate(titles):
            handle.write(json.dumps({"id": f"c{i}", "text": title}) + "\n")
    return path


def _bodies(
    queries: Sequence[str], item_sets: Sequence[list[str]], *, rerank: bool, **extra: Any
) -> list[Prepared]:
    rng = random.Random(1)
    out = []
    for items in item_sets:
        query = rng.choice(queries)
        if rerank:  # the cross-encoder's comparison row: the same texts through /rerank
            body: dict[str, Any] = {"query": query, "texts": items, **extra}
            path = "/rerank"
        else:
            body = {
                "query": query,
                "items": [{"id": f"p{zlib.crc32(t.encode())}", "text": t} for t in items],
                **extra,
            }
            path = "/score"
        out.append(Prepared(path.strip("/"), path, json.dumps(body).encode(), len(items)))
    return out


async def _phase(url: str, bodies: list[Prepared], args: argparse.Namespace) -> dict[str, Any]:
    samples, elapsed = await closed_loop(
        url, bodies, args.concurrency, args.duration_s, max_requests=len(bodies)
    )
    ok = [s.latency_s * 1000 for s in samples if s.ok]
    return {
        "requests": len(samples),
        "failed": len(samples) - len(ok),
        "requests_per_s": round(len(samples) / elapsed, 2) if elapsed else None,
        "p50_ms": round(percentile(ok, 50), 1) if ok else None,
        "p99_ms": round(percentile(ok, 99), 1) if ok else None,
    }


def _get(url: str, path: str) -> Any:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        response = client.get(path)
        response.raise_for_status()
        return response.json() if path != "/metrics" else response.text


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_service(model: Path, env: dict[str, str], log_dir: Path, name: str) -> Any:
    """The service on ``model`` (loopback, score cache off, quiet logs), plus ``env``."""
    port = free_port()
    base = {"RELEVANCE_SCORE_CACHE_MB": "0", "RELEVANCE_LOG_LEVEL": "warning"}
    return start_server(name, service_argv(model, port), port, env={**base, **env}, log_dir=log_dir)


def run(args: argparse.Namespace) -> dict[str, Any]:
    catalogue = Catalogue.load(args.data)
    titles = unique_titles(catalogue, SEEN_SETS * ITEMS + args.unseen_sets * ITEMS)
    seen_sets = [titles[i * ITEMS : (i + 1) * ITEMS] for i in range(SEEN_SETS)]
    rest = titles[SEEN_SETS * ITEMS :]
    unseen_sets = [rest[i * ITEMS : (i + 1) * ITEMS] for i in range(args.unseen_sets)]
    queries = catalogue.queries
    log_dir = Path(tempfile.mkdtemp(prefix="representation-bench-"))
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(),
        "machine_at_start": machine(),
        "data": catalogue.source,
        "concurrency": args.concurrency,
        "duration_s": args.duration_s,
        "items_per_request": ITEMS,
        "phases": {},
    }
    phases = out["phases"]

    # 1. The cross-encoder alone, on the seen sets' texts (its score cache is off).
    ce = start_service(args.cross_encoder, {}, log_dir, "cross-encoder")
    with running(ce, "/readyz", args.ready_timeout_s) as live:
        many = seen_sets * 50  # cycled: the cache is off, so repeats cost the model each time
        phases["cross_encoder_100"] = asyncio.run(
            _phase(live.url, _bodies(queries, many, rerank=True), args)
        )

    # 2-4. The representation package (with the cross-encoder as its cascade).
    env = {
        "RELEVANCE_CASCADE_MODEL_DIR": str(args.cross_encoder),
        "RELEVANCE_ITEM_STORE_MB": "1024",
    }

    rep = start_service(args.model, env, log_dir, "representation")
    with running(rep, "/readyz", args.ready_timeout_s) as live:
        idle = snapshot(live.process.pid)
        info = _get(live.url, "/info")["model"]
        out["package"] = {
            "name": info["manifest"]["name"],
            "version": info["manifest"]["version"],
            "architecture": info["manifest"]["architecture"],
            "variant": info["execution"]["variant"],
            "item_vectors": {
                k: info["manifest"]["item_vectors"][k]
                for k in ("dim", "dtype", "per_item", "bytes_per_item", "catalogue_bytes")
            },
        }
        phases["unseen_100"] = asyncio.run(
            _phase(live.url, _bodies(queries, unseen_sets, rerank=False), args)
        )
        # Store the seen sets, then measure on them (cycled: every item a hit).
        asyncio.run(
            closed_loop(live.url, _bodies(queries, seen_sets, rerank=False), 1, 600.0,
                        max_requests=len(seen_sets))
        )  # fmt: skip
        before = _get(live.url, "/metrics")
        seen = _bodies(
            random.Random(2).sample(queries, len(queries)), seen_sets * 200, rerank=False
        )
        phases["seen_100"] = asyncio.run(_phase(live.url, seen, args))
        cascade = _bodies(queries, seen_sets * 200, rerank=False, cascade_top_k=CASCADE_K)
        phases["cascade20_seen_100"] = asyncio.run(_phase(live.url, cascade, args))
        after = _get(live.url, "/metrics")
        misses = _metric(after, 'relevance_item_store_lookups_total{result="miss"}') - _metric(
            before, 'relevance_item_store_lookups_total{result="miss"}'
        )
        phases["seen_100"]["store_misses_during_seen_phases"] = misses
        store = _get(live.url, "/info")["model"]["item_store"]
        out["store_after_runs"] = {
            **store,
            "bytes_per_item": round(store["bytes"] / store["entries"], 1),
        }

    # 5. A catalogue preloaded at start-up.
    extra = unique_titles(catalogue, args.catalogue_items)
    catalogue_file = write_catalogue(log_dir / "catalogue.jsonl", extra)
    pre = start_service(
        args.model,
        # As the server above (the cascade's cross-encoder loaded too), plus the catalogue.
        {**env, "RELEVANCE_ITEM_PRELOAD": str(catalogue_file), "RELEVANCE_ITEM_STORE_MB": "4096"},
        log_dir,
        "representation-preload",
    )
    began = time.monotonic()
    with running(pre, "/readyz", args.ready_timeout_s + args.catalogue_items / 50) as live:
        ready_s = time.monotonic() - began
        loaded = snapshot(live.process.pid)
        store = _get(live.url, "/info")["model"]["item_store"]
    rss_delta = (loaded.rss_mib - idle.rss_mib) if loaded and idle else None
    out["catalogue"] = {
        "items": len(extra),
        "start_to_ready_s": round(ready_s, 1),
        "store_entries": store["entries"],
        "store_bytes": store["bytes"],
        "store_bytes_per_item": round(store["bytes"] / max(1, store["entries"]), 1),
        "store_mb_for_50k": round(store["bytes"] / max(1, store["entries"]) * 50_000 / 1e6, 1),
        "rss_idle_mib": idle.rss_mib if idle else None,
        "rss_with_catalogue_mib": loaded.rss_mib if loaded else None,
        "rss_delta_mib": round(rss_delta, 1) if rss_delta is not None else None,
    }
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out["log_dir"] = str(log_dir)
    return out


def table(result: dict[str, Any]) -> str:
    where = result.get("machine_at_start", {})
    lines = [
        f"{result.get('date', '?')}, commit {result.get('commit', '?')}, {where.get('cpu', '?')} "
        f"({where.get('cores', '?')} cores), load average at start {where.get('load_average')}",
        "",
        f"Representation vs cross-encoder, {result['items_per_request']} items a request, "
        f"{result['concurrency']} closed-loop clients, {result['duration_s']} s a phase "
        f"({result['data']}); package {result.get('package', {})}",
        "",
        "| phase | requests | failed | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, p in result["phases"].items():
        lines.append(
            f"| {name} | {p['requests']} | {p['failed']} | {p['requests_per_s']} | "
            f"{p['p50_ms']} | {p['p99_ms']} |"
        )
    c = result["catalogue"]
    lines += [
        "",
        f"Store after the runs: {result['store_after_runs']['entries']} items, "
        f"{result['store_after_runs']['bytes_per_item']} B per item (estimate).",
        f"Catalogue of {c['items']:,} items preloaded: ready in {c['start_to_ready_s']} s, "
        f"store {c['store_bytes'] / 1e6:.1f} MB ({c['store_bytes_per_item']} B per item, "
        f"{c['store_mb_for_50k']} MB for 50,000), RSS {c['rss_idle_mib']} -> "
        f"{c['rss_with_catalogue_mib']} MiB (+{c['rss_delta_mib']}).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.representation_bench")
    parser.add_argument("--model", type=Path, required=True, help="representation package")
    parser.add_argument("--cross-encoder", type=Path, default=Path("models/minilm-homedepot"))
    parser.add_argument("--data", type=Path, default=None, help="Home Depot train.csv")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--unseen-sets", type=int, default=150, help="requests of new items")
    parser.add_argument("--catalogue-items", type=int, default=50_000)
    parser.add_argument("--ready-timeout-s", type=float, default=180.0)
    parser.add_argument("--quick", action="store_true", help="3 s phases, 5,000 catalogue items")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/representation.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.duration_s, args.catalogue_items, args.unseen_sets = 3.0, 5_000, 40
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwritten to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
