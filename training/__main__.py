"""Command line: ``python -m training STAGE [--config FILE] [options]``.

Stages: ``teacher``, ``label``, ``distill``, ``small``, ``committee``, ``represent``, ``evaluate``,
``export``, ``all`` and
``ensure-default`` (what ``make serve`` runs: nothing when the default package verifies).
Each stage skips work whose output is current; ``--force`` redoes it.

Examples::

    python -m training distill --size 0                  # human labels only
    python -m training label --limit 26564               # teacher labels, resumable
    python -m training label --engine ray                # the same on Ray Data actors
    python -m training distill --size 26564              # + 26,564 teacher-labeled pairs
    python -m training small --set 'small.layers=[[1, 3, 5]]'   # from distill-n<largest>
    python -m training committee --set committee.members=human-only,distill-n26564
    python -m training represent --set representation.architecture=late-interaction \
        --set representation.dim=128                     # the cacheable student
    python -m training evaluate                          # docs/evaluation.md + plot
    python -m training all --set student.epochs=0.5      # any config value, dotted
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
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
    "export",
    "all",
    "ensure-default",
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
    parser.add_argument(
        "--force", action="store_true", help="redo a stage even if its output is current"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


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
    try:
        if args.stage == "teacher":
            stage_teacher(config, force=args.force, max_seconds=args.max_seconds)
        elif args.stage == "label":
            stage_label(config, limit=args.limit, max_seconds=args.max_seconds)
        elif args.stage == "distill":
            stage_distill(config, sizes=args.size, force=args.force)
        elif args.stage == "small":
            stage_small(config, force=args.force)
        elif args.stage == "committee":
            stage_committee(config, force=args.force)
        elif args.stage == "represent":
            stage_represent(config, force=args.force)
        elif args.stage == "evaluate":
            stage_evaluate(config, teacher_labels=args.teacher_labels, command=command)
        elif args.stage == "export":
            stage_export(config, student=args.student, force=args.force)
        elif args.stage == "all":
            stage_all(config, force=args.force, command=command)
        else:
            ensure_default(config)
    except PipelineError as exc:
        logging.getLogger("training").error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
