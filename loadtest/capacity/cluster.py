"""A deployment of scoring pods under a trace, scaled by the HPA (or held at a fixed size).

Discrete-event, one request at a time, on a clock that advances in ticks of the scrape
interval (15 s):

- Requests arrive as a Poisson process at ``rate / mean items`` per second, each of a
  uniform 20-200 items (the benchmark's mix), and go to a ready pod chosen at random
  (kube-proxy's iptables mode picks an endpoint at random), or, with ``routing="least"``,
  to the ready pod holding the fewest pairs (a least-request balancer).
- A pod is one FIFO server working at the measured ``pairs_per_s``: a request of n items
  takes n / pairs_per_s once the requests ahead of it are done (Lindley's recursion). Its
  admission is the service's (``service.admission``): refused (429) when the pod holds
  pairs and those plus the request's own would take longer than ``admission_factor`` x the
  request's SLO budget (an idle pod admits anything; the burst allowance and the measured
  per-request overhead are left out). A request is good
  when admitted and answered within ``slo_latency_s * max(1, n / slo_items)``; refused,
  late and unroutable (no pod ready) requests are misses.
- Each tick every ready pod's in-flight pairs (``relevance_inflight_pairs``) are scraped;
  the adapter serves the HPA each pod's mean over the last ``metric_window_s``. Every
  ``sync_s`` the HPA (``hpa.Autoscaler``) decides; new pods serve ``startup_s`` later
  (scheduling, image start, model load, warm-up, the first readiness probe) and until then
  count as unready; a pod that has no scrape in the window yet counts as missing. Pods
  taken away stop receiving requests at once and finish what they hold (the preStop and
  drain of the manifests).
- Cost: pod-seconds from creation until removal (plus its drain) or the end of the trace.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from loadtest.capacity.hpa import Autoscaler, HpaSpec
from loadtest.capacity.trace import Trace

Routing = Literal["random", "least"]


@dataclass(frozen=True)
class PodModel:
    """One pod's capacity and the SLO it is held to."""

    pairs_per_s: float
    slo_latency_s: float = 1.0
    slo_items: int = 100
    admission_factor: float = 0.6
    min_items: int = 20
    max_items: int = 200
    startup_s: float = 30.0

    @property
    def mean_items(self) -> float:
        return (self.min_items + self.max_items) / 2

    def budget_s(self, items: int) -> float:
        return self.slo_latency_s * max(1.0, items / self.slo_items)


@dataclass(frozen=True)
class Timing:
    tick_s: float = 15.0  # the ServiceMonitor's scrape interval
    sync_s: float = 15.0  # the HPA controller's sync period
    metric_window_s: float = 60.0  # the adapter rule's avg_over_time window


@dataclass
class Pod:
    created_s: float
    ready_s: float
    removed_s: float | None = None
    free_at_s: float = 0.0
    inflight: deque[tuple[float, int]] = field(default_factory=deque)
    inflight_pairs: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def settle(self, now_s: float) -> int:
        """Drop the requests answered by ``now_s``; the pairs still held."""
        while self.inflight and self.inflight[0][0] <= now_s:
            self.inflight_pairs -= self.inflight.popleft()[1]
        return self.inflight_pairs

    def ready(self, now_s: float) -> bool:
        return self.removed_s is None and self.ready_s <= now_s


@dataclass
class Series:
    """Per tick: what was offered, who served it, how it went."""

    t_s: list[float] = field(default_factory=list)
    offered_pairs_per_s: list[float] = field(default_factory=list)
    pods: list[int] = field(default_factory=list)
    ready_pods: list[int] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    good: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    late: list[int] = field(default_factory=list)


@dataclass
class Result:
    label: str
    series: Series
    pod_seconds: float

    @property
    def pod_hours(self) -> float:
        return self.pod_seconds / 3600

    @property
    def requests(self) -> int:
        return sum(self.series.requests)

    @property
    def attainment(self) -> float:
        """Share of requests answered within the SLO (1.0 when there were none)."""
        return sum(self.series.good) / self.requests if self.requests else 1.0

    def worst_window(self, window_s: float = 300.0, tick_s: float = 15.0) -> float:
        """The lowest attainment over any ``window_s`` of the trace."""
        n = max(1, round(window_s / tick_s))
        good = np.convolve(self.series.good, np.ones(n), "valid")
        total = np.convolve(self.series.requests, np.ones(n), "valid")
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(total > 0, good / np.maximum(total, 1), 1.0)
        return float(ratio.min()) if len(ratio) else self.attainment

    def attainment_between(self, start_s: float, end_s: float) -> float:
        t = np.asarray(self.series.t_s)
        mask = (t >= start_s) & (t < end_s)
        total = int(np.asarray(self.series.requests)[mask].sum())
        return int(np.asarray(self.series.good)[mask].sum()) / total if total else 1.0

    @property
    def peak_pods(self) -> int:
        return max(self.series.pods)


