"""Student training cost: FP32 against BF16 autocast, side by side in one run.

A first-round student on the human pairs plus 106k teacher-labeled pairs is the longest
CPU job after the teacher, so this measures what a training step costs per pair on real
Home Depot training rows (human pairs, query-grouped batches as in training): two copies
of one freshly built student (same head initialisation) take the same batches, their
steps timed in alternating blocks so that both see the same machine. It also reports how
far BF16 moves training: the two copies' losses over the same batches and the Spearman
of their scores on validation pairs (never test) afterwards.

``python -m training.student_bench --config training/configs/cpu-full-teacher.toml --steps 40``
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from training.config import load_config
from training.data import load_labeled, query_subset, split_by_query
from training.distill import training_frame
from training.fit_loop import autocast
from training.losses import HybridDistillationLoss
from training.student import build_student, encode_batch, predict_scores, query_grouped_batches
from training.teacher_bench import _cpu_flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per precision")
    parser.add_argument("--block", type=int, default=5, help="steps per alternating block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=512, help="validation pairs compared")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    student = config.student
    torch.set_num_threads(args.threads)
    splits = split_by_query(load_labeled(config.path("data")), seed=config.split.seed)
    frame = training_frame(splits["train"])
    rng = np.random.default_rng(student.seed)
    batches = query_grouped_batches(
        frame["group"].to_numpy(), student.batch_size, student.items_per_query, rng
    )[: args.steps + 2]
    queries, titles = frame["query"].tolist(), frame["title"].tolist()
    targets = torch.tensor(frame["target"].to_numpy(), dtype=torch.float32)
    groups = frame["group"].to_numpy()
    loss_fn = HybridDistillationLoss(config.loss.pointwise_weight, config.loss.margin_weight)

    fp32_model, tokenizer = build_student(student)
    # "fp32-reseeded": FP32 again with other dropout draws, the noise any two trainings
    # differ by; BF16's distance from FP32 is read against it.
    copies = {
        "fp32": fp32_model,
        "bf16": copy.deepcopy(fp32_model),
        "fp32-reseeded": copy.deepcopy(fp32_model),
    }
    optimizers = {
        name: torch.optim.AdamW(model.parameters(), lr=student.learning_rate)
        for name, model in copies.items()
    }
    # The precision each copy trains in, through the training loop's own autocast.
    precisions = {"fp32": "fp32", "bf16": "bf16", "fp32-reseeded": "fp32"}
    seconds = dict.fromkeys(copies, 0.0)
    pairs = dict.fromkeys(copies, 0)
    losses: dict[str, list[float]] = {name: [] for name in copies}

    def step(name: str, index: np.ndarray, timed: bool) -> None:
        model, optimizer = copies[name], optimizers[name]
        started = time.perf_counter()
        inputs = encode_batch(tokenizer, [queries[i] for i in index], [titles[i] for i in index])
        with autocast(model, precisions[name]):
            logits = model(**inputs).logits
        loss = loss_fn(logits.float(), targets[index], torch.from_numpy(groups[index]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if timed:
            seconds[name] += time.perf_counter() - started
            pairs[name] += len(index)
            losses[name].append(loss.item())

    for model in copies.values():
        model.train()
    for name in copies:  # warm-up: oneDNN picks its kernels on first use
        for index in batches[:2]:
            step(name, index, timed=False)
    timed = batches[2:]
    for start in range(0, len(timed), args.block):
        # The same dropout draws for FP32 and BF16: what differs between them is arithmetic.
        for name in copies:
            torch.manual_seed(start + (10_000 if name == "fp32-reseeded" else 0))
            for index in timed[start : start + args.block]:
                step(name, index, timed=True)

    from scipy.stats import spearmanr

    sample = query_subset(splits["validation"], 400, seed=config.split.seed).head(args.pairs)
    scores = {
        name: predict_scores(model, tokenizer, sample["query"].tolist(), sample["title"].tolist())
        for name, model in copies.items()
    }
    rate = {name: pairs[name] / seconds[name] for name in copies}
    result = {
        "steps": len(timed),
        "batch_size": student.batch_size,
        "threads": args.threads,
        "fp32_pairs_per_s": rate["fp32"],
        "bf16_pairs_per_s": rate["bf16"],
        "bf16_speedup": rate["bf16"] / rate["fp32"],
        "fp32_mean_loss": float(np.mean(losses["fp32"])),
        "bf16_mean_loss": float(np.mean(losses["bf16"])),
        "bf16_vs_fp32_spearman_after": float(spearmanr(scores["fp32"], scores["bf16"]).statistic),
        "fp32_reseeded_vs_fp32_spearman_after": float(
            spearmanr(scores["fp32"], scores["fp32-reseeded"]).statistic
        ),
        "validation_pairs": len(sample),
        "cpu_flags": sorted(
            _cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}
        ),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
