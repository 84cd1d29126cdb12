"""``python -m loadtest.bench``: this service against its ceiling, a naive baseline and a peer.

One run, one machine, one model, one request mix (queries and candidate lists drawn from
the data, 20-200 candidates, /score and /rerank mixed):

1. ceiling: the raw ONNX Runtime session (same graph and provider as the service), no
   HTTP, pre-tokenized batches in request order, at its best batch size (pairs/s);
2. service: ``python -m service`` on 127.0.0.1, end to end;
3. naive: ``loadtest/naive_server.py``, the same student in PyTorch per request, no
   micro-batching;
4. peer: infinity-emb (``.venv-infinity``, see ``loadtest/setup_infinity.sh``) serving the
   same student with its torch engine; if it is not there or does not start, why;
5. sentence-transformers ``CrossEncoder.predict`` on the same pairs, offline.

Each HTTP system runs alone (the others stopped) under closed-loop load at increasing
concurrency (httpx clients in this process, loopback only, bounded in time and count).
Reported per system: pairs/s at the highest concurrency whose p99 stays within the SLO,
the p99 at a fixed moderate concurrency, and the peak pairs/s at any latency; then the
ratios service/naive, service/peer and service/ceiling. Writes ``bench.json`` and
``latency_vs_load.png`` under ``--out`` and ends with one JSON line holding every figure.

    python -m loadtest.bench --quick            # under 3 minutes on 2 cores
    python -m loadtest.bench --model models/minilm-homedepot --torch-model runs/students/NAME

Why one module of ~740 lines: it is a command, not a library; the plan, the five systems'
runs and the report read top to bottom in the order they happen, and the load generator,
servers and statistics it uses live in their own modules.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtest.loadgen import Adapter, Prepared, check_answer, closed_loop, infinity_api, project_api
from loadtest.naive_server import TorchModelNotFound, find_torch_model
from loadtest.servers import (
    REPO_ROOT,
    ServerProcess,
    batch_stats,
    free_port,
    mean_batch,
    service_argv,
    start_server,
)
from loadtest.stats import Slo, summarize
from loadtest.workload import Catalogue, Mix, RequestFactory, ScoringRequest, parse_range

DEFAULT_MODEL = REPO_ROOT / "models" / "minilm-homedepot"
INFINITY_VENV = REPO_ROOT / ".venv-infinity"
SETUP_INFINITY = REPO_ROOT / "loadtest" / "setup_infinity.sh"
TARGETS = {"service_over_naive": 3.0, "service_over_peer": 1.3, "service_over_ceiling": 0.8}


@dataclass(frozen=True)
class Plan:
    """How long and how hard each part runs (``--quick`` shrinks everything)."""

    concurrency: tuple[int, ...]
    moderate: int
    level_s: float
    requests: int
    warmup_requests: int
    offline_pairs: int
    offline_budget_s: float
    batch_sizes: tuple[int, ...]
    startup_timeout_s: float = 300.0
    max_requests_per_level: int = 20_000


# Moderate load is 2 clients: on 2 CPU cores one ~100-item request already keeps the
# machine busy for ~0.5 s, so 2 in flight is about its capacity and 4 is overload.
FULL = Plan(
    concurrency=(1, 2, 4, 8, 16, 32, 64),
    moderate=2,
    level_s=15.0,
    requests=600,
    warmup_requests=20,
    # 2,048 pairs: every batch size of the ceiling runs >= 10 s on 2 cores (4,096 took
    # 7 minutes over the 16 settings for the same best figure).
    offline_pairs=2048,
    offline_budget_s=8.0,
    batch_sizes=(1, 4, 8, 16, 32, 64, 128, 256),
)
QUICK = Plan(
    concurrency=(1, 2, 4, 8),
    moderate=2,
    level_s=4.0,
    requests=200,
    warmup_requests=6,
    offline_pairs=1024,
    offline_budget_s=1.5,
    batch_sizes=(1, 8, 32, 64, 128),
    startup_timeout_s=120.0,
)


@dataclass
class HttpResult:
    """Figures of one HTTP system over the concurrency ladder."""

    name: str
    levels: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def figures(self, moderate: int) -> dict[str, Any]:
        if self.error and not self.levels:
            return {"error": self.error, **self.notes}
        held = [lv for lv in self.levels if lv["slo"]["held"]]
        at_slo = max(held, key=lambda lv: lv["concurrency"]) if held else None
        fixed = next((lv for lv in self.levels if lv["concurrency"] == moderate), None)
        return {
            "pairs_per_s_at_slo": at_slo["pairs_per_s"] if at_slo else 0.0,
            "concurrency_at_slo": at_slo["concurrency"] if at_slo else None,
            "p99_ms_at_moderate": fixed["p99_ms"] if fixed else None,
            "peak_pairs_per_s": max((lv["pairs_per_s"] for lv in self.levels), default=0.0),
            **({"error": self.error} if self.error else {}),
            **self.notes,
            "levels": self.levels,
        }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short run (under 3 minutes on 2 cores)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model package directory")
    p.add_argument(
        "--torch-model",
        type=Path,
        help="the student's save_pretrained directory (default: found from the package)",
    )
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--variant", choices=("auto", "fp32", "fp16", "int8"), default="auto")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="inference threads for every system (ORT intra-op, torch); 0: each one's default",
    )
    p.add_argument("--items", default="20-200", help="candidates per request, MIN-MAX")
    p.add_argument("--rerank-share", type=float, default=0.5, help="share of /rerank requests")
    p.add_argument("--concurrency", help="comma-separated ladder (default by mode)")
    p.add_argument("--level-seconds", type=float, help="seconds of load per level")
    p.add_argument("--data", type=Path, help="data file (default: the shared Home Depot file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slo-ms", type=float, help="default: the service's RELEVANCE_SLO_LATENCY_MS")
    p.add_argument("--slo-items", type=int, help="default: the service's RELEVANCE_SLO_ITEMS")
    p.add_argument("--slo-target", type=float, default=0.99)
    p.add_argument(
        "--systems",
        default="service,naive,infinity",
        help="HTTP systems to run, comma-separated (service, naive, infinity)",
    )
    p.add_argument(
        "--no-peer-setup",
        action="store_true",
        help="do not run setup_infinity.sh when .venv-infinity is missing (never in --quick)",
    )
    p.add_argument("--out", type=Path, help="output directory (default runs/bench/<time>)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (kill, timeout) unwinds like Ctrl-C, so each server's finally stops it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    plan = QUICK if args.quick else FULL
    if args.concurrency:
        plan = _replace(plan, concurrency=tuple(int(c) for c in args.concurrency.split(",")))
    if args.level_seconds:
        plan = _replace(plan, level_s=args.level_seconds)
    if plan.moderate not in plan.concurrency:
        plan = _replace(plan, moderate=plan.concurrency[len(plan.concurrency) // 2])
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    out_dir = args.out or REPO_ROOT / "runs" / "bench" / f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    slo = service_slo(args.slo_ms, args.slo_items, args.slo_target)
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    if load_at_start > (os.cpu_count() or 1):
        _log(
            f"warning: load average {load_at_start:.1f} on {os.cpu_count()} CPUs before the "
            "run: other processes compete for the cores and the figures will be noisy"
        )

    manifest_path = args.model / "manifest.json"
    if not manifest_path.is_file():
        print(
            f"error: no model package at {args.model} (manifest.json missing). Build the real "
            "one with `python -m training`, or a tiny one for a smoke run with "
            "`python -m loadtest.tiny_model runs/tiny` and pass --model runs/tiny/package "
            "--torch-model runs/tiny/student",
            file=sys.stderr,
        )
        return 2
    manifest = json.loads(manifest_path.read_text())
    max_length = int(manifest["max_length"])
    try:
        torch_dir: Path | None = find_torch_model(args.model, args.torch_model)
        torch_error = None
    except TorchModelNotFound as exc:
        torch_dir, torch_error = None, str(exc)

    catalogue = Catalogue.load(args.data)
    low, high = parse_range(args.items)
    mix = Mix(low, high, rerank_share=args.rerank_share, seed=args.seed)
    requests = RequestFactory(catalogue, mix).take(plan.requests)
    pairs = [(r.query, t) for r in requests for t in r.texts][: plan.offline_pairs]
    _log(
        f"workload: {len(requests)} requests from {catalogue.source}, "
        f"{sum(len(r.texts) for r in requests) / len(requests):.0f} candidates on average; "
        f"SLO: {slo.describe()}"
    )

    ceiling = measure_ceiling(args.model, args.provider, args.variant, args.threads, pairs, plan)
    _log(
        f"ceiling: {ceiling.get('pairs_per_s')} pairs/s at batch {ceiling.get('batch_size')} "
        f"({ceiling.get('variant')} on {ceiling.get('provider')})"
    )

    peer_python, peer_error = infinity_python(setup=not (args.quick or args.no_peer_setup))
    if torch_error:
        crossencoder: dict[str, Any] = {"error": torch_error}
    elif peer_python is None:
        crossencoder = {"error": f"sentence-transformers lives in .venv-infinity: {peer_error}"}
    else:
        crossencoder = measure_crossencoder(
            peer_python,
            torch_dir,  # type: ignore[arg-type]
            pairs,
            max_length,
            args.threads,
            plan,
        )
    _log(f"CrossEncoder.predict: {crossencoder.get('pairs_per_s', crossencoder.get('error'))}")

    results: dict[str, HttpResult] = {}
    log_dir = out_dir / "logs"
    for name in systems:
        if name == "service":
            env = {
                "RELEVANCE_PROVIDER": args.provider,
                "RELEVANCE_VARIANT": args.variant,
                "RELEVANCE_LOG_LEVEL": "warning",
                "RELEVANCE_INTRA_OP_THREADS": str(args.threads),
            }
            port = free_port()
            server = start_server(
                "service", service_argv(args.model, port), port, env=env, log_dir=log_dir
            )
            results[name] = run_http(
                server, "/readyz", project_api, requests, plan, slo, batch_metrics=True
            )
        elif name == "naive":
            if torch_dir is None:
                results[name] = HttpResult(name, error=torch_error)
                continue
            port = free_port()
            argv = [
                sys.executable, "-m", "loadtest.naive_server", "--model", str(args.model),
                "--torch-model", str(torch_dir), "--port", str(port),
                "--threads", str(args.threads),
            ]  # fmt: skip
            server = start_server("naive", argv, port, log_dir=log_dir)
            results[name] = run_http(server, "/healthz", project_api, requests, plan, slo)
        elif name == "infinity":
            if torch_dir is None:
                results[name] = HttpResult(name, error=torch_error)
            elif peer_python is None:
                results[name] = HttpResult(name, error=peer_error)
            else:
                port = free_port()
                home = Path(tempfile.mkdtemp(prefix="infinity-home-"))
                argv = [
                    str(INFINITY_VENV / "bin" / "infinity_emb"), "v2",
                    "--model-id", str(torch_dir), "--engine", "torch", "--device", args.provider,
                    "--host", "127.0.0.1", "--port", str(port), "--no-model-warmup",
                ]  # fmt: skip
                env = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_HOME": str(home)}
                if args.threads:
                    # torch takes its intra-op thread count from these at start-up.
                    env |= {
                        "OMP_NUM_THREADS": str(args.threads),
                        "MKL_NUM_THREADS": str(args.threads),
                    }
                server = start_server("infinity", argv, port, env=env, log_dir=log_dir)
                results[name] = run_http(server, "/health", infinity_api, requests, plan, slo)
                results[name].notes.update(_infinity_version(peer_python))
        else:
            results[name] = HttpResult(name, error=f"unknown system {name!r}")

    figures = assemble(args, plan, slo, manifest, catalogue, mix, ceiling, crossencoder, results)
    figures["wall_s"] = round(time.monotonic() - started, 1)
    figures["machine"]["load_avg_at_start"] = round(load_at_start, 2)
    (out_dir / "bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    plot_path = plot(figures, out_dir / "latency_vs_load.png")
    print(summary_table(figures))
    print(f"wrote {out_dir / 'bench.json'} and {plot_path} in {figures['wall_s']} s")
    print(json.dumps(figures, separators=(",", ":")))
    return 0


# --------------------------------------------------------------------------- parts


def service_slo(latency_ms: float | None, items: int | None, target: float) -> Slo:
    """The SLO the service itself is configured with (env included), unless overridden."""
    from service.settings import Settings

    settings = Settings()
    return Slo(latency_ms or settings.slo_latency_ms, items or settings.slo_items, target)


def measure_ceiling(
    model: Path,
    provider: str,
    variant: str,
    threads: int,
    pairs: Sequence[tuple[str, str]],
    plan: Plan,
    side_by_side: int = 0,
) -> dict[str, Any]:
    """Raw session throughput per batch size on pre-tokenized batches; best one wins.

    Loads the graph the service would load (same package, provider and variant choice).
    Pairs are batched in request order and, as a second try, sorted by token length (the
    least padding any batcher could reach); each batch is padded to its longest pair and
    only ``session.run`` is timed. ``side_by_side`` > 1 also tries that many sessions of
    one thread each running the batches at once (the service's ``model_instances``). The
    ceiling is the best of every try.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from service.features import encode_pairs, load_tokenizer
    from service.model_package import load_package
    from service.scorers import OnnxScorer

    package = load_package(model)
    tokenizer = load_tokenizer(package.tokenizer_path, package.manifest.max_length)
    lengths = encode_pairs(tokenizer, [q for q, _ in pairs], [t for _, t in pairs])[
        "attention_mask"
    ].sum(axis=1)
    orders = {"": list(pairs), " sorted": [pairs[i] for i in np.argsort(lengths, kind="stable")]}
    by_size: dict[str, float] = {}
    variant_used = provider_used = ""

    def load(threads: int, spinning: bool) -> Any:
        return OnnxScorer.load(
            package,
            provider,  # type: ignore[arg-type]
            variant,  # type: ignore[arg-type]
            intra_op_threads=threads,
            spinning=spinning,
        )

    def timed(sessions: list[Any], suffix: str) -> None:
        """Every batch size and order on ``sessions``, each taking every n-th batch."""
        with ThreadPoolExecutor(len(sessions)) as pool:
            for size in plan.batch_sizes:
                for order, ordered in orders.items():
                    batches = [
                        encode_pairs(tokenizer, [q for q, _ in chunk], [t for _, t in chunk])
                        for chunk in (ordered[i : i + size] for i in range(0, len(ordered), size))
                    ]
                    for session in sessions:
                        session.run(batches[0])  # warm-up for this shape
                    shares = [batches[k :: len(sessions)] for k in range(len(sessions))]
                    done = 0
                    t0 = time.monotonic()
                    # At least one pass over all pairs, more while the budget lasts.
                    while True:
                        done += sum(pool.map(_run_all, sessions, shares))
                        if time.monotonic() - t0 >= plan.offline_budget_s / (2 * len(orders)):
                            break
                    by_size[f"{size}{order}{suffix}"] = round(done / (time.monotonic() - t0), 1)

    # ORT's default lets idle threads spin (fastest alone); the service may turn it off.
    # The ceiling is the better of the two.
    for spinning in (True, False):
        scorer = load(threads, spinning)
        variant_used, provider_used = scorer.variant, scorer.provider
        timed([scorer], "" if spinning else " no-spin")
        scorer.close()
    if side_by_side > 1 and provider_used == "CPUExecutionProvider":
        group = [load(1, False) for _ in range(side_by_side)]
        timed(group, f" x{side_by_side}")
        for session in group:
            session.close()
    best = max(by_size, key=by_size.__getitem__)
    instances = side_by_side if best.endswith(f" x{side_by_side}") else 1
    return {
        "pairs_per_s": by_size[best],
        "batch_size": int(best.split()[0]),
        "spinning": not best.endswith("no-spin") and instances == 1,
        "length_sorted": " sorted" in best,
        "instances": instances,
        "by_batch_size": by_size,
        "variant": variant_used,
        "provider": provider_used,
    }


def _run_all(session: Any, batches: Sequence[dict[str, Any]]) -> int:
    """Run ``batches`` on ``session``; the pairs they held."""
    pairs = 0
    for batch in batches:
        session.run(batch)
        pairs += len(batch["input_ids"])
    return pairs


def infinity_python(setup: bool) -> tuple[Path | None, str | None]:
    """The peer venv's python, installing it first when asked; else ``(None, why)``."""
    python = INFINITY_VENV / "bin" / "python"
    ready = (INFINITY_VENV / "bin" / "infinity_emb").is_file()
    if not ready and not setup:
        return None, (
            f"{INFINITY_VENV.name} is not installed; run `bash loadtest/setup_infinity.sh` "
            "(left out of --quick because it downloads torch and infinity-emb)"
        )
    if not ready:
        _log("installing infinity-emb into .venv-infinity (loadtest/setup_infinity.sh) ...")
        done = subprocess.run(
            ["bash", str(SETUP_INFINITY), str(INFINITY_VENV)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0:
            return None, "setup_infinity.sh failed: " + (done.stderr.strip() or done.stdout)[-1500:]
    return python, None


def measure_crossencoder(
    python: Path,
    torch_dir: Path,
    pairs: Sequence[tuple[str, str]],
    max_length: int,
    threads: int,
    plan: Plan,
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(pairs, f)
    argv = [
        str(python), str(REPO_ROOT / "loadtest" / "st_predict.py"), "--model", str(torch_dir),
        "--pairs", f.name, "--max-length", str(max_length),
        "--budget-s", str(plan.offline_budget_s * 2), "--threads", str(threads),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        return {"error": "CrossEncoder.predict failed: " + done.stderr.strip()[-1500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_http(
    server: ServerProcess,
    ready_path: str,
    adapter: Adapter,
    requests: Sequence[ScoringRequest],
    plan: Plan,
    slo: Slo,
    *,
    batch_metrics: bool = False,
) -> HttpResult:
    """Start-up, warm-up, then the concurrency ladder; stops climbing once far past the SLO."""
    result = HttpResult(server.name)
    prepared: list[Prepared] = [adapter(r) for r in requests]
    t0 = time.monotonic()
    try:
        server.wait_ready(ready_path, plan.startup_timeout_s)
        result.notes["startup_s"] = round(time.monotonic() - t0, 1)
        problem = asyncio.run(check_answer(server.url, prepared[0], prepared[0].items))
        if problem:
            raise RuntimeError(f"answers wrongly: {problem}")
        asyncio.run(closed_loop(server.url, prepared, 2, 60.0, max_requests=plan.warmup_requests))
        for concurrency in plan.concurrency:
            before = batch_stats(server.url) if batch_metrics else None
            samples, elapsed = asyncio.run(
                closed_loop(
                    server.url,
                    prepared,
                    concurrency,
                    plan.level_s,
                    max_requests=plan.max_requests_per_level,
                    honour_retry_after=True,
                )
            )
            figures = summarize(samples, elapsed, slo)
            level = {
                "concurrency": concurrency,
                **{k: figures[k] for k in ("requests", "failures", "errors_by_status")},
                **{k: figures[k] for k in ("requests_per_s", "pairs_per_s")},
                **{k: figures[k] for k in ("p50_ms", "p95_ms", "p99_ms")},
                "slo": figures["slo"],
            }
            if batch_metrics:
                level["server_mean_batch_pairs"] = mean_batch(before, batch_stats(server.url))
            result.levels.append(level)
            _log(
                f"{server.name:8s} c={concurrency:<3d} {level['pairs_per_s']:>8} pairs/s  "
                f"p50 {level['p50_ms']} p99 {level['p99_ms']} ms  failures {level['failures']}  "
                f"SLO {'held' if level['slo']['held'] else 'missed'}"
            )
            ratio = figures["slo"]["p99_latency_over_budget"]
            # The moderate level is always measured: its p99 is a figure of the report.
            if (ratio is None or ratio > 4) and concurrency >= plan.moderate:
                result.notes["stopped_climbing"] = f"after c={concurrency}: far past the SLO"
                break
    except RuntimeError as exc:
        result.error = f"{server.name}: {exc}"
        _log(result.error)
    finally:
        server.stop()
    return result


def _infinity_version(python: Path) -> dict[str, Any]:
    done = subprocess.run(
        [str(python), "-c", "import infinity_emb; print(infinity_emb.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {"version": done.stdout.strip() or None, "engine": "torch"}


# --------------------------------------------------------------------------- reporting


def assemble(
    args: argparse.Namespace,
    plan: Plan,
    slo: Slo,
    manifest: dict[str, Any],
    catalogue: Catalogue,
    mix: Mix,
    ceiling: dict[str, Any],
    crossencoder: dict[str, Any],
    results: dict[str, HttpResult],
) -> dict[str, Any]:
    http = {name: r.figures(plan.moderate) for name, r in results.items()}
    service = http.get("service", {})

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    at_slo = service.get("pairs_per_s_at_slo")
    # Systems measured that never held the SLO while the service did: the ratio at SLO is
    # unbounded. It is reported as null with this note, and its target counts as met.
    never_held = {
        key: f"{name} never held the SLO at any measured load"
        for key, name in (("service_over_naive", "naive"), ("service_over_peer", "infinity"))
        if at_slo and "levels" in http.get(name, {}) and not http[name]["pairs_per_s_at_slo"]
    }
    ratios = {
        "service_over_naive": ratio(at_slo, http.get("naive", {}).get("pairs_per_s_at_slo")),
        "service_over_peer": ratio(at_slo, http.get("infinity", {}).get("pairs_per_s_at_slo")),
        "service_over_ceiling": ratio(at_slo, ceiling.get("pairs_per_s")),
        "service_over_crossencoder": ratio(at_slo, crossencoder.get("pairs_per_s")),
        # Throughput regardless of latency: defined even when a system never meets the SLO.
        "peak_service_over_naive": ratio(
            service.get("peak_pairs_per_s"), http.get("naive", {}).get("peak_pairs_per_s")
        ),
        "peak_service_over_peer": ratio(
            service.get("peak_pairs_per_s"), http.get("infinity", {}).get("peak_pairs_per_s")
        ),
    }
    return {
        "tool": "loadtest.bench",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m loadtest.bench " + shlex.join(sys.argv[1:]),
        "mode": "quick" if args.quick else "full",
        "machine": _machine(),
        "model": {
            "package": str(args.model),
            "name": manifest.get("name"),
            "version": manifest.get("version"),
            "max_length": manifest.get("max_length"),
            "provider": args.provider,
            "variant": ceiling.get("variant", args.variant),
            "threads": args.threads or "default",
        },
        "workload": {
            "source": catalogue.source,
            "requests": plan.requests,
            "items": f"{mix.min_items}-{mix.max_items}",
            "rerank_share": mix.rerank_share,
            "seed": mix.seed,
        },
        "load": {
            "concurrency": list(plan.concurrency),
            "moderate_concurrency": plan.moderate,
            "seconds_per_level": plan.level_s,
            "client": f"httpx {metadata.version('httpx')} closed loop, same process",
        },
        "slo": {"rule": slo.describe(), "latency_ms": slo.latency_ms, "items": slo.items},
        "ceiling": ceiling,
        "crossencoder": crossencoder,
        "http": http,
        "ratios": ratios,
        "targets": {
            name: {
                "target": target,
                "met": name in never_held or (ratios[name] is not None and ratios[name] >= target),
                **({"note": never_held[name]} if name in never_held else {}),
            }
            for name, target in TARGETS.items()
        },
    }


def summary_table(figures: dict[str, Any]) -> str:
    moderate = figures["load"]["moderate_concurrency"]
    lines = [
        f"{'system':<22}{'pairs/s at SLO':>16}{'at c':>6}{f'p99 ms @c={moderate}':>16}"
        f"{'peak pairs/s':>14}",
    ]
    for name, row in figures["http"].items():
        if "levels" not in row:
            lines.append(f"{name:<22}  not measured: {row.get('error')}")
            continue
        lines.append(
            f"{name:<22}{row['pairs_per_s_at_slo']:>16}{row['concurrency_at_slo'] or '-':>6}"
            f"{row['p99_ms_at_moderate'] or '-':>16}{row['peak_pairs_per_s']:>14}"
        )
    ceiling, ce = figures["ceiling"], figures["crossencoder"]
    lines.append(
        f"{'ORT session (ceiling)':<22}{ceiling['pairs_per_s']:>16}  offline, batch "
        f"{ceiling['batch_size']}, {ceiling['variant']}"
    )
    if "pairs_per_s" in ce:
        lines.append(
            f"{'CrossEncoder.predict':<22}{ce['pairs_per_s']:>16}  offline, "
            f"batch {ce['batch_size']}"
        )
    else:
        lines.append(f"{'CrossEncoder.predict':<22}  not measured: {ce.get('error')}")
    for name, value in figures["ratios"].items():
        target = figures["targets"].get(name)
        verdict = "" if target is None else f"  (target >= {target['target']}: "
        verdict += "" if target is None else ("met)" if target["met"] else "NOT met)")
        shown = "unbounded" if target and "note" in target else value
        shown = "n/a" if shown is None else shown
        note = f"  {target['note']}" if target and "note" in target else ""
        lines.append(f"{name:<28}{shown:>10}{verdict}{note}")
    return "\n".join(lines)


def plot(figures: dict[str, Any], path: Path) -> Path:
    """p99 latency and throughput against offered load (closed-loop concurrency) per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tput) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, row in figures["http"].items():
        levels = row.get("levels") or []
        if not levels:
            continue
        xs = [lv["concurrency"] for lv in levels]
        p99 = [lv["p99_ms"] if lv["p99_ms"] is not None else float("nan") for lv in levels]
        tput = [lv["pairs_per_s"] for lv in levels]
        (line,) = ax_lat.plot(xs, p99, marker="o", label=name)
        ax_tput.plot(xs, tput, marker="o", color=line.get_color(), label=name)
        # Hollow markers where the level missed the SLO.
        missed = [i for i, lv in enumerate(levels) if not lv["slo"]["held"]]
        for ax, ys in ((ax_lat, p99), (ax_tput, tput)):
            ax.scatter(
                [xs[i] for i in missed],
                [ys[i] for i in missed],
                s=90,
                facecolors="white",
                edgecolors=line.get_color(),
                zorder=3,
            )
    slo = figures["slo"]
    ax_lat.axhline(slo["latency_ms"], color="grey", ls="--", lw=1)
    ax_lat.text(
        1,
        slo["latency_ms"],
        f" SLO {slo['latency_ms']:g} ms per {slo['items']} items",
        va="bottom",
        fontsize=8,
    )
    ceiling = figures["ceiling"].get("pairs_per_s")
    if ceiling:
        ax_tput.axhline(ceiling, color="black", ls=":", lw=1, label="ORT session ceiling")
    ce = figures["crossencoder"].get("pairs_per_s")
    if ce:
        ax_tput.axhline(ce, color="tab:brown", ls="-.", lw=1, label="CrossEncoder.predict")
    ladder = figures["load"]["concurrency"]
    for ax in (ax_lat, ax_tput):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ladder, [str(c) for c in ladder])
        ax.set_xlabel("offered load: concurrent clients (closed loop)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("p99 latency (ms, log)")
    ax_tput.set_ylabel("pairs/s")
    model = figures["model"]
    fig.suptitle(
        f"{model['name']} {model['version']} ({model['variant']}, {model['provider']}); "
        f"{figures['workload']['items']} items/request; hollow = SLO missed; "
        f"{figures['machine']['cpu_count']} CPUs, {figures['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "torch": _version("torch"),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _replace(plan: Plan, **changes: Any) -> Plan:
    from dataclasses import replace

    return replace(plan, **changes)


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