def simulate(
    trace: Trace,
    model: PodModel,
    *,
    hpa: HpaSpec | None = None,
    replicas: int | None = None,
    timing: Timing | None = None,
    routing: Routing = "random",
    seed: int = 0,
    label: str = "",
) -> Result:
    """Run the trace through pods scaled by ``hpa``, or ``replicas`` fixed pods.

    ``routing``: "random" (kube-proxy's choice of endpoint) or "least" (the ready pod
    holding the fewest pairs, as a least-request balancer such as Envoy's does).
    """
    if (hpa is None) == (replicas is None):
        raise ValueError("give an HPA spec or a fixed replica count, not both")
    if routing not in ("random", "least"):
        raise ValueError(f"routing must be random or least, not {routing!r}")
    timing = timing or Timing()
    if timing.sync_s % timing.tick_s:
        raise ValueError("the sync period must be a multiple of the tick")
    rng = np.random.default_rng(seed)
    start = trace.times_s[0]
    initial = hpa.min_replicas if hpa is not None else int(replicas or 0)
    pods = [Pod(created_s=start, ready_s=start) for _ in range(initial)]
    autoscaler = Autoscaler(hpa) if hpa is not None else None
    series = Series()
    service_s_per_pair = 1.0 / model.pairs_per_s
    ticks = math.ceil(trace.duration_s / timing.tick_s)
    sync_every = round(timing.sync_s / timing.tick_s)

    for k in range(ticks):
        t0 = start + k * timing.tick_s
        t1 = t0 + timing.tick_s
        rate = trace.rate_at(t0)
        count = int(rng.poisson(rate * timing.tick_s / model.mean_items))
        arrivals = np.sort(rng.uniform(t0, t1, count))
        items = rng.integers(model.min_items, model.max_items + 1, count)
        picks = rng.random(count)
        ready = [p for p in pods if p.ready(t0)]
        good = refused = late = 0
        for arrival, n, pick in zip(arrivals.tolist(), items.tolist(), picks.tolist(), strict=True):
            if not ready:
                refused += 1  # 503: no endpoint
                continue
            if routing == "least":
                pod = min(ready, key=lambda p, a=arrival: p.settle(a))
            else:
                pod = ready[int(pick * len(ready))]
            held = pod.settle(arrival)
            budget = model.budget_s(n)
            if held and (held + n) * service_s_per_pair > model.admission_factor * budget:
                refused += 1  # 429
                continue
            finish = max(arrival, pod.free_at_s) + n * service_s_per_pair
            pod.free_at_s = finish
            pod.inflight.append((finish, n))
            pod.inflight_pairs += n
            if finish - arrival <= budget:
                good += 1
            else:
                late += 1

        # Scrape at the end of the tick: ready pods only (a starting pod has no target yet).
        for pod in pods:
            if pod.ready(t1):
                pod.samples.append((t1, pod.settle(t1)))
            while pod.samples and pod.samples[0][0] <= t1 - timing.metric_window_s:
                pod.samples.popleft()

        live = [p for p in pods if p.removed_s is None]
        values = [sum(v for _, v in p.samples) / len(p.samples) for p in live if p.samples]
        if autoscaler is not None and (k + 1) % sync_every == 0:
            unready = sum(1 for p in live if not p.ready(t1))
            missing = sum(1 for p in live if p.ready(t1) and not p.samples)
            desired = autoscaler.sync(t1, len(live), values, unready=unready, missing=missing)
            if desired > len(live):
                pods += [
                    Pod(created_s=t1, ready_s=t1 + model.startup_s)
                    for _ in range(desired - len(live))
                ]
            elif desired < len(live):
                # The ReplicaSet removes unready pods first, then the youngest.
                order = sorted(live, key=lambda p: (p.ready(t1), -p.created_s))
                for pod in order[: len(live) - desired]:
                    pod.removed_s = t1

        series.t_s.append(t0)
        series.offered_pairs_per_s.append(rate)
        series.pods.append(len(live))
        series.ready_pods.append(len(ready))
        series.metric.append(sum(values) / len(values) if values else 0.0)
        series.requests.append(count)
        series.good.append(good)
        series.refused.append(refused)
        series.late.append(late)

    end = start + ticks * timing.tick_s
    pod_seconds = 0.0
    for pod in pods:
        stop = end if pod.removed_s is None else max(pod.removed_s, pod.free_at_s)
        pod_seconds += max(0.0, min(stop, end) - pod.created_s)
    return Result(label, series, pod_seconds)
