"""The backend benchmark runs end to end on the tiny package (numbers not checked)."""

from __future__ import annotations

from pathlib import Path

from training.bench_backends import format_table, run_benchmark

PAIRS = [
    ("angle bracket", "Simpson Strong-Tie 12-Gauge Angle"),
    (
        "deck over",
        "BEHR Premium Textured DeckOver 1-gal. #SC-141 Tugboat Wood and Concrete Coating",
    ),
    ("mdf 3/4", "House of Fara 3/4 in. x 3 in. x 8 ft. MDF Fluted Casing"),
    ("microwaves", "Whirlpool 1.9 cu. ft. Over the Range Convection Microwave"),
]


def test_benchmark_rows(tiny_student_dir: Path, tiny_model_package: Path) -> None:
    results, conditions = run_benchmark(
        tiny_student_dir, tiny_model_package, PAIRS, threads=1, batch_sizes=(1, 4), repeats=1
    )
    assert [r.backend for r in results] == ["PyTorch FP32", "ONNX FP32", "ONNX INT8"]
    assert all(r.pairs_per_s[1] > 0 and r.pairs_per_s[4] > 0 for r in results)
    assert results[2].size_mb < results[1].size_mb  # INT8 is smaller than FP32
    table = format_table(results, conditions)
    assert "| ONNX INT8 |" in table and "bs=4" in table
