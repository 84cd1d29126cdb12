"""Scenario (a), bad input: schema fuzzing of every endpoint over HTTP, then hostile requests.

The server runs with everything switched on, so that every endpoint is reachable: an admin
token (``PUT /admin/shadow``) and a stand-in teacher that answers (``/shadow/score``).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from loadtest.badinput import CaseResult, run_cases
from loadtest.fuzz import fuzz, load_schema
from loadtest.procstats import Sampler
from loadtest.reliability.common import Row, RunConfig, get_json, serving

ADMIN_TOKEN = "reliability-fuzz-token"


def run(cfg: RunConfig) -> list[Row]:
    examples = 100 if cfg.quick else 400
    env = {"RELEVANCE_ADMIN_TOKEN": ADMIN_TOKEN, "RELEVANCE_LOG_LEVEL": "warning"}
    with serving("fuzz", cfg, env=env, teacher="ok") as server, Sampler(server.process.pid) as proc:
        schema = load_schema(base_url=server.url)
        report = fuzz(schema, examples=examples, base_url=server.url, admin_token=ADMIN_TOKEN)
        limits = get_json(server.url + "/info")["limits"]
        hostile = asyncio.run(_hostile(server.url, limits))
        alive = get_json(server.url + "/healthz").get("status") == "ok"
    summary = report.summary()
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.items()))
    fuzz_held = not report.failures and report.server_errors == 0 and alive
    rows = [
        Row(
            "Fuzzing (schemathesis, OpenAPI)",
            f"{report.cases} generated requests over HTTP, {len(report.by_operation)} "
            f"operations, schema-valid and -invalid",
            fuzz_held,
            "no 5xx; every answer documented and matching the schema; invalid input refused "
            "with 4xx, valid input accepted",
            f"statuses {statuses}; 5xx: {report.server_errors} (+{report.deadline_504} 504 "
            f"for a client's own deadline_ms, each after that deadline); rule violations: "
            f"{len(report.failures)}; slowest answer {summary['max_latency_ms']:.0f} ms; "
            f"max RSS {proc.max_rss_mib} MiB",
            {"fuzz": summary},
        )
    ]
    failed = [r for r in hostile if not r.ok]
    by_status = Counter(r.status for r in hostile)
    slowest = max(hostile, key=lambda r: r.elapsed_s)
    rows.append(
        Row(
            "Hostile input (hand-written)",
            f"{len(hostile)} requests: unicode edge cases (emoji, RTL, combining marks, "
            "NUL/control characters, lone surrogates), 1 MB texts and queries, 10,000 items, "
            "bodies over the limit, 100,000-deep nesting, wrong types and content types",
            not failed,
            "expected status for each; UTF-8 JSON answers; scores finite in [0, 1], ids "
            "echoed; error bodies short (no echo of the input)",
            f"statuses {dict(sorted(by_status.items()))}; failures: {len(failed)}"
            + (f" ({'; '.join(f'{r.name}: {r.problem}' for r in failed[:3])})" if failed else "")
            + f"; slowest {slowest.name} {slowest.elapsed_s * 1000:.0f} ms",
            {
                "hostile": [
                    {
                        "name": r.name,
                        "status": r.status,
                        "ms": round(r.elapsed_s * 1000, 1),
                        "problem": r.problem,
                    }
                    for r in hostile
                ]
            },
        )
    )
    return rows


async def _hostile(url: str, limits: dict[str, int]) -> list[CaseResult]:
    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
        return await run_cases(client, limits)
