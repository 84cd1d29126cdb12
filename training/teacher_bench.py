"""Teacher labeling cost: PyTorch FP32 against dynamic INT8 linears and BF16 weights, side by
side in one run.

Labels for 150k+ pairs are the teacher's largest CPU bill, so this measures what a
labeling pass costs per pair on real Home Depot pairs (validation split, never test) and
how far INT8 moves the scores from FP32 (Spearman, pairwise agreement on the same pairs).
With a teacher package it loads the trained adapter; without one it times the truncated
base with a fresh head (speed only: its scores mean nothing).

``python -m training.teacher_bench --config training/configs/cpu-full-teacher.toml --pairs 512``
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from relevance_core.teacher import Teacher, load_base, load_teacher
from training.config import load_config
from training.data import load_labeled, query_subset, split_by_query


def _timed(teacher: Teacher, queries: list[str], titles: list[str], repeats: int) -> tuple:
    teacher.score(queries[:32], titles[:32])  # warm-up
    best, scores = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        scores = teacher.score(queries, titles)
        best = min(best, time.perf_counter() - started)
    return len(queries) / best, scores


def teacher_ms_per_pair(
    teacher: Teacher, queries: list[str], titles: list[str], threads: int, repeats: int = 2
) -> float:
    """Milliseconds per pair of a labeling pass at ``threads`` torch threads (best of
    ``repeats``, after a warm-up): the teacher's point on the frontier."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rate, _ = _timed(teacher, queries, titles, repeats)
    finally:
        torch.set_num_threads(previous)
    return 1000.0 / rate


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    torch.set_num_threads(args.threads)
    splits = split_by_query(load_labeled(config.path("data")), seed=config.split.seed)
    sample = query_subset(splits["validation"], 400, seed=config.split.seed).head(args.pairs)
    queries, titles = sample["query"].tolist(), sample["title"].tolist()
    package = config.teacher_package_dir
    if (package / "manifest.json").is_file():
        fp32 = load_teacher(package, config.path("teacher_cache_dir"), args.threads)
        source = f"package {package.name}"
    else:
        model, tokenizer = load_base(config.teacher, config.path("teacher_cache_dir"))
        fp32 = Teacher(model, tokenizer, config.teacher, name="untrained")
        source = "base with a fresh head (speed only)"
    fp32.batch_size = args.batch_size
    fp32_rate, fp32_scores = _timed(fp32, queries, titles, args.repeats)
    from torch.ao.quantization import quantize_dynamic

    int8 = Teacher(
        quantize_dynamic(fp32.model, {torch.nn.Linear}, dtype=torch.qint8),
        fp32.tokenizer,
        fp32.config,
        name=fp32.name + "-int8",
        batch_size=args.batch_size,
    )
    int8_rate, int8_scores = _timed(int8, queries, titles, args.repeats)
    # BF16 weights: on CPUs with AVX512-BF16 (or AMX) oneDNN runs them natively.
    bf16 = Teacher(
        copy.deepcopy(fp32.model).to(torch.bfloat16),
        fp32.tokenizer,
        fp32.config,
        name=fp32.name + "-bf16",
        batch_size=args.batch_size,
    )
    bf16_rate, bf16_scores = _timed(bf16, queries, titles, args.repeats)
    from scipy.stats import spearmanr

    result = {
        "teacher": source,
        "layers": fp32.model.config.num_hidden_layers,
        "pairs": len(queries),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "fp32_pairs_per_s": fp32_rate,
        "int8_pairs_per_s": int8_rate,
        "int8_speedup": int8_rate / fp32_rate,
        "int8_vs_fp32_spearman": float(spearmanr(fp32_scores, int8_scores).statistic),
        "int8_vs_fp32_max_abs_diff": float(np.abs(fp32_scores - int8_scores).max()),
        "bf16_pairs_per_s": bf16_rate,
        "bf16_speedup": bf16_rate / fp32_rate,
        "bf16_vs_fp32_spearman": float(spearmanr(fp32_scores, bf16_scores).statistic),
        "bf16_vs_fp32_max_abs_diff": float(np.abs(fp32_scores - bf16_scores).max()),
        "cpu_flags": sorted(
            _cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}
        ),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
