"""What the simulation is fed (a benchmark's JSON) and what it reports (table, JSON, plot)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from loadtest.capacity.cluster import PodModel, Result
from loadtest.workload import parse_range


def pod_model(bench_path: Path, *, startup_s: float, admission_factor: float) -> PodModel:
    """One pod as the benchmark measured it: the service's pairs/s at SLO, the SLO, the mix."""
    bench = json.loads(bench_path.read_text(encoding="utf-8"))
    service = bench["http"]["service"]
    capacity = float(service["pairs_per_s_at_slo"] or service["peak_pairs_per_s"])
    if capacity <= 0:
        raise ValueError(f"{bench_path}: the service row has no throughput")
    lo, hi = parse_range(bench["workload"]["items"])
    return PodModel(
        pairs_per_s=capacity,
        slo_latency_s=float(bench["slo"]["latency_ms"]) / 1000,
        slo_items=int(bench["slo"]["items"]),
        admission_factor=admission_factor,
        min_items=lo,
        max_items=hi,
        startup_s=startup_s,
    )


def slo_objective(bench_path: Path) -> float:
    """The share of requests the SLO asks for (">= 99.00% of ..." in the bench's rule)."""
    rule = json.loads(bench_path.read_text(encoding="utf-8"))["slo"].get("rule", "")
    found = re.search(r">=\s*([\d.]+)%", rule)
    return float(found.group(1)) / 100 if found else 0.99


def summary(result: Result, spike: tuple[float, float] | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "label": result.label,
        "requests": result.requests,
        "slo_attainment": round(result.attainment, 5),
        "worst_5min_attainment": round(result.worst_window(300.0), 4),
        "pod_hours": round(result.pod_hours, 1),
        "peak_pods": result.peak_pods,
        "mean_pods": round(sum(result.series.pods) / len(result.series.pods), 2),
        "refused": sum(result.series.refused),
        "late": sum(result.series.late),
    }
    if spike is not None:
        row["spike_attainment"] = round(result.attainment_between(*spike), 4)
    return row


def markdown_table(rows: list[dict[str, Any]], objective: float) -> str:
    head = (
        "| run | SLO attainment | worst 5 min | during the spike | pod-hours | peak pods "
        "| mean pods | meets the objective |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['label']} | {r['slo_attainment']:.2%} | {r['worst_5min_attainment']:.1%} "
        f"| {r.get('spike_attainment', float('nan')):.1%} | {r['pod_hours']:.1f} "
        f"| {r['peak_pods']} | {r['mean_pods']:.1f} "
        f"| {'yes' if r['slo_attainment'] >= objective else 'no'} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def plot(results: list[Result], capacity: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    first = results[0].series
    hours = np.asarray(first.t_s) / 3600
    axes[0].plot(hours, first.offered_pairs_per_s, color="black", lw=1, label="offered")
    for r in results:
        h = np.asarray(r.series.t_s) / 3600
        axes[0].plot(h, np.asarray(r.series.ready_pods) * capacity, lw=1, label=r.label)
        axes[1].step(h, r.series.pods, where="post", lw=1, label=r.label)
        n = 20  # 5 minutes of 15 s ticks
        good = np.convolve(r.series.good, np.ones(n), "same")
        total = np.convolve(r.series.requests, np.ones(n), "same")
        axes[2].plot(h, np.where(total > 0, good / np.maximum(total, 1), 1.0), lw=1, label=r.label)
    axes[0].set_ylabel("pairs/s (ready pods x capacity)")
    axes[0].legend(fontsize=8, loc="upper left")
    axes[1].set_ylabel("pods")
    axes[1].legend(fontsize=8, loc="upper left")
    axes[2].set_ylabel("SLO attainment (5 min)")
    axes[2].set_ylim(0.5, 1.01)
    axes[2].set_xlabel("hour of the day")
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
