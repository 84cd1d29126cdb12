"""Command line: ``python -m training STAGE [--config FILE] [options]``.

Stages: ``teacher``, ``label``, ``distill``, ``small``, ``committee``, ``represent``, ``evaluate``,
``cascade`` (the representation package's head re-scored by the cross-encoder), ``export``,
``all``,
``ensure-default`` (what ``make serve`` runs: nothing when the default package verifies),
and the closed loop (docs/closed_loop.md): ``ingest-mirror`` (the shadow's mirrored
JSONL -> teacher labels the next ``distill`` uses), ``gate`` (exit status 0 when the
candidate package may replace the current one, 1 when not) and ``promote`` (a gated
package to a running service: canary, then hot swap).
Each stage skips work whose output is current; ``--force`` redoes it.

Examples::

    python -m training distill --size 0                  # human labels only
    python -m training label --limit 26564               # teacher labels, resumable
    python -m training label --engine ray                # the same on Ray Data actors
    python -m training distill --size 26564              # + 26,564 teacher-labeled pairs
    python -m training distill --run human-only-seed14 --set student.threads=1
                                                         # one run of the curve (2 at once)
    python -m training small --set 'small.layers=[[1, 3, 5]]'   # from distill-n<largest>
    python -m training committee --set committee.members=human-only,distill-n26564
    python -m training represent                         # the cacheable students (and
                                                         # each of representation.also)
    python -m training represent --set representation.architecture=late-interaction \
        --set representation.dim=128                     # one architecture alone
    python -m training ensemble                          # LLM + human-only + BM25 teacher
    python -m training evaluate                          # docs/evaluation.md + plot
    python -m training cascade                           # representation -> cross-encoder
    python -m training all --set student.epochs=0.5      # any config value, dotted
    python -m training ingest-mirror runs/mirror/pairs.jsonl
    python -m training gate --candidate models/minilm-homedepot-candidate \
        --current models/minilm-homedepot
    python -m training promote --package models/minilm-homedepot-1.3.0 \
        --url http://127.0.0.1:8000 --token-file token.txt --step canary   # then --step swap
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from training.artifacts import PipelineError, reproduce_command
from training.config import load_config
from training.default_package import ensure_default
from training.evaluation.stage import stage_evaluate
from training.onnx_export.stage import stage_export
from training.stages import (
    stage_all,
    stage_committee,
    stage_distill,
    stage_ingest_mirror,
    stage_label,
    stage_represent,
    stage_small,
    stage_teacher,
)

STAGES = (
    "teacher",
    "label",
    "distill",
    "small",
    "committee",
    "represent",
    "evaluate",
    "cascade",
    "ensemble",
    "export",
    "all",
    "ensure-default",
    "ingest-mirror",
    "gate",
    "promote",
)


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``section.key=value`` pairs into a nested dict; values are JSON when they parse."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects section.key=value, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument(
        "files", nargs="*", type=Path, help="ingest-mirror: mirrored JSONL files of the shadow"
    )
    parser.add_argument("--config", type=Path, help="JSON or TOML file with TrainConfig values")
    parser.add_argument(
        "--data", help="labeled data CSV (overrides paths.data and RELEVANCE_TRAIN_DATA)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value",
    )
    parser.add_argument(
        "--size",
        action="append",
        type=int,
        help="distill: augmentation size (0 = human only); repeatable",
    )
    parser.add_argument(
        "--run",
        action="append",
        help="distill: train only this run of the curve (e.g. distill-n106256-s14); repeatable",
    )
    parser.add_argument("--limit", type=int, help="label: label the first LIMIT augmentation pairs")
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        help="label: run the teacher here or on Ray Data actors (RAY_ADDRESS: a cluster)",
    )
    parser.add_argument(
        "--max-seconds", type=float, help="teacher/label: stop (resumably) after this long"
    )
    parser.add_argument(
        "--teacher-labels", type=Path, help="evaluate: teacher label file of the evaluation split"
    )
    parser.add_argument(
        "--student", help="export: run name to export (default: config export.student)"
    )
    parser.add_argument("--candidate", type=Path, help="gate: the new package directory")
    parser.add_argument("--current", type=Path, help="gate: the package serving now")
    parser.add_argument(
        "--mirror",
        action="append",
        help="gate: mirror label file(s) whose held-back pairs to use (default: those the "
        "candidate trained beside, else all of the configured teacher); repeatable",
    )
    parser.add_argument("--package", type=Path, help="promote: the gated package directory")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="promote: the service")
    parser.add_argument("--token-file", type=Path, help="promote: file holding the admin token")
    parser.add_argument("--token", help="promote: the admin token (prefer --token-file)")
    parser.add_argument(
        "--model", default="minilm-homedepot", help="promote: the serving name to roll out to"
    )
    parser.add_argument("--step", choices=("canary", "swap"), help="promote: which rollout step")
    parser.add_argument("--canary-share", type=float, default=0.1, help="promote: canary share")
    parser.add_argument(
        "--force", action="store_true", help="redo a stage even if its output is current"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def _promote(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    import httpx

    from training.promote import admin_client, promote

    if args.package is None or args.step is None:
        raise PipelineError("promote needs --package DIR and --step canary|swap")
    token = args.token_file.read_text().strip() if args.token_file else args.token
    if not token:
        raise PipelineError("promote needs the admin token (--token-file or --token)")

    async def run() -> dict[str, Any]:
        async with admin_client(args.url, token) as client:
            return await promote(
                client, args.package, args.model, args.step, canary_share=args.canary_share
            )

    try:
        return asyncio.run(run())
    except httpx.HTTPError as exc:  # no answer at all (an error answer is a PipelineError)
        raise PipelineError(f"cannot reach {args.url}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = _parse_set(args.set)
    if args.data:
        overrides.setdefault("paths", {})["data"] = args.data
    if args.engine:
        overrides.setdefault("label", {})["engine"] = args.engine
    config = load_config(args.config, overrides)
    command = reproduce_command(sys.argv[1:] if argv is None else argv)
    # A long run stopped by `kill` (or a session's end) saves its checkpoint as on Ctrl-C.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.stage == "teacher":
            stage_teacher(config, force=args.force, max_seconds=args.max_seconds)
        elif args.stage == "label":
            stage_label(config, limit=args.limit, max_seconds=args.max_seconds)
        elif args.stage == "distill":
            stage_distill(config, sizes=args.size, force=args.force, runs=args.run)
        elif args.stage == "small":
            stage_small(config, force=args.force)
        elif args.stage == "committee":
            stage_committee(config, force=args.force)
        elif args.stage == "represent":
            stage_represent(config, force=args.force)
        elif args.stage == "evaluate":
            stage_evaluate(config, teacher_labels=args.teacher_labels, command=command)
        elif args.stage == "cascade":
            from training.evaluation.cascade import stage_cascade, table

            print(table(stage_cascade(config, command=command)))
        elif args.stage == "ensemble":
            from training.ensemble_stage import stage_ensemble

            print(stage_ensemble(config, force=args.force)["verdict"])
        elif args.stage == "export":
            stage_export(config, student=args.student, force=args.force)
        elif args.stage == "all":
            stage_all(config, force=args.force, command=command)
        elif args.stage == "ingest-mirror":
            report = stage_ingest_mirror(config, args.files)
            print(json.dumps(report, indent=2))
        elif args.stage == "gate":
            if args.candidate is None or args.current is None:
                raise PipelineError("gate needs --candidate DIR and --current DIR")
            from training.gate import run_gate

            result = run_gate(config, args.candidate, args.current, args.mirror)
            print(json.dumps({k: result[k] for k in ("verdict", "failed", "checks")}, indent=2))
            return 0 if result["verdict"] == "pass" else 1
        elif args.stage == "promote":
            print(json.dumps(_promote(args), indent=2, default=str))
        else:
            ensure_default(config)
    except PipelineError as exc:
        logging.getLogger("training").error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logging.getLogger("training").warning("interrupted: run the same command to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
