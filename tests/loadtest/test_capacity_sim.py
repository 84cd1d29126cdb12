"""The capacity simulator on trivial traces, the trace generator and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.capacity import report
from loadtest.capacity.__main__ import main
from loadtest.capacity.cluster import PodModel, Timing, simulate
from loadtest.capacity.hpa import HpaSpec
from loadtest.capacity.trace import Trace, diurnal, read_csv

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "docs" / "benchmarks" / "bench-cpu-2026-11-23b.json"
POD = PodModel(pairs_per_s=100.0, min_items=100, max_items=100, startup_s=30.0)


def flat(rate: float, minutes: int) -> Trace:
    return Trace(tuple(60.0 * i for i in range(minutes)), (rate,) * minutes, 60.0)


def test_no_traffic_costs_the_fixed_pods_and_misses_nothing() -> None:
    result = simulate(flat(0.0, 60), POD, replicas=3)
    assert result.requests == 0 and result.attainment == 1.0
    assert result.pod_hours == pytest.approx(3.0)


def test_light_load_is_all_good_and_heavy_load_is_refused() -> None:
    # 1 pod of 100 pairs/s, 100-item requests (1 s each: an idle pod admits it, a busy one
    # refuses it), 0.2 requests/s: the pod is idle 80% of the time, so about 80% good;
    # 10 requests/s is 10x capacity: at most ~1 in 10 served.
    light = simulate(flat(20.0, 30), POD, replicas=1, seed=1)
    assert light.requests > 200 and 0.75 < light.attainment < 0.9
    heavy = simulate(flat(1000.0, 10), POD, replicas=1, seed=1)
    served = sum(heavy.series.good) + sum(heavy.series.late)
    assert served <= 0.11 * heavy.requests and sum(heavy.series.refused) > 0
    # Admission refuses what would be late: with room in the budget nothing admitted misses.
    fast = PodModel(pairs_per_s=200.0, min_items=100, max_items=100)
    assert sum(simulate(flat(1000.0, 10), fast, replicas=1, seed=1).series.late) == 0


def test_one_request_at_a_time_is_served_in_its_service_time() -> None:
    """A pod admits a request only when it can finish within 0.6 x its budget."""
    model = PodModel(pairs_per_s=1000.0, min_items=100, max_items=100, admission_factor=0.6)
    result = simulate(flat(50.0, 10), model, replicas=1, seed=3)
    # 0.1 s per request, 0.5 requests/s: a second request arriving within 0.1 s of another
    # is still admitted (0.2 s <= 0.6 s), so every request is good.
    assert result.attainment == 1.0 and result.requests > 100


def test_hpa_follows_a_step_and_new_pods_wait_for_start_up() -> None:
    trace = Trace(
        tuple(60.0 * i for i in range(60)), tuple(50.0 if i < 10 else 400.0 for i in range(60)), 60
    )
    hpa = HpaSpec(min_replicas=1, max_replicas=20, target=40)
    result = simulate(trace, POD, hpa=hpa, routing="least", seed=0)
    s = result.series
    assert s.pods[0] == 1 and max(s.pods) > 4
    # Every pod the HPA added became ready exactly two ticks (30 s) after it appeared.
    first_up = next(i for i, n in enumerate(s.pods) if n > 1)
    assert s.ready_pods[first_up] < s.pods[first_up]
    assert s.ready_pods[first_up + 2] == s.pods[first_up]
    # At the end the ready pods hold more than the offered load.
    assert s.ready_pods[-1] * POD.pairs_per_s > 400.0
    assert result.attainment_between(40 * 60, 60 * 60) > 0.95


def test_hpa_scales_down_only_after_the_window() -> None:
    trace = Trace((0.0, 600.0), (400.0, 0.0), 600.0)  # 10 minutes busy, 10 idle
    hpa = HpaSpec(min_replicas=1, max_replicas=20, target=40)
    s = simulate(trace, POD, hpa=hpa, routing="least").series
    peak_at = max(range(len(s.pods)), key=lambda i: (s.pods[i], -i))
    peak = s.pods[peak_at]
    # The load stops at 600 s; the count holds for the 300 s window after the last high
    # recommendation (the last sync before the stop), then drops to the minimum.
    idle_from = s.t_s.index(600.0)
    assert all(n == peak for n in s.pods[idle_from : idle_from + 19])
    assert s.pods[-1] == 1


def test_routing_to_the_least_loaded_pod_beats_random() -> None:
    trace = flat(300.0, 30)
    random = simulate(trace, POD, replicas=6, routing="random", seed=2)
    least = simulate(trace, POD, replicas=6, routing="least", seed=2)
    assert least.attainment > random.attainment + 0.1
    with pytest.raises(ValueError):
        simulate(trace, POD, replicas=6, routing="round-robin")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        simulate(trace, POD, replicas=6, hpa=HpaSpec(1, 2, 40))
    with pytest.raises(ValueError):
        simulate(trace, POD, replicas=6, timing=Timing(tick_s=10, sync_s=15))


def test_diurnal_trace_has_its_trough_peak_and_spike(tmp_path: Path) -> None:
    trace = diurnal(trough=100, peak=1000, spike_hour=20, spike_factor=2, spike_minutes=15)
    assert trace.duration_s == 24 * 3600 and len(trace.rates) == 24 * 60
    assert trace.rate_at(4 * 3600) == pytest.approx(100)
    assert trace.rate_at(16 * 3600) == pytest.approx(1000)
    before, during = trace.rate_at(20 * 3600 - 60), trace.rate_at(20 * 3600 + 60)
    assert during == pytest.approx(2 * before, rel=0.01)
    assert trace.rate_at(20 * 3600 + 15 * 60) == pytest.approx(before, rel=0.05)
    path = tmp_path / "trace.csv"
    trace.write_csv(path)
    again = read_csv(path)
    assert again.times_s == trace.times_s and again.step_s == trace.step_s
    assert again.rates == pytest.approx(trace.rates, abs=1e-3)
    (tmp_path / "bad.csv").write_text("time,rate\n0,1\n")
    with pytest.raises(ValueError, match="t_s"):
        read_csv(tmp_path / "bad.csv")


def test_pod_model_comes_from_the_bench_json() -> None:
    model = report.pod_model(BENCH, startup_s=30, admission_factor=0.6)
    assert model.pairs_per_s == 187.6
    assert (model.slo_latency_s, model.slo_items) == (1.0, 100)
    assert (model.min_items, model.max_items) == (20, 200)
    assert report.slo_objective(BENCH) == 0.99


def test_cli_reports_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.csv"
    flat(300.0, 20).write_csv(trace)
    png, out = tmp_path / "capacity.png", tmp_path / "capacity.json"
    args = ["--bench", str(BENCH), "--trace", str(trace), "--targets", "40,90"]
    assert main([*args, "--fixed", "3", "--png", str(png), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| least: HPA target 40 |" in printed and "| random: fixed 3 pods |" in printed
    record = json.loads(out.read_text())
    assert len(record["results"]) == 6 and record["pod"]["pairs_per_s"] == 187.6
    assert png.stat().st_size > 10_000
