"""Benchmark reporting: the figures picked from a ladder, the ratios, the table and the plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from loadtest.bench import QUICK, HttpResult, assemble, plot, summary_table
from loadtest.stats import Slo
from loadtest.workload import Catalogue, Mix


def _level(concurrency: int, pairs_per_s: float, p99_ms: float, held: bool) -> dict:
    return {
        "concurrency": concurrency,
        "requests": 10,
        "failures": 0,
        "errors_by_status": {},
        "requests_per_s": 1.0,
        "pairs_per_s": pairs_per_s,
        "p50_ms": p99_ms / 2,
        "p95_ms": p99_ms,
        "p99_ms": p99_ms,
        "slo": {"held": held, "compliance": 1.0 if held else 0.5},
    }


def _figures() -> dict:
    service = HttpResult("service", [_level(1, 500, 80, True), _level(2, 1500, 200, True),
                                     _level(8, 1800, 900, False)])  # fmt: skip
    naive = HttpResult("naive", [_level(1, 300, 300, True), _level(2, 350, 1200, False)])
    peer = HttpResult("infinity", error="infinity: setup_infinity.sh failed: no wheel")
    args = argparse.Namespace(quick=True, model=Path("models/x"), provider="cpu", variant="auto",
                              threads=0)  # fmt: skip
    return assemble(
        args,
        QUICK,
        Slo(500, 100),
        {"name": "x", "version": "1", "max_length": 64},
        Catalogue.synthetic(),
        Mix(),
        {"pairs_per_s": 2000.0, "batch_size": 32, "variant": "fp32", "provider": "CPU"},
        {"error": "not installed"},
        {"service": service, "naive": naive, "infinity": peer},
    )


def test_figures_pick_highest_load_within_slo_and_ratios() -> None:
    figures = _figures()
    service = figures["http"]["service"]
    assert service["pairs_per_s_at_slo"] == 1500 and service["concurrency_at_slo"] == 2
    assert service["p99_ms_at_moderate"] == 200 and service["peak_pairs_per_s"] == 1800
    assert figures["http"]["infinity"] == {"error": "infinity: setup_infinity.sh failed: no wheel"}
    assert figures["ratios"]["service_over_naive"] == 5.0
    assert figures["ratios"]["service_over_ceiling"] == 0.75
    assert figures["ratios"]["service_over_peer"] is None
    assert figures["targets"]["service_over_naive"]["met"] is True
    assert figures["targets"]["service_over_ceiling"]["met"] is False
    json.dumps(figures, allow_nan=False)


def test_table_and_plot(tmp_path: Path) -> None:
    figures = _figures()
    table = summary_table(figures)
    assert "not measured: infinity: setup_infinity.sh failed" in table
    assert "service_over_naive" in table
    path = plot(figures, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratio_is_unbounded_when_the_other_system_never_holds_the_slo() -> None:
    figures = _figures()
    naive = HttpResult("naive", [_level(1, 300, 900, False), _level(2, 350, 1200, False)])
    args = argparse.Namespace(quick=True, model=Path("models/x"), provider="cpu", variant="auto",
                              threads=0)  # fmt: skip
    service = HttpResult("service", [_level(1, 500, 80, True)])
    figures = assemble(
        args,
        QUICK,
        Slo(500, 100),
        {"name": "x", "version": "1", "max_length": 64},
        Catalogue.synthetic(),
        Mix(),
        {"pairs_per_s": 2000.0, "batch_size": 32, "variant": "fp32", "provider": "CPU"},
        {"error": "not installed"},
        {"service": service, "naive": naive},
    )
    assert figures["http"]["naive"]["pairs_per_s_at_slo"] == 0
    assert figures["ratios"]["service_over_naive"] is None
    target = figures["targets"]["service_over_naive"]
    assert target["met"] is True and "naive never held the SLO" in target["note"]
    # A peer that was not measured at all is not "never held": its target stays unmet.
    assert figures["targets"]["service_over_peer"]["met"] is False
    assert "unbounded" in summary_table(figures)
    json.dumps(figures, allow_nan=False)


def test_the_raw_ceiling_tries_request_order_and_length_sorted_batches(
    tiny_model_package: Path, monkeypatch
) -> None:
    import dataclasses

    from loadtest import bench
    from service.scorers import OnnxScorer

    widths: dict[bool, list[int]] = {True: [], False: []}  # spinning -> padded batch widths
    real_load = OnnxScorer.load

    def load(*args, spinning: bool, **kwargs):
        scorer = real_load(*args, spinning=spinning, **kwargs)
        real_run = scorer.run

        def run(inputs):
            widths[spinning].append(inputs["input_ids"].shape[1])
            return real_run(inputs)

        scorer.run = run
        return scorer

    monkeypatch.setattr(OnnxScorer, "load", staticmethod(load))
    # Short and long pairs interleaved: in request order every batch of 2 pads to the long one.
    pairs = [("q", "a"), ("long query words", "a much longer title with many words")] * 4
    plan = dataclasses.replace(QUICK, batch_sizes=(2,), offline_budget_s=0.0)
    figures = bench.measure_ceiling(tiny_model_package, "cpu", "auto", 1, pairs, plan)
    assert set(figures["by_batch_size"]) == {"2", "2 sorted", "2 no-spin", "2 sorted no-spin"}
    best = max(figures["by_batch_size"].values())
    assert figures["pairs_per_s"] == best
    assert isinstance(figures["length_sorted"], bool)
    # One warm-up and one pass of 4 batches per order: request order pads every batch to the
    # long pair; sorted, two batches hold only the short pairs.
    request_order, length_sorted = widths[True][:5], widths[True][5:10]
    assert len(set(request_order)) == 1
    short = min(length_sorted)
    assert short < request_order[0] == max(length_sorted)
    assert length_sorted[1:].count(short) == 2


def test_the_raw_ceiling_also_runs_single_thread_sessions_side_by_side(
    tiny_model_package: Path, monkeypatch
) -> None:
    import dataclasses
    import threading

    from loadtest import bench
    from service.scorers import OnnxScorer

    opened: list[tuple[int, bool]] = []
    threads_seen: dict[int, set[str]] = {}
    real_load = OnnxScorer.load

    def load(*args, intra_op_threads: int, spinning: bool, **kwargs):
        scorer = real_load(*args, intra_op_threads=intra_op_threads, spinning=spinning, **kwargs)
        opened.append((intra_op_threads, spinning))
        real_run, key = scorer.run, len(opened)

        def run(inputs):
            threads_seen.setdefault(key, set()).add(threading.current_thread().name)
            return real_run(inputs)

        scorer.run = run
        return scorer

    monkeypatch.setattr(OnnxScorer, "load", staticmethod(load))
    pairs = [("q", "a"), ("long query words", "a much longer title with many words")] * 4
    plan = dataclasses.replace(QUICK, batch_sizes=(2,), offline_budget_s=0.0)
    figures = bench.measure_ceiling(
        tiny_model_package, "cpu", "auto", 2, pairs, plan, side_by_side=2
    )
    assert opened == [(2, True), (2, False), (1, False), (1, False)]
    assert {"2 x2", "2 sorted x2"} <= set(figures["by_batch_size"])
    assert figures["pairs_per_s"] == max(figures["by_batch_size"].values())
    assert figures["instances"] in (1, 2)
    # The two single-thread sessions each ran batches, on threads of their own.
    assert len(threads_seen[3] | threads_seen[4]) >= 2
