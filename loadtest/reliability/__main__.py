"""``python -m loadtest.reliability [--quick] --model DIR --out docs/reliability.md``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest.reliability import faults, fuzzing, overload, report, security, soak, traffic
from loadtest.reliability.common import Row, RunConfig, get_json, git_commit, machine, serving
from loadtest.servers import REPO_ROOT

SCENARIOS = ("fuzz", "overload", "traffic", "faults", "soak", "security")
EXIT_FAILED = 1
EXIT_CANNOT_RUN = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.reliability",
        description="Reliability and security run: fuzzing, overload, traffic shapes, faults, "
        "soak, security.",
    )
    p.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "minilm-homedepot")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "reliability.md")
    p.add_argument(
        "--quick",
        action="store_true",
        help="short run: fewer fuzz cases, 10 s open loops, 60 s soak (the full run: ~30 min)",
    )
    p.add_argument("--soak-s", type=float, help="soak length (default 600, --quick 60)")
    p.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}"
    )
    p.add_argument("--note", action="append", default=[], help="a line to flag in the report")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    return args


def _model_facts(cfg: RunConfig) -> dict[str, Any]:
    """What the service reports about the model it serves (name, graph, provider, SLO)."""
    with serving("describe", cfg, env={"RELEVANCE_LOG_LEVEL": "warning"}) as server:
        info = get_json(server.url + "/info")
    manifest = info["model"]["manifest"]
    execution = info["model"]["execution"]
    slo = info["slo"]
    return {
        "dir": str(cfg.model),
        "name": manifest.get("name"),
        "version": manifest.get("version"),
        "backbone": manifest.get("backbone"),
        "variant": execution.get("variant"),
        "provider": execution.get("provider"),
        "slo": f"{slo['latency_ms']:g} ms per {slo['per_items']} items",
        "limits": info["limits"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        print(f"error: {args.model} is not a model package (no manifest.json)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = REPO_ROOT / "runs" / "reliability" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig(model=args.model, quick=args.quick, log_dir=log_dir, seed=args.seed)
    soak_s = args.soak_s or (60.0 if args.quick else 600.0)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    host = machine()
    try:
        model = _model_facts(cfg)
    except RuntimeError as exc:
        print(f"error: the service does not start with {args.model}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    print(f"model {model['name']} {model['version']} ({model['variant']} on {model['provider']})")

    rows: list[Row] = []
    capacity = None

    def step(name: str, body: Callable[[], list[Row]]) -> None:
        if name not in args.only:
            return
        print(f"[{time.monotonic() - t0:6.0f} s] {name} ...", flush=True)
        try:
            new = body()
        except Exception as exc:  # a scenario that cannot run is a failed row, not a crash
            traceback.print_exc()
            new = [Row(name, "-", False, "the scenario ran to the end", f"crashed: {exc!r}")]
        for row in new:
            print(f"    {'held' if row.held else 'NOT HELD'}: {row.scenario}: {row.numbers}")
        rows.extend(new)

    def run_overload() -> list[Row]:
        nonlocal capacity
        new, capacity = overload.run(cfg)
        return new

    step("fuzz", lambda: fuzzing.run(cfg))
    step("overload", run_overload)
    step("traffic", lambda: traffic.run(cfg, capacity))
    step("faults", lambda: faults.run(cfg))
    step("soak", lambda: [soak.run(cfg, capacity, soak_s)])
    step("security", lambda: security.run(cfg))

    notes = list(args.note)
    backbone = str(model.get("backbone") or "")
    if "tiny" in backbone or "tiny" in str(model.get("name")):
        notes.insert(
            0,
            "Tiny random model: plumbing only. Capacity and latency are not those of the real "
            "student; re-run on models/minilm-homedepot for figures that mean anything.",
        )
    command = "python -m loadtest.reliability " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    json_path = log_dir / "reliability.json"
    elapsed = time.monotonic() - t0
    host["load_average_end"] = machine()["load_average"]
    json_path.write_text(
        json.dumps(
            {
                "command": command,
                "started": started.isoformat(timespec="seconds"),
                "elapsed_s": round(elapsed, 1),
                "machine": host,
                "model": model,
                "rows": [r.__dict__ for r in rows],
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    text = report.render(
        rows,
        command=command,
        started=started.strftime("%Y-%m-%d %H:%M UTC"),
        elapsed_s=elapsed,
        machine=host,
        model=model,
        commit=git_commit(),
        notes=notes,
        json_path=str(json_path.relative_to(REPO_ROOT)),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    held = sum(r.held for r in rows)
    print(f"{held}/{len(rows)} held; wrote {args.out} and {json_path}")
    return 0 if held == len(rows) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
