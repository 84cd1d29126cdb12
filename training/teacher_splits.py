"""Pairwise accuracy of the teacher's cached labels of whole held-out splits, beside BM25
and the served package, before any student of that teacher exists.

``python -m training.teacher_splits --config training/configs/cpu-full-teacher.toml \\
    validation test``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.artifacts import load_dataset, split_labels_path
from training.config import load_config
from training.evaluation.baselines import BM25Scorer, PackageScorer
from training.evaluation.metrics import pairwise_accuracy
from training.label import read_labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--package", type=Path, default=Path("models/minilm-homedepot"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("splits", nargs="+", choices=["validation", "test", "train"])
    args = parser.parse_args(argv)
    config = load_config(args.config)
    dataset = load_dataset(config)
    bm25 = BM25Scorer(dataset.products)
    package = PackageScorer(args.package, threads=args.threads)
    for split in args.splits:
        frame = dataset.splits[split]
        labels = read_labels(split_labels_path(config, dataset, split))
        merged = frame.merge(labels, on=["query_key", "product_id"], how="inner")
        queries, grades = merged["query_key"], merged["grade"]
        print(
            f"{split}: {merged['query_key'].nunique()} queries, {len(merged)} of "
            f"{len(frame)} pairs labeled by the teacher"
        )
        rows = {
            "teacher": merged["teacher_score"],
            "BM25": bm25.score(merged["query"].tolist(), merged["product_id"].tolist()),
            package.name: package.score(merged["query"].tolist(), merged["title"].tolist()),
        }
        for name, scores in rows.items():
            print(f"  {pairwise_accuracy(queries, grades, scores):.4f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
