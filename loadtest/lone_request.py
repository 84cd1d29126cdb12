"""Where a lone small request's time goes: the client, the server's phases, the raw session.

``python -m loadtest.lone_request [--model DIR] [--items 10] [--env NAME=VALUE ...]``
starts the service on an idle machine, sends sequential ``/score`` requests of ``--items``
items (score cache bypassed), and prints the p50 of the client's latency and of the
server's ``x-total-time``, ``x-tokenization-time``, ``x-queue-time`` and
``x-inference-time``; then runs the same requests' pairs as single batches on the raw
session (the server's graph, two threads, spinning and not). The reliability run's lone
request row judges the ratio; this says which part of the time is the service's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from loadtest.reliability.common import RunConfig, get_json, scoring_requests, serving

WARMUP = 3
HEADERS = ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time")


def served_phases(url: str, bodies: Sequence[bytes]) -> dict[str, float]:
    """p50 ms of the client's latency and of each server timing header."""
    rows: list[list[float]] = []
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        for body in bodies:
            t0 = time.perf_counter()
            answer = client.post(
                "/score", content=body, headers={"content-type": "application/json"}
            )
            answer.raise_for_status()
            rows.append(
                [(time.perf_counter() - t0) * 1000] + [float(answer.headers[h]) for h in HEADERS]
            )
    rows = rows[WARMUP:]
    names = ("client", *(h.removeprefix("x-").removesuffix("-time") for h in HEADERS))
    return {name: statistics.median(r[i] for r in rows) for i, name in enumerate(names)}


def raw_session(model: Path, variant: str, bodies: Sequence[bytes]) -> dict[str, float]:
    """p50 ms of tokenizing and of running each request's pairs as one batch, raw."""
    from service.features import encode_pairs, load_tokenizer
    from service.model_package import load_package
    from service.scorers import OnnxScorer

    package = load_package(model)
    tokenizer = load_tokenizer(package.tokenizer_path, package.manifest.max_length)
    out = {}
    for spinning in (True, False):
        scorer = OnnxScorer.load(package, "cpu", variant, intra_op_threads=2, spinning=spinning)  # type: ignore[arg-type]
        times = []
        for body in bodies:
            request = json.loads(body)
            texts = [item["text"] for item in request["items"]]
            batch = encode_pairs(tokenizer, [request["query"]] * len(texts), texts)
            t0 = time.perf_counter()
            scorer.run(batch)
            times.append((time.perf_counter() - t0) * 1000)
        scorer.close()
        out[f"run ({'spinning' if spinning else 'no spinning'})"] = statistics.median(
            times[WARMUP:]
        )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.lone_request")
    parser.add_argument("--model", type=Path, default=Path("models/minilm-homedepot"))
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    prepared = scoring_requests(
        WARMUP + args.requests,
        min_items=args.items,
        max_items=args.items,
        seed=21,
        rerank_share=0.0,
        cache=False,
    )
    bodies = [p.body for p in prepared]
    cfg = RunConfig(model=args.model, quick=True, log_dir=Path("runs/lone_request"))
    with serving("lone-request", cfg, env=env) as server:
        model = get_json(server.url + "/info")["model"]
        phases = served_phases(server.url, bodies)
    print(f"{args.items}-item /score, p50 of {args.requests} sequential requests (ms):")
    for name, value in phases.items():
        print(f"  {name:14s} {value:7.2f}")
    print(
        f"raw session, {model['execution']['variant']} graph, 2 threads, one batch a request (ms):"
    )
    for name, value in raw_session(args.model, model["execution"]["variant"], bodies).items():
        print(f"  {name:22s} {value:7.2f}")


if __name__ == "__main__":
    main()
