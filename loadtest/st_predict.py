"""Offline ``sentence_transformers.CrossEncoder.predict`` throughput on given pairs.

Runs in the infinity virtual environment (which has sentence-transformers and torch), not
the project's: ``.venv-infinity/bin/python loadtest/st_predict.py --model DIR --pairs FILE``.
``FILE`` is JSON ``[[query, text], ...]``. Prints one JSON object: pairs/s and settings.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="save_pretrained directory")
    parser.add_argument("--pairs", required=True, help="JSON file of [query, text] pairs")
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32, help="CrossEncoder's default")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    parser.add_argument("--budget-s", type=float, default=10.0, help="time to spend measuring")
    args = parser.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import CrossEncoder

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with open(args.pairs, encoding="utf-8") as f:
        pairs = [tuple(p) for p in json.load(f)]
    model = CrossEncoder(args.model, num_labels=1, max_length=args.max_length, device="cpu")
    model.predict(pairs[: args.batch_size], batch_size=args.batch_size, show_progress_bar=False)
    done = 0
    started = time.monotonic()
    # At least one pass over every pair; more passes while the time budget lasts.
    while True:
        scores = model.predict(pairs, batch_size=args.batch_size, show_progress_bar=False)
        done += len(scores)
        if time.monotonic() - started >= args.budget_s:
            break
    elapsed = time.monotonic() - started
    print(
        json.dumps(
            {
                "pairs_per_s": round(done / elapsed, 1),
                "pairs": done,
                "elapsed_s": round(elapsed, 3),
                "batch_size": args.batch_size,
                "torch_threads": torch.get_num_threads(),
                "sentence_transformers": sentence_transformers.__version__,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
