"""``python -m loadtest.closed_loop_run``: the closed loop once, on real queries, end to end.

1. Start ``python -m service`` on the current package with the teacher shadow mirroring
   every ``/score`` request (``RELEVANCE_SHADOW_MIRROR_RATE=1``) into a JSONL file.
2. Replay queries of the data file (all splits, as live traffic would bring them; the
   evaluation splits' queries are dropped at ingest, and counted) with the candidates a
   ranking stack would send: BM25 over the catalogue, top ``--items``. Requests are paced
   to the teacher, which is the slow part: at most ``--in-flight`` mirrored requests wait.
3. Stop the service and run the training commands, printing each:
   ``ingest-mirror``, ``distill --size S`` (with the ingested pairs), ``export`` of that
   run as ``<models_dir>/<--candidate>``, ``gate`` against the current package.
4. Write ``<work>/closed_loop.json``: traffic, ingest counts, the run, the gate's numbers.

Promotion to a live service is a separate step (``python -m training promote``), since a
gated package goes to the production service, not to this replay's private one.

    python -m loadtest.closed_loop_run --config training/configs/cpu-full-teacher.toml \\
        --current models/minilm-homedepot --teacher-dir models/teacher-qwen05b-l14 \\
        --queries 400 --items 20 --work runs/closed-loop --version 1.3.0

The teacher's part (serve, replay, ingest) and the student's (distill, export, gate) can
run in different sessions: ``--until ingest`` stops after the first, ``--resume`` starts
the second from the traffic kept in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

log = logging.getLogger("closed_loop_run")
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def replay_requests(config_file: Path | None, queries: int, items: int, seed: int) -> list[dict]:
    """``queries`` distinct queries of the data file, each with its BM25 top ``items``."""
    import bm25s

    from training.artifacts import load_dataset
    from training.config import load_config

    dataset = load_dataset(load_config(config_file))
    products = dataset.products
    rng = np.random.default_rng(seed)
    distinct = dataset.labeled.drop_duplicates("query_key")["query"].to_numpy()
    chosen = rng.choice(distinct, size=min(queries, len(distinct)), replace=False).tolist()
    retriever = bm25s.BM25()
    titles = products["title"].tolist()
    retriever.index(
        bm25s.tokenize(titles, stopwords="en", show_progress=False), show_progress=False
    )
    tokens = bm25s.tokenize(chosen, stopwords="en", show_progress=False)
    hits, _ = retriever.retrieve(tokens, k=items, show_progress=False, n_threads=1)
    ids = products["product_id"].tolist()
    return [
        {"query": q, "items": [{"id": ids[i], "text": titles[i]} for i in row]}
        for q, row in zip(chosen, np.asarray(hits), strict=True)
    ]


def mirrored_done(client: httpx.Client) -> float:
    """Mirrored requests the teacher finished (any outcome), from ``/metrics``."""
    done = 0.0
    for line in client.get("/metrics").text.splitlines():
        if (
            line.startswith("relevance_shadow_requests_total{")
            and 'source="mirror"' in line
            and 'outcome="unavailable"' not in line
        ):
            done += float(line.rsplit(" ", 1)[1])
    return done


def serve_and_replay(args: argparse.Namespace, requests: list[dict], output: Path) -> dict:
    port = args.port or free_port()
    env = {
        **os.environ,
        "RELEVANCE_MODEL_DIR": str(args.current),
        "RELEVANCE_TEACHER_DIR": str(args.teacher_dir),
        "RELEVANCE_TEACHER_THREADS": str(args.teacher_threads),
        "RELEVANCE_SHADOW_MIRROR_RATE": "1",
        "RELEVANCE_SHADOW_QUEUE_SIZE": str(max(16, 2 * args.in_flight)),
        "RELEVANCE_SHADOW_TIMEOUT_S": "600",
        "RELEVANCE_SHADOW_OUTPUT": str(output),
        # Replayed queries repeat across runs: the score cache would not change what is
        # mirrored, but keep this service's numbers free of it.
        "RELEVANCE_SCORE_CACHE_MB": "0",
    }
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    log.info("$ %s", shlex.join(command))
    server = subprocess.Popen(command, cwd=REPO, env=env)
    started = time.monotonic()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"the service exited with {server.returncode}")
                try:
                    info = client.get("/info").json()
                    teacher = str((info.get("shadow") or {}).get("status"))
                    if client.get("/readyz").status_code == 200 and teacher == "ready":
                        break
                    if teacher.startswith("failed"):
                        raise SystemExit(f"the teacher did not load: {teacher}")
                except httpx.TransportError:
                    pass
                if time.monotonic() - started > args.start_timeout_s:
                    raise SystemExit("the service and its teacher did not get ready in time")
                time.sleep(1.0)
            log.info("service and teacher ready in %.0f s", time.monotonic() - started)
            model = info["model"]["manifest"]
            replay_started = time.monotonic()
            refused = 0
            for number, body in enumerate(requests, start=1):
                while number - 1 - mirrored_done(client) >= args.in_flight:
                    time.sleep(0.5)  # the teacher sets the pace
                response = client.post("/score", json=body)
                if response.status_code != 200:
                    refused += 1
                    log.warning("request %d: %d %s", number, response.status_code, response.text)
                if number % 25 == 0:
                    log.info("%d/%d requests sent", number, len(requests))
            while mirrored_done(client) < len(requests) - refused:
                time.sleep(1.0)
            return {
                "port": port,
                "served": {"name": model["name"], "version": model["version"]},
                "requests": len(requests),
                "pairs": sum(len(r["items"]) for r in requests),
                "refused": refused,
                "replay_seconds": round(time.monotonic() - replay_started, 1),
                "teacher": info["shadow"]["teacher"],
            }
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)


def training(
    stage: str, *extra: str, config: Path | None, ok: tuple[int, ...] = (0,)
) -> tuple[int, str]:
    """Run ``python -m training STAGE ...`` (logged as a command to copy); its status and
    standard output (the JSON report of ingest-mirror and gate)."""
    command = [sys.executable, "-m", "training", stage, *extra]
    if config is not None:
        command += ["--config", str(config)]
    log.info("$ %s", shlex.join(command))
    done = subprocess.run(command, cwd=REPO, check=False, stdout=subprocess.PIPE, text=True)
    if done.returncode not in ok:
        raise SystemExit(f"{stage} failed with exit status {done.returncode}")
    return done.returncode, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="training config (TOML/JSON)")
    parser.add_argument("--current", type=Path, required=True, help="the package serving now")
    parser.add_argument("--teacher-dir", type=Path, required=True, help="the teacher package")
    parser.add_argument("--teacher-threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--items", type=int, default=20, help="BM25 candidates per query")
    parser.add_argument("--in-flight", type=int, default=4, help="mirrored requests waiting")
    parser.add_argument("--size", type=int, default=0, help="distill: augmentation size")
    parser.add_argument("--candidate", default="minilm-homedepot-candidate")
    parser.add_argument("--version", default="0.0.candidate")
    parser.add_argument("--work", type=Path, default=Path("runs/closed-loop"))
    parser.add_argument("--port", type=int)
    parser.add_argument("--start-timeout-s", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--until",
        choices=("ingest", "gate"),
        default="gate",
        help="stop after ingest-mirror (the teacher's part; distill can follow later, "
        "with --resume) or run on through distill, export and gate",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the traffic already replayed into --work (mirror.jsonl and the traffic "
        "of closed_loop.json) instead of replaying it",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from training.artifacts import load_dataset, run_name
    from training.config import load_config
    from training.mirror_ingest import mirror_run_name, mirror_training_pairs

    args.work.mkdir(parents=True, exist_ok=True)
    output = args.work / "mirror.jsonl"
    path = args.work / "closed_loop.json"
    summary: dict[str, Any] = {}
    if args.resume:
        if not output.is_file() or not path.is_file():
            raise SystemExit(f"--resume: no replayed traffic in {args.work}")
        summary["traffic"] = json.loads(path.read_text())["traffic"]
    else:
        if output.exists():  # a file from an earlier run would be ingested twice over
            output.rename(output.with_suffix(f".{int(time.time())}.jsonl"))
        requests = replay_requests(args.config, args.queries, args.items, args.seed)
        summary["traffic"] = serve_and_replay(args, requests, output)

    # Ingest is idempotent: the same mirrored lines give the same file (named by content).
    _, report = training("ingest-mirror", str(output), config=args.config)
    summary["ingest"] = json.loads(report)
    if args.until == "ingest":
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        log.info("stopped after ingest; summary in %s (--resume goes on)", path)
        return 0
    config = load_config(args.config)
    mirror = mirror_training_pairs(config, load_dataset(config))
    if mirror is None:
        raise SystemExit("nothing was ingested for the configured teacher")
    run = mirror_run_name(run_name(args.size), len(mirror[0]))
    training("distill", "--size", str(args.size), config=args.config)
    candidate = config.path("models_dir") / args.candidate
    training(
        "export",
        "--student",
        run,
        "--set",
        f"paths.default_package={args.candidate}",
        "--set",
        f"export.version={args.version}",
        config=args.config,
    )
    status, _ = training(
        "gate",
        "--candidate",
        str(candidate),
        "--current",
        str(args.current),
        config=args.config,
        ok=(0, 1),
    )
    from training.gate import gate_verdict

    verdict = gate_verdict(candidate) or {}
    summary.update(
        run=run,
        mirror_pairs=len(mirror[0]),
        candidate=str(candidate),
        gate={k: verdict.get(k) for k in ("verdict", "failed", "checks", "heldback")},
        gate_exit_status=status,
    )
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log.info("gate %s; summary in %s", verdict.get("verdict"), path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
