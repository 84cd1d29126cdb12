"""Measure what one pod of the service needs: resident memory and CPU, idle and under load.

Starts the real service (``python -m service``) on 127.0.0.1 with the model package, waits
for ``/readyz`` (model loaded and warmed up), then reads ``/proc/<pid>`` (VmRSS, VmHWM, and
utime + stime for CPU) while it idles and while closed-loop clients (``loadtest.loadgen``,
the benchmark's request mix, ``Retry-After`` honoured) drive it at each concurrency level.
Load is loopback only and bounded in time; the server is always stopped.

    python deploy/measure_resources.py --port 8141 --out docs/deploy/resources.json

The Deployment's requests and limits in deploy/k8s/ come from this file's output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtest.loadgen import closed_loop, project_api  # noqa: E402
from loadtest.procstats import Sampler  # noqa: E402
from loadtest.servers import running, service_argv, start_server  # noqa: E402
from loadtest.workload import Catalogue, Mix, RequestFactory  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def phase(pid: int, seconds: float, load: object | None = None) -> dict[str, object]:
    """CPU cores used and memory over one phase (idle when ``load`` is None)."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    with Sampler(pid, interval_s=0.25) as sampler:
        result: dict[str, object] = {}
        if load is None:
            time.sleep(seconds)
        else:
            samples, elapsed = asyncio.run(load)  # type: ignore[arg-type]
            ok = [s for s in samples if s.ok]
            result = {
                "requests": len(samples),
                "ok": len(ok),
                "status_429": sum(s.status == 429 for s in samples),
                "pairs_per_s": round(sum(s.items for s in ok) / elapsed, 1),
            }
    wall = time.monotonic() - t0
    rss = [s.rss_mib for s in sampler.samples]
    return {
        **result,
        "seconds": round(wall, 1),
        "cpu_cores": round((cpu_seconds(pid) - cpu0) / wall, 2),
        "rss_mib_mean": round(sum(rss) / len(rss), 1),
        "rss_mib_max": max(rss),
        "hwm_mib": sampler.last.hwm_mib if sampler.last else None,
        "threads": sampler.last.threads if sampler.last else None,
        "load1": sampler.last.load1 if sampler.last else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/minilm-homedepot")
    parser.add_argument("--port", type=int, default=8141)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=20.0, help="per load level")
    parser.add_argument("--requests", type=int, default=300, help="distinct request bodies")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 8140 <= args.port <= 8149:
        parser.error("use a port in 8140-8149")

    catalogue = Catalogue.load()
    factory = RequestFactory(catalogue, Mix(min_items=20, max_items=200, rerank_share=0.5), seed=0)
    prepared = [project_api(r) for r in factory.take(args.requests)]

    t_start = time.monotonic()
    server = start_server("service", service_argv(args.model, args.port), args.port)
    report: dict[str, object] = {
        "tool": "deploy/measure_resources.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_at_start": round(os.getloadavg()[0], 2),
        },
        "model": args.model,
        "workload": {"source": catalogue.source, "items": "20-200", "rerank_share": 0.5},
    }
    with running(server, "/readyz", timeout_s=180) as srv:
        pid = srv.process.pid
        report["startup_to_ready_s"] = round(time.monotonic() - t_start, 1)
        report["idle"] = phase(pid, 10.0)
        levels = []
        for c in (int(x) for x in args.concurrency.split(",")):
            load = closed_loop(
                srv.url, prepared, c, args.seconds, honour_retry_after=True, grace_s=10.0
            )
            levels.append({"concurrency": c, **phase(pid, args.seconds, load)})
        report["load"] = levels
        report["idle_after_load"] = phase(pid, 5.0)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
