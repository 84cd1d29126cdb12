"""Summaries of a load run: latency percentiles, throughput, errors by status, SLO verdict."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from loadtest.workload import slo_budget_s


@dataclass(frozen=True)
class Sample:
    """One answered (or failed) request. ``status`` 0 means no HTTP answer (connection error)."""

    endpoint: str
    items: int
    latency_s: float
    status: int
    # When it was sent (seconds from the start of the run) and, for status 0, why no answer.
    started_s: float = 0.0
    error: str = ""
    # What the server said the request took (its ``x-total-time``, from the request's
    # arrival to its answer), when the client read it: latency_s minus this is the time
    # spent outside the server's handling (connecting, queued in the kernel, the client).
    server_s: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Slo:
    """A request of n items meets it when answered with 2xx within ``latency_ms * max(1, n/items)``;
    the run holds it when at least ``target`` of the scoring requests meet it.

    The same per-request rule as the service's ``relevance_slo_*`` metrics; the teacher's
    ``/shadow/score`` is not counted (it has no latency SLO).
    """

    latency_ms: float = 250.0
    items: int = 100
    target: float = 0.99

    def budget_s(self, items: int) -> float:
        return slo_budget_s(items, self.latency_ms, self.items)

    def describe(self) -> str:
        return (
            f">= {self.target:.2%} of scoring requests answered 2xx within "
            f"{self.latency_ms:g} ms x max(1, items/{self.items})"
        )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(samples: Iterable[Sample], elapsed_s: float, slo: Slo) -> dict[str, object]:
    """Figures of a run: per endpoint and overall; throughput counts 2xx answers only."""
    samples = list(samples)
    scoring = [s for s in samples if s.endpoint != "shadow"]
    ok = [s for s in samples if s.ok]
    met = [s for s in scoring if s.ok and s.latency_s <= slo.budget_s(s.items)]
    compliance = len(met) / len(scoring) if scoring else math.nan
    # Latency over budget for each request; failures count as infinitely late.
    ratios = [s.latency_s / slo.budget_s(s.items) if s.ok else math.inf for s in scoring]
    errors = Counter(str(s.status) for s in samples if not s.ok)
    elapsed_s = max(elapsed_s, 1e-9)
    out: dict[str, object] = {
        "requests": len(samples),
        "failures": len(samples) - len(ok),
        "errors_by_status": dict(sorted(errors.items())),
        "elapsed_s": round(elapsed_s, 3),
        "requests_per_s": round(len(ok) / elapsed_s, 2),
        "pairs_per_s": round(sum(s.items for s in ok) / elapsed_s, 1),
        **latency_ms([s.latency_s for s in ok]),
        "mean_items": round(sum(s.items for s in samples) / len(samples), 1) if samples else 0,
        "slo": {
            "rule": slo.describe(),
            "compliance": round(compliance, 4) if scoring else None,
            "p99_latency_over_budget": _round(percentile(ratios, 99)),
            "held": bool(scoring) and compliance >= slo.target,
        },
        "by_endpoint": {
            name: {
                "requests": len(group),
                "failures": sum(not s.ok for s in group),
                **latency_ms([s.latency_s for s in group if s.ok]),
            }
            for name, group in _group(samples).items()
        },
    }
    return out


def latency_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    return {
        f"p{q}_ms": _round(percentile(latencies_s, q) * 1000) if latencies_s else None
        for q in (50, 95, 99)
    }


def _round(value: float) -> float | None:
    # JSON has no NaN or infinity: None stands for "no answer" / "failed requests".
    if not math.isfinite(value):
        return None
    return round(value, 3)


def _group(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.endpoint, []).append(s)
    return dict(sorted(groups.items()))
