"""Scoring engine: wires the tokenization path, admission, batcher and inference worker
behind one async ``score()``.

The engine is what the app's lifespan owns. ``start()`` starts the batcher and the worker
and warms the model up in the background; ``ready`` turns true once warm-up is done
(``/readyz``). ``stop()`` refuses new work, finishes what was accepted, then releases the
model. It speaks in positions, not JSON: a refusal names the index of the text at fault
(:class:`~service.errors.InputTooLong`) and the request pipeline names the field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.activation import activate
from service.admission import Admission, AdmissionConfig
from service.batcher import BatcherConfig, MicroBatcher, PendingRequest
from service.errors import DeadlineExceeded, NotReady
from service.features import PairEncoder, TextLimits
from service.metrics import Metrics
from service.model_package import ModelPackage, load_package
from service.scorers import OnnxScorer, Provider, Scorer, Variant
from service.warmup import warm_up
from service.worker import BatchRun, InferenceWorker

log = logging.getLogger(__name__)

# Requests this small are tokenized on the event loop; bigger ones on the tokenizer thread,
# in chunks queued one by one.
INLINE_TOKENIZE_MAX_PAIRS = 8
TOKENIZE_CHUNK_PAIRS = 256


@dataclass(frozen=True)
class EngineResult:
    """Scores of one request in input order, plus where the time went."""

    query: str  # as scored: after the character limit
    texts: list[str]  # likewise
    logits: np.ndarray
    scores: np.ndarray  # the manifest's activation of the logits
    tokenize_s: float
    queue_s: float
    inference_s: float
    batches: int
    truncated: np.ndarray  # bool per text: cut to the character limit or the model's length


class ScoringEngine:
    """Scores (query, text) pairs with the package's model through the micro-batcher."""

    def __init__(
        self,
        package: ModelPackage,
        scorer: Scorer,
        encoder: PairEncoder,
        metrics: Metrics,
        *,
        batching: BatcherConfig | None = None,
        admission: AdmissionConfig | None = None,
        tokenizer_threads: int = 1,
        warmup: bool = True,
    ) -> None:
        self.package = package
        self.scorer = scorer
        self.encoder = encoder
        self.batcher_config = batching or BatcherConfig()
        self.admission = Admission(admission, metrics=metrics)
        self._metrics = metrics
        self._batcher = MicroBatcher(self.batcher_config, metrics)
        self._worker = InferenceWorker(self._batcher, scorer.run, metrics, self._on_batch)
        self._tokenizer_threads = tokenizer_threads
        self._tokenize_pool: ThreadPoolExecutor | None = None
        self._warmup_enabled = warmup
        self._warmup_task: asyncio.Task[None] | None = None
        self._ready = False
        self._closing = False
        self.status = "starting"

    @classmethod
    def from_package_dir(
        cls,
        model_dir: str | Path,
        metrics: Metrics,
        *,
        provider: Provider = "cpu",
        variant: Variant = "auto",
        intra_op_threads: int = 0,
        intra_op_spinning: bool = False,
        limits: TextLimits | None = None,
        batching: BatcherConfig | None = None,
        admission: AdmissionConfig | None = None,
        tokenizer_threads: int = 1,
        warmup: bool = True,
    ) -> ScoringEngine:
        """Load and verify a model package, open its graph and build the engine."""
        package = load_package(model_dir)
        m = package.manifest
        encoder = PairEncoder.for_package(package, limits)
        scorer = OnnxScorer.load(package, provider, variant, intra_op_threads, intra_op_spinning)
        metrics.model_info.labels(m.name, m.version, scorer.variant, scorer.provider).set(1)
        log.info("model %s %s: %s graph on %s", m.name, m.version, scorer.variant, scorer.provider)
        return cls(
            package,
            scorer,
            encoder,
            metrics,
            batching=batching,
            admission=admission,
            tokenizer_threads=tokenizer_threads,
            warmup=warmup,
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self._ready and not self._closing

    @property
    def pending_pairs(self) -> int:
        """Pairs queued and not yet packed into a batch."""
        return self._batcher.pending_pairs

    async def start(self) -> None:
        """Start the batcher and the worker, and warm the model up in the background."""
        self._tokenize_pool = ThreadPoolExecutor(
            self._tokenizer_threads, thread_name_prefix="relevance-tokenize"
        )
        await self._batcher.start()
        await self._worker.start()
        if self._warmup_enabled:
            self.status = "warming_up"
            self._warmup_task = asyncio.create_task(self._warmup(), name="relevance-warmup")
        else:
            self._set_ready()

    async def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Wait for warm-up to end (tests and the CLI's readiness log)."""
        if self._warmup_task is not None:
            await asyncio.wait({self._warmup_task}, timeout=timeout_s)
        return self.ready

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, finish accepted ones (up to ``timeout_s``), release the model."""
        self._closing = True
        self.status = "draining"
        self._metrics.ready.set(0)
        self.admission.close()
        if self._warmup_task is not None and not self._warmup_task.done():
            self._warmup_task.cancel()
        started = time.monotonic()
        # Requests still tokenizing hold reservations too: wait for all of them.
        if not await self.admission.wait_idle(timeout_s):
            log.warning(
                "shutdown: %d pairs unanswered after %.0f s",
                self.admission.reserved_pairs,
                timeout_s,
            )
        left_s = max(0.0, timeout_s - (time.monotonic() - started))
        await asyncio.gather(self._batcher.stop(left_s), self._worker.stop(left_s))
        if self._tokenize_pool is not None:
            self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self.scorer.close()
        self.status = "stopped"

    async def _warmup(self) -> None:
        started = time.monotonic()
        try:
            runs, pairs_per_s = await asyncio.to_thread(
                warm_up, self.scorer, self.encoder, self.batcher_config
            )
        except Exception:
            log.exception("warm-up failed; the service stays not ready")
            self.status = "warmup_failed"
            return
        # Admission's first throughput figure, until real batches have been measured, so
        # that a burst right after start-up is not all admitted.
        self.admission.forecast.seed(pairs_per_s)
        log.info(
            "warm-up: %d batch shapes in %.2f s; %.0f pairs/s on a full batch",
            runs,
            time.monotonic() - started,
            pairs_per_s,
        )
        self._set_ready()

    def _set_ready(self) -> None:
        self._ready = True
        self.status = "ready"
        self._metrics.ready.set(1)

    def _on_batch(self, run: BatchRun) -> None:
        self.admission.forecast.observe_batch(run.pairs, run.started, run.elapsed_s, run.backlogged)

    # ------------------------------------------------------------------ scoring
    async def score(
        self, query: str, texts: Sequence[str], *, deadline: float, truncate: bool = True
    ) -> EngineResult:
        """Score ``texts`` against ``query``; ``deadline`` is a ``time.monotonic()`` instant.

        Raises :class:`~service.errors.InputTooLong` (a text or the query over a limit
        with ``truncate`` off), :class:`~service.errors.Overloaded` (refused by admission),
        :class:`~service.errors.DeadlineExceeded`, :class:`~service.errors.NotReady`.
        """
        # Character limits before anything else: a 413 comes before a 503 or a 429, and no
        # later step (admission's count included) sees more than they allow.
        query, cut_texts, truncated = self.encoder.limits.apply(query, texts, truncate)
        if self._tokenize_pool is None or self._closing:
            raise NotReady("the model is not loaded or the server is shutting down")
        with self.admission.reserve(len(cut_texts)):
            started = time.monotonic()
            request = self._batcher.open(len(cut_texts), deadline)
            try:
                await self._tokenize_into(request, query, cut_texts, truncate, truncated)
            except BaseException:
                self._batcher.abandon(request)
                raise
            tokenize_s = time.monotonic() - started
            self._metrics.tokenize_duration.observe(tokenize_s)
            result = await self._batcher.result(request)
        logits = result.logits
        return EngineResult(
            query=query,
            texts=cut_texts,
            logits=logits,
            scores=activate(self.package.manifest.activation, logits),
            tokenize_s=tokenize_s,
            queue_s=result.queue_s,
            inference_s=result.inference_s,
            batches=result.batches,
            truncated=truncated,
        )

    async def _tokenize_into(
        self,
        request: PendingRequest,
        query: str,
        texts: list[str],
        truncate: bool,
        truncated: np.ndarray,
    ) -> None:
        """Tokenize and queue a request's pairs, marking in ``truncated`` the texts the
        tokenizer cut.

        Small requests are tokenized on the event loop (well under a millisecond, cheaper
        than two GIL hand-offs to a thread). Larger ones go to the tokenizer thread in
        chunks, each queued as soon as it is ready, so the model starts on the first
        batches while the rest is still being tokenized.
        """
        encoder = self.encoder
        if len(texts) <= INLINE_TOKENIZE_MAX_PAIRS:
            query = encoder.fit_query(query, truncate)
            pairs = encoder.encode(query, texts, truncate)
            self._batcher.add(request, 0, pairs)
            truncated |= [p.truncated for p in pairs]
            return
        loop = asyncio.get_running_loop()
        pool = self._tokenize_pool
        query = await loop.run_in_executor(pool, encoder.fit_query, query, truncate)
        for start in range(0, len(texts), TOKENIZE_CHUNK_PAIRS):
            if time.monotonic() >= request.deadline:
                raise DeadlineExceeded("deadline_ms: the deadline passed while tokenizing")
            chunk = texts[start : start + TOKENIZE_CHUNK_PAIRS]
            pairs = await loop.run_in_executor(pool, encoder.encode, query, chunk, truncate, start)
            self._batcher.add(request, start, pairs)
            truncated[start : start + len(pairs)] |= [p.truncated for p in pairs]

    # ------------------------------------------------------------------ description
    def info(self) -> dict[str, Any]:
        """Manifest, execution provider actually in use, batcher and admission settings."""
        return {
            "status": self.status,
            "ready": self.ready,
            "manifest": self.package.manifest.model_dump(mode="json"),
            "execution": {
                "provider": self.scorer.provider,
                "variant": self.scorer.variant,
                "batch_invariant": self.scorer.batch_invariant,
            },
            "batcher": dataclasses.asdict(self.batcher_config),
            "admission": dataclasses.asdict(self.admission.config),
            "max_query_tokens": self.encoder.max_query_tokens,
        }
