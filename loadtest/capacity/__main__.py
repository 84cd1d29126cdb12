"""``python -m loadtest.capacity``: choose the HPA target by simulating a day of traffic.

    python -m loadtest.capacity                       # diurnal trace with a spike, 3 targets
    python -m loadtest.capacity --trace my-day.csv --targets 40,60
    python -m loadtest.capacity --write-trace runs/trace.csv   # the generated trace as CSV

Per-pod capacity, SLO and request mix come from a benchmark's JSON (``--bench``, default the
newest docs/benchmarks/bench-*.json); minReplicas, maxReplicas and behavior from the HPA
manifest (``--hpa``); the targets compared replace its averageValue.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from loadtest.capacity import report
from loadtest.capacity.cluster import Timing, simulate
from loadtest.capacity.hpa import HpaSpec
from loadtest.capacity.trace import diurnal, read_csv

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "docs" / "benchmarks"
HPA_MANIFEST = REPO / "deploy" / "k8s" / "base" / "hpa.yaml"


def newest_bench() -> Path:
    found = sorted(BENCH_DIR.glob("bench-*.json"))
    if not found:
        raise SystemExit(f"no bench-*.json in {BENCH_DIR}: pass --bench")
    return found[-1]


def main(argv: list[str] | None = None) -> int:
    from service.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", type=Path, default=None)
    parser.add_argument("--trace", type=Path, default=None, help="CSV: t_s,pairs_per_s")
    parser.add_argument("--write-trace", type=Path, default=None)
    parser.add_argument("--peak", type=float, default=1500.0, help="generated: pairs/s")
    parser.add_argument("--trough", type=float, default=150.0, help="generated: pairs/s")
    parser.add_argument("--spike-hour", type=float, default=20.0)
    parser.add_argument("--spike-factor", type=float, default=2.0)
    parser.add_argument("--spike-minutes", type=float, default=15.0)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--hpa", type=Path, default=HPA_MANIFEST)
    parser.add_argument("--targets", default="40,60,90", help="averageValue per pod")
    parser.add_argument("--fixed", default="", help="also fixed deployments of N pods")
    parser.add_argument(
        "--routing",
        default="least,random",
        help="least: a least-request balancer; random: kube-proxy (each is simulated)",
    )
    parser.add_argument("--startup-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    bench = args.bench or newest_bench()
    model = report.pod_model(
        bench, startup_s=args.startup_s, admission_factor=Settings().admission_slo_factor
    )
    objective = report.slo_objective(bench)
    if args.trace:
        trace, spike = read_csv(args.trace), None
    else:
        trace = diurnal(
            hours=args.hours,
            trough=args.trough,
            peak=args.peak,
            spike_hour=args.spike_hour,
            spike_factor=args.spike_factor,
            spike_minutes=args.spike_minutes,
        )
        spike = (args.spike_hour * 3600, args.spike_hour * 3600 + args.spike_minutes * 60)
    if args.write_trace:
        trace.write_csv(args.write_trace)
    base = HpaSpec.from_manifest(yaml.safe_load(args.hpa.read_text(encoding="utf-8")))

    results = []
    started = time.monotonic()
    for routing in (x for x in args.routing.split(",") if x):
        for target in (float(x) for x in args.targets.split(",") if x):
            spec = HpaSpec(
                base.min_replicas, base.max_replicas, target, base.scale_up, base.scale_down
            )
            label = f"{routing}: HPA target {target:g}"
            results.append(
                simulate(trace, model, hpa=spec, routing=routing, seed=args.seed, label=label)
            )
        for n in (int(x) for x in args.fixed.split(",") if x):
            label = f"{routing}: fixed {n} pods"
            results.append(
                simulate(trace, model, replicas=n, routing=routing, seed=args.seed, label=label)
            )
    rows = [report.summary(r, spike) for r in results]

    print(
        f"pod: {model.pairs_per_s:g} pairs/s at SLO ({bench.name}), SLO "
        f"{model.slo_latency_s * 1000:g} ms per {model.slo_items} items, objective "
        f"{objective:.0%}; trace peak {trace.peak:g} pairs/s over {trace.duration_s / 3600:g} h; "
        f"HPA min {base.min_replicas} max {base.max_replicas}, start-up {model.startup_s:g} s; "
        f"simulated in {time.monotonic() - started:.0f} s\n"
    )
    print(report.markdown_table(rows, objective))
    if args.png:
        title = (
            f"{trace.duration_s / 3600:g} h trace, peak {trace.peak:g} pairs/s; pod = "
            f"{model.pairs_per_s:g} pairs/s ({bench.name}); start-up {model.startup_s:g} s"
        )
        report.plot(results, model.pairs_per_s, args.png, title)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "tool": "loadtest.capacity",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m loadtest.capacity", *(argv or sys.argv[1:])]),
            "bench": str(bench.relative_to(REPO) if bench.is_relative_to(REPO) else bench),
            "pod": model.__dict__,
            "objective": objective,
            "timing": Timing().__dict__,
            "trace": {"peak": trace.peak, "hours": trace.duration_s / 3600, "spike": spike},
            "hpa": {"min": base.min_replicas, "max": base.max_replicas},
            "results": rows,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
