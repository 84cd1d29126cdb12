"""Validation pairwise accuracy of the teacher's latest training checkpoint, mid-run.

Loads the checkpoint's adapter onto the truncated base and scores whole validation
queries (never test), so a run of several sessions can be checked before it finishes.

``python -m training.teacher_check --config training/configs/cpu-full-teacher.toml --queries 100``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from relevance_core.teacher import Teacher, TeacherConfig, load_base
from training.config import load_config
from training.data import load_labeled, query_subset, split_by_query
from training.evaluation.metrics import pairwise_accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from peft import PeftModel

    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    checkpoint = config.path("teacher_checkpoints") / "checkpoint"
    state = json.loads((checkpoint / "state.json").read_text())
    teacher_config = TeacherConfig.from_dict(state["config"])
    model, tokenizer = load_base(teacher_config, config.path("teacher_cache_dir"))
    model = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    teacher = Teacher(model, tokenizer, teacher_config, "checkpoint", batch_size=32)
    splits = split_by_query(load_labeled(config.path("data")), seed=config.split.seed)
    val = query_subset(splits["validation"], args.queries, seed=config.split.seed)
    started = time.monotonic()
    scores = teacher.score(val["query"].tolist(), val["title"].tolist())
    result = {
        "step": state["step"],
        "total_steps": state["total_steps"],
        "pairs": len(val),
        "queries": int(val["query_key"].nunique()),
        "seconds": round(time.monotonic() - started, 1),
        "threads": args.threads,
        "validation_pairwise_accuracy": pairwise_accuracy(val["query_key"], val["grade"], scores),
        "score_quantiles_5_50_95": np.quantile(scores, [0.05, 0.5, 0.95]).round(3).tolist(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
