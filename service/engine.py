"""Scoring engine: wires the tokenization path, admission, batcher and inference worker
behind one async ``score()``.

The engine is what the app's lifespan owns. ``start()`` starts the batcher and the worker
and warms the model up in the background (the ladder that picks the batch size and
threading, then the shapes that fit admission's cost model); ``ready`` turns true once
warm-up is done (``/readyz``). Pairs already scored come from the score cache
(:mod:`service.score_cache`): a request whose pairs are all cached never enters admission
or the batcher, and a partly cached one queues only its misses. ``stop()`` refuses new
work, finishes what was accepted, then releases the model. It speaks in positions, not
JSON: a refusal names the index of the text at fault
(:class:`~service.errors.InputTooLong`) and the request pipeline names the field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.activation import activate
from service.admission import Admission, AdmissionConfig
from service.batcher import BatcherConfig, MicroBatcher, PendingRequest
from service.cost_model import TimedRun
from service.engine_lifecycle import EngineLifecycle
from service.errors import DeadlineExceeded, InputTooLong, NotReady
from service.features import PairEncoder, TextLimits
from service.metrics import Metrics
from service.model_package import ModelPackage, load_package
from service.score_cache import ScoreCache
from service.scorers import OnnxScorer, Provider, Scorer, Variant
from service.warmup import (
    LadderConfig,
    Tuning,
    chosen_runs,
    instance_threads,
    run_ladder,
    warm_up,
)
from service.worker import InferenceWorker

log = logging.getLogger(__name__)

# Requests this small are tokenized on the event loop; bigger ones on the tokenizer thread,
# in chunks queued one by one.
INLINE_TOKENIZE_MAX_PAIRS = 8
TOKENIZE_CHUNK_PAIRS = 256
# Warm-up shapes up to this padded width fit the cost model (product titles and queries).
FIT_MAX_WIDTH = 64


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
    cached: int = 0  # pairs answered from the score cache


class ScoringEngine(EngineLifecycle):
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
        ladder: LadderConfig | None = None,
        open_scorer: Callable[[int, bool], Scorer] | None = None,
        cache_bytes: int = 0,
        extra_scorers: Sequence[Scorer] = (),
    ) -> None:
        self.package = package
        self.scorer = scorer
        # Sessions beside ``scorer`` running batches at the same time (model_instances).
        self.extra_scorers: list[Scorer] = []
        self.encoder = encoder
        self.batcher_config = batching or BatcherConfig()
        admission = admission or AdmissionConfig()
        admission = dataclasses.replace(
            admission,
            batch_pairs=self.batcher_config.max_batch_size,
            max_pair_tokens=encoder.max_length,
        )
        self.admission = Admission(admission, metrics=metrics)
        self._init_lifecycle(metrics, tokenizer_threads, warmup)
        self._batcher = MicroBatcher(self.batcher_config, metrics)
        # Through self.scorer: the ladder may swap the session before traffic.
        self._workers = [
            InferenceWorker(
                self._batcher, lambda inputs: self.scorer.run(inputs), metrics, self._on_batch
            )
        ]
        self._set_extra_scorers(list(extra_scorers))
        self._ladder = ladder
        self._open_scorer = open_scorer
        self.tuning: Tuning | None = None
        m = package.manifest
        self.cache = ScoreCache(cache_bytes, metrics)
        self.cache.bind(ScoreCache.model_key(m.name, m.version, scorer.variant))
        metrics.max_batch_size.set(self.batcher_config.max_batch_size)

    @property
    def model_instances(self) -> int:
        """Sessions running batches side by side."""
        return 1 + len(self.extra_scorers)

    def _set_extra_scorers(self, extra: list[Scorer]) -> list[InferenceWorker]:
        """Serve with ``extra`` sessions beside ``scorer``, a worker each (before traffic);
        returns the new workers, for the caller to start."""
        self.extra_scorers = extra
        new = [
            InferenceWorker(
                self._batcher, session.run, self._metrics, self._on_batch, name=f"inference-{i}"
            )
            for i, session in enumerate(extra, start=1)
        ]
        self._workers = [self._workers[0], *new]
        instances = self.model_instances
        self.batcher_config = dataclasses.replace(self.batcher_config, model_instances=instances)
        self._batcher.config = self.batcher_config
        self.admission.set_instances(instances)
        self._metrics.model_instances.set(instances)
        return new

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
        ladder: LadderConfig | None = None,
        cache_bytes: int = 0,
        model_instances: int = 1,
    ) -> ScoringEngine:
        """Load and verify a model package, open its graph and build the engine.

        ``ladder``: what warm-up may tune (``None``: nothing, the values given are used,
        ``model_instances`` sessions of the graph included; CPU only).
        """
        package = load_package(model_dir)
        m = package.manifest
        encoder = PairEncoder.for_package(package, limits)
        scorer = OnnxScorer.load(package, provider, variant, intra_op_threads, intra_op_spinning)
        chosen_variant = scorer.variant

        def open_scorer(threads: int, spinning: bool) -> Scorer:
            return OnnxScorer.load(package, provider, chosen_variant, threads, spinning)

        # Threading matters on CPU only; on a GPU the ladder still picks the batch size.
        on_cpu = scorer.provider == "CPUExecutionProvider"
        extra: list[Scorer] = []
        if ladder is None and model_instances > 1:
            if on_cpu:
                # The cores shared out unless the threads were set (as the ladder does).
                threads = instance_threads(model_instances, intra_op_threads or None)
                if threads != intra_op_threads:
                    scorer.close()
                    scorer = open_scorer(threads, intra_op_spinning)
                extra = [
                    open_scorer(threads, intra_op_spinning) for _ in range(model_instances - 1)
                ]
            else:
                log.warning("model_instances ignored: only CPU sessions run side by side")
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
            ladder=ladder,
            open_scorer=open_scorer if on_cpu else None,
            cache_bytes=cache_bytes,
            extra_scorers=extra,
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def pending_pairs(self) -> int:
        """Pairs queued and not yet packed into a batch."""
        return self._batcher.pending_pairs

    async def _start_lanes(self) -> None:
        await self._batcher.start()
        for worker in self._workers:
            await worker.start()

    async def _stop_lanes(self, timeout_s: float) -> None:
        await asyncio.gather(
            self._batcher.stop(timeout_s), *(worker.stop(timeout_s) for worker in self._workers)
        )

    def _release(self) -> None:
        self.scorer.close()
        for session in self.extra_scorers:
            session.close()
        self.cache.clear()  # another version (a hot swap) may serve on; free this one's

    async def _warmup(self) -> None:
        started = time.monotonic()
        try:
            if self._ladder is not None and self._ladder.budget_s > 0:
                tuning = await asyncio.to_thread(
                    run_ladder, self.scorer, self.encoder, self._ladder, self._open_scorer
                )
                for worker in self._apply(tuning):
                    await worker.start()
            runs, timed = await asyncio.to_thread(
                warm_up, self.scorer, self.encoder, self.batcher_config
            )
            for session in self.extra_scorers:  # each session allocates per shape too
                await asyncio.to_thread(warm_up, session, self.encoder, self.batcher_config)
        except Exception:
            log.exception("warm-up failed; the service stays not ready")
            self.status = "warmup_failed"
            return
        # Admission's cost model, from the real session on this machine: the warm-up
        # shapes timed, and the ladder's runs at the chosen setting.
        # Only the short shapes: a line through widths up to max_length would be bent by
        # attention's quadratic term into a large per-batch cost that short pairs (the
        # common case) do not pay; longer batches correct it online as they run.
        # Timed on one session: with several side by side, a batch takes 1/n of the
        # throughput (the ladder's side-by-side runs are timed so already).
        n = self.model_instances
        short = [
            TimedRun(run.rows, run.width, run.seconds / n)
            for run in timed
            if run.width <= FIT_MAX_WIDTH
        ]
        self.admission.fit([*short, *(chosen_runs(self.tuning) if self.tuning else [])])
        cost = self.admission.forecast.describe()
        log.info(
            "warm-up: %d batch shapes in %.2f s; cost model %.2f ms a batch + %.2f us a token",
            runs,
            time.monotonic() - started,
            cost["batch_ms"],
            cost["token_us"],
        )
        self._set_ready()

    def _apply(self, tuning: Tuning) -> list[InferenceWorker]:
        """Serve with what the ladder chose (before any traffic: warm-up is not over);
        returns the workers of the sessions added, for the caller to start."""
        self.tuning = tuning
        if tuning.scorer is not None and tuning.scorer is not self.scorer:
            old, self.scorer = self.scorer, tuning.scorer
            old.close()
        new = self._set_extra_scorers(tuning.scorers[1:]) if tuning.model_instances > 1 else []
        self.batcher_config = dataclasses.replace(
            self.batcher_config, max_batch_size=tuning.max_batch_size
        )
        self._batcher.config = self.batcher_config
        self.admission.set_batch_pairs(tuning.max_batch_size)
        m = self._metrics
        m.max_batch_size.set(tuning.max_batch_size)
        m.intra_op_threads.set(tuning.intra_op_threads)
        m.intra_op_spinning.set(int(tuning.intra_op_spinning))
        m.tuned_pairs_per_s.set(tuning.pairs_per_s)
        return new

    # ------------------------------------------------------------------ scoring
    async def score(
        self,
        query: str,
        texts: Sequence[str],
        *,
        deadline: float,
        truncate: bool = True,
        arrived: float | None = None,
        use_cache: bool = True,
    ) -> EngineResult:
        """Score ``texts`` against ``query``; ``deadline`` and ``arrived`` (when the request
        reached the server; default now) are ``time.monotonic()`` instants.

        ``use_cache`` off: every pair goes to the model and nothing is read from the score
        cache (the scores are still remembered). Raises :class:`~service.errors.InputTooLong`
        (a text or the query over a limit with ``truncate`` off),
        :class:`~service.errors.Overloaded` (refused by admission),
        :class:`~service.errors.DeadlineExceeded`, :class:`~service.errors.NotReady`.
        """
        # Character limits before anything else: a 413 comes before a 503 or a 429, and no
        # later step (admission's count included) sees more than they allow.
        query, cut_texts, truncated = self.encoder.limits.apply(query, texts, truncate)
        if self._tokenize_pool is None or self._closing:
            raise NotReady("the model is not loaded or the server is shutting down")
        n = len(cut_texts)
        logits = np.empty(n, dtype=np.float32)
        keys: list[bytes] = []
        misses = list(range(n))
        if self.cache.enabled:
            keys, found = self.cache.lookup(
                query, cut_texts, need_untruncated=not truncate, count=use_cache
            )
            if use_cache:
                misses = [i for i, hit in enumerate(found) if hit is None]
                for i, hit in enumerate(found):
                    if hit is not None:
                        logits[i] = hit[0]
                        truncated[i] |= hit[1]
        if not misses:  # all cached: no admission, no queue, no model
            return self._result(query, cut_texts, logits, truncated, cached=n)
        miss_texts = cut_texts if len(misses) == n else [cut_texts[i] for i in misses]
        miss_cut = np.zeros(len(misses), dtype=bool)
        tokens = self.admission.estimate_tokens(query, miss_texts)
        with self.admission.reserve(
            len(misses), tokens=tokens, arrived=arrived, deadline=deadline
        ) as ticket:
            started = time.monotonic()
            request = self._batcher.open(len(misses), deadline, ticket.due)
            ticket.progress = lambda: request.remaining
            try:
                real = await self._tokenize_into(request, query, miss_texts, truncate, miss_cut)
            except InputTooLong as exc:
                self._batcher.abandon(request)
                if exc.index is not None and len(misses) != n:
                    raise InputTooLong(exc.detail, index=misses[exc.index]) from None
                raise
            except BaseException:
                self._batcher.abandon(request)
                raise
            chars = len(query) * len(miss_texts) + sum(len(t) for t in miss_texts)
            self.admission.note_tokens(ticket, chars, real)
            tokenize_s = time.monotonic() - started
            self._metrics.tokenize_duration.observe(tokenize_s)
            result = await self._batcher.result(request)
        logits[misses] = result.logits
        truncated[misses] |= miss_cut
        if keys:
            self.cache.put([keys[i] for i in misses], result.logits.tolist(), miss_cut.tolist())
        return self._result(
            query,
            cut_texts,
            logits,
            truncated,
            cached=n - len(misses),
            tokenize_s=tokenize_s,
            queue_s=result.queue_s,
            inference_s=result.inference_s,
            batches=result.batches,
        )

    def _result(
        self,
        query: str,
        texts: list[str],
        logits: np.ndarray,
        truncated: np.ndarray,
        *,
        cached: int,
        tokenize_s: float = 0.0,
        queue_s: float = 0.0,
        inference_s: float = 0.0,
        batches: int = 0,
    ) -> EngineResult:
        return EngineResult(
            query=query,
            texts=texts,
            logits=logits,
            scores=activate(
                self.package.manifest.activation, logits, self.package.manifest.calibration
            ),
            tokenize_s=tokenize_s,
            queue_s=queue_s,
            inference_s=inference_s,
            batches=batches,
            truncated=truncated,
            cached=cached,
        )

    async def _tokenize_into(
        self,
        request: PendingRequest,
        query: str,
        texts: list[str],
        truncate: bool,
        truncated: np.ndarray,
    ) -> int:
        """Tokenize and queue a request's pairs, marking in ``truncated`` the texts the
        tokenizer cut; returns their tokens (special tokens included).

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
            return sum(len(p) for p in pairs)
        loop = asyncio.get_running_loop()
        pool = self._tokenize_pool
        query = await loop.run_in_executor(pool, encoder.fit_query, query, truncate)
        tokens = 0
        for start in range(0, len(texts), TOKENIZE_CHUNK_PAIRS):
            if time.monotonic() >= request.deadline:
                raise DeadlineExceeded("deadline_ms: the deadline passed while tokenizing")
            chunk = texts[start : start + TOKENIZE_CHUNK_PAIRS]
            pairs = await loop.run_in_executor(pool, encoder.encode, query, chunk, truncate, start)
            self._batcher.add(request, start, pairs)
            truncated[start : start + len(pairs)] |= [p.truncated for p in pairs]
            tokens += sum(len(p) for p in pairs)
        return tokens

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
                "model_instances": self.model_instances,
            },
            "batcher": dataclasses.asdict(self.batcher_config),
            "tuning": self.tuning.describe() if self.tuning is not None else None,
            "admission": dataclasses.asdict(self.admission.config),
            "cost_model": self.admission.forecast.describe(),
            "score_cache": self.cache.info(),
            "max_query_tokens": self.encoder.max_query_tokens,
        }
