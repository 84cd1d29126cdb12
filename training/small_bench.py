"""Cost per pair of MiniLM-L6 against students of 3 and 2 of its layers, before any training.

``python -m training.small_bench [--threads 1] [--pairs 512] [--rounds 5]``: builds the L6
student and students of layers ``[1, 3, 5]`` and ``[2, 5]`` of it (random heads: speed
does not depend on the weights), exports each through the same export code as the
default package (FP32 + INT8, calibrated on training pairs) under ``runs/small_bench/``,
then times the INT8 graphs on the same validation pairs, in alternating rounds, fastest
round kept (:func:`training.small._package_timer`: tokenization + ONNX, as served).
The ``small`` stage measures the trained students the same way.
"""

from __future__ import annotations

import argparse
import json

from training.artifacts import load_dataset
from training.config import StudentConfig, load_config
from training.onnx_export.build import export_package
from training.onnx_export.calibration import calibration_pairs_from_frame
from training.small import _package_timer
from training.student import build_student, save_student

STUDENTS = {"L6": None, "L3 [1, 3, 5]": (1, 3, 5), "L2 [2, 5]": (2, 5)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    config = load_config()
    dataset = load_dataset(config)
    root = config.path("runs_dir") / "small_bench"
    timers = {}
    for index, (label, layers) in enumerate(STUDENTS.items()):
        package = root / f"package-{index}"
        if not (package / "manifest.json").is_file():
            model, _ = build_student(StudentConfig(layers=layers))
            saved = save_student(model, "minilm", root / f"student-{index}", 64)
            export_package(
                saved,
                package,
                name=f"bench-{index}",
                version="0",
                max_length=64,
                variants=("fp32", "int8"),
                calibration_pairs=calibration_pairs_from_frame(dataset.splits["train"]),
            )
        timers[label] = _package_timer(package, "int8", args.threads)
    sample = dataset.splits["validation"].sample(n=args.pairs, random_state=config.split.seed)
    queries, titles = sample["query"].tolist(), sample["title"].tolist()
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(args.rounds):
        for label, timer in timers.items():
            best[label] = min(best[label], timer(queries, titles, args.batch_size))
    rows = [
        {
            "student": label,
            "ms_per_pair": round(ms, 3),
            "pairs_per_second": round(1000.0 / ms, 1),
            "vs_L6": round(best["L6"] / ms, 2),
        }
        for label, ms in best.items()
    ]
    print(json.dumps({"threads": args.threads, "pairs": len(sample), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
