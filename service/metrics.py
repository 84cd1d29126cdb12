"""Every Prometheus metric of the service, defined once and bound to a registry passed in.

Tests build :class:`Metrics` on a fresh ``CollectorRegistry`` so nothing leaks between
apps. Names carry the ``relevance_`` prefix, durations are in seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

# From 1 ms (one small GPU batch) to 30 s (a teacher call); end-to-end and stage timings.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_PAIR_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DIFF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
CORRELATION_BUCKETS = (-0.5, 0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
# Scores in [0, 1] in twentieths: fine enough to compare two versions' distributions.
SCORE_BUCKETS = tuple(i / 20 for i in range(1, 21))


class RollingRatio:
    """Share of good events over the last ``window_s`` seconds, in one-second buckets."""

    def __init__(self, window_s: float) -> None:
        self._window_s = max(1, math.ceil(window_s))
        self._buckets: deque[list[int]] = deque()  # [second, good, total]
        self._lock = threading.Lock()

    def add(self, good: bool, now: float | None = None) -> None:
        second = int(time.monotonic() if now is None else now)
        with self._lock:
            if not self._buckets or self._buckets[-1][0] != second:
                self._buckets.append([second, 0, 0])
            self._buckets[-1][1] += int(good)
            self._buckets[-1][2] += 1
            self._evict(second)

    def ratio(self, now: float | None = None) -> float:
        """Good / total in the window; 1.0 when there were no events (nothing violated)."""
        second = int(time.monotonic() if now is None else now)
        with self._lock:
            self._evict(second)
            total = sum(b[2] for b in self._buckets)
            good = sum(b[1] for b in self._buckets)
        return good / total if total else 1.0

    def _evict(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self._window_s:
            self._buckets.popleft()


class Metrics:
    """All metrics of one app instance."""

    def __init__(self, registry: CollectorRegistry, slo_window_s: float = 300.0) -> None:
        self.registry = registry
        r = registry

        # Requests
        self.request_duration = Histogram(
            "relevance_request_duration_seconds",
            "End-to-end request latency by endpoint and HTTP status.",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.scored_items = Histogram(
            "relevance_request_items",
            "Items per scoring request.",
            ["endpoint"],
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.rejections = Counter(
            "relevance_rejected_requests_total",
            "Requests answered with an error, by reason (overloaded, deadline, too_large, ...).",
            ["reason"],
            registry=r,
        )

        # Stages
        self.tokenize_duration = Histogram(
            "relevance_tokenize_duration_seconds",
            "Time to tokenize one request's pairs.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_wait = Histogram(
            "relevance_queue_wait_seconds",
            "Time a pair waits between entering the queue and its batch starting inference.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference_duration = Histogram(
            "relevance_inference_duration_seconds",
            "Time of one batch in the model.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_pairs = Histogram(
            "relevance_batch_size_pairs",
            "Pairs per inference batch.",
            buckets=BATCH_PAIR_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "relevance_batch_tokens",
            "Padded tokens (pairs x longest pair) per inference batch.",
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_padding_ratio = Histogram(
            "relevance_batch_padding_ratio",
            "Share of a batch's tokens that are padding.",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "relevance_tokens_total",
            "Tokens sent to the model, by kind (real or padding).",
            ["kind"],
            registry=r,
        )
        self.dropped_pairs = Counter(
            "relevance_dropped_pairs_total",
            "Pairs skipped before inference, by reason (cancelled, expired).",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "relevance_queue_depth_pairs",
            "Pairs waiting to be batched.",
            registry=r,
        )
        self.inflight_pairs = Gauge(
            "relevance_inflight_pairs",
            "Pairs admitted and not yet answered (what the 429 limit counts).",
            registry=r,
        )
        # Exported so alerts and autoscalers divide by the configured limit, not a constant.
        self.queue_capacity = Gauge(
            "relevance_queue_capacity_pairs",
            "The admission limit on in-flight pairs (RELEVANCE_MAX_QUEUE_PAIRS).",
            registry=r,
        )

        # Score cache (service.score_cache)
        self.cache_lookups = Counter(
            "relevance_score_cache_lookups_total",
            "Pairs looked up in the score cache, by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "relevance_score_cache_evictions_total",
            "Score cache entries evicted to stay within its byte bound.",
            registry=r,
        )
        self.cache_bytes = Gauge(
            "relevance_score_cache_bytes",
            "Estimated bytes held by the score cache.",
            registry=r,
        )
        self.cache_entries = Gauge(
            "relevance_score_cache_entries",
            "Pairs held by the score cache.",
            registry=r,
        )

        # Item store of the representation student (service.item_store)
        self.item_store_lookups = Counter(
            "relevance_item_store_lookups_total",
            "Items looked up in the item store, by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.item_store_evictions = Counter(
            "relevance_item_store_evictions_total",
            "Item store entries evicted to stay within its byte bound.",
            registry=r,
        )
        self.item_store_bytes = Gauge(
            "relevance_item_store_bytes",
            "Estimated bytes held by the item store (RELEVANCE_ITEM_STORE_MB bounds it).",
            registry=r,
        )
        self.item_store_entries = Gauge(
            "relevance_item_store_entries",
            "Items whose vectors the item store holds.",
            registry=r,
        )
        self.encoded_texts = Counter(
            "relevance_encoded_texts_total",
            "Texts the representation student encoded, by side (query, item).",
            ["side"],
            registry=r,
        )

        # Cost model and start-up tuning (service.admission, service.warmup)
        self.batch_cost_fixed = Gauge(
            "relevance_cost_model_batch_seconds",
            "The cost model's fixed cost of one batch (a in a + b * padded tokens).",
            registry=r,
        )
        self.batch_cost_per_token = Gauge(
            "relevance_cost_model_token_seconds",
            "The cost model's cost of one padded token (b in a + b * padded tokens).",
            registry=r,
        )
        self.forecast_lateness = Gauge(
            "relevance_admission_forecast_lateness_ratio",
            "Answered over forecast latency of recent queued requests; scales admission's "
            "forecasts (1 = the cost model is right).",
            registry=r,
        )
        self.forecast_lateness.set(1.0)
        self.admission_tail = Gauge(
            "relevance_admission_tail_share",
            "Share of each request's budget admission admits against (the tail guard: 1 / "
            "the recent overrun quantile of requests admitted near their edge).",
            registry=r,
        )
        self.admission_tail.set(1.0)
        self.max_batch_size = Gauge(
            "relevance_max_batch_size_pairs",
            "The batch size in use (measured at warm-up unless RELEVANCE_MAX_BATCH_SIZE).",
            registry=r,
        )
        self.intra_op_threads = Gauge(
            "relevance_intra_op_threads",
            "ONNX Runtime intra-op threads in use (0 = its default).",
            registry=r,
        )
        self.intra_op_spinning = Gauge(
            "relevance_intra_op_spinning",
            "1 when ONNX Runtime's idle threads spin.",
            registry=r,
        )
        self.model_instances = Gauge(
            "relevance_model_instances",
            "Sessions of the model running batches side by side (one worker each).",
            registry=r,
        )
        self.model_instances.set(1)
        self.tuned_pairs_per_s = Gauge(
            "relevance_tuned_pairs_per_second",
            "Pairs per second of the setting the warm-up ladder chose, as it measured it.",
            registry=r,
        )

        # SLO
        self.slo_requests = Counter(
            "relevance_slo_requests_total",
            "Scoring requests counted against the latency SLO.",
            registry=r,
        )
        self.slo_violations = Counter(
            "relevance_slo_violations_total",
            "Scoring requests over the latency SLO or failed by the server.",
            registry=r,
        )
        self.slo_compliance = Gauge(
            "relevance_slo_compliance_ratio",
            "Share of scoring requests within the SLO over the rolling window.",
            registry=r,
        )
        self.slo_compliance.set(1.0)
        self._slo_window = RollingRatio(slo_window_s)

        # Model and readiness
        self.model_info = Gauge(
            "relevance_model_info",
            "The model being served (value 1).",
            ["name", "version", "variant", "provider"],
            registry=r,
        )
        self.ready = Gauge("relevance_ready", "1 once the model is warmed up.", registry=r)

        # Model versions, hot swap and canary (service.models): labelled by serving name
        # and package version, so two versions are compared on live traffic.
        self.served_models = Gauge(
            "relevance_served_model_info",
            "Versions serving each model name (value 1); a swapped-out one disappears.",
            ["model", "version", "package"],
            registry=r,
        )
        self.canary_share = Gauge(
            "relevance_canary_share_ratio",
            "Share of the requests naming no model that the canary takes (0 = no canary).",
            registry=r,
        )
        self.model_requests = Counter(
            "relevance_model_requests_total",
            "Scoring requests by the model and version chosen, and how (default, canary, named).",
            ["model", "version", "route"],
            registry=r,
        )
        self.model_latency = Histogram(
            "relevance_model_request_duration_seconds",
            "Time from a request's model being chosen to its scores, by model and version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.model_scores = Histogram(
            "relevance_model_score",
            "Scores returned, by model and version (the distribution a canary is judged on).",
            ["model", "version"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )

        # Teacher shadow
        self.shadow_requests = Counter(
            "relevance_shadow_requests_total",
            "Teacher calls by source (endpoint, mirror) and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        self.shadow_duration = Histogram(
            "relevance_shadow_duration_seconds",
            "Time of one teacher call.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.shadow_queue_depth = Gauge(
            "relevance_shadow_queue_depth",
            "Mirrored requests waiting for the teacher.",
            registry=r,
        )
        self.shadow_spearman = Histogram(
            "relevance_shadow_spearman",
            "Rank correlation of student and teacher scores per mirrored query.",
            buckets=CORRELATION_BUCKETS,
            registry=r,
        )
        # A histogram with a negative bucket exports no _sum, so the mean agreement (what a
        # panel and an alert read) comes from this summary's _sum / _count.
        self.shadow_agreement = Summary(
            "relevance_shadow_rank_agreement",
            "Spearman correlation of student and teacher per mirrored query (mean = sum/count).",
            registry=r,
        )
        self.shadow_abs_diff = Histogram(
            "relevance_shadow_mean_abs_diff",
            "Mean absolute student-teacher score difference per mirrored query.",
            buckets=DIFF_BUCKETS,
            registry=r,
        )
        self.shadow_pairs = Counter(
            "relevance_shadow_mirrored_pairs_total",
            "Pairs scored by the teacher through mirroring.",
            registry=r,
        )

    def observe_slo(self, latency_s: float, budget_s: float, ok: bool) -> None:
        """Count a scoring request against the SLO: good = answered and within budget."""
        good = ok and latency_s <= budget_s
        self.slo_requests.inc()
        if not good:
            self.slo_violations.inc()
        self._slo_window.add(good)
        self.slo_compliance.set(self._slo_window.ratio())

    def refresh(self) -> None:
        """Bring time-dependent gauges up to date (called before each scrape)."""
        self.slo_compliance.set(self._slo_window.ratio())
