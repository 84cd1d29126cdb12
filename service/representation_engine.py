"""The representation student's engine: an item store, two lanes of the micro-batcher, and an
optional cascade into a cross-encoder. Same interface as :class:`~service.engine.ScoringEngine`
(``start``/``stop``/``ready``/``wait_ready``/``score``/``info``/``admission``/``package``),
so the app, the routes and a registry of models hold either kind.

**Request path.** The texts are cut to the character limits; each item is looked up in the
:class:`~service.item_store.ItemStore` by (package, id, text). The query goes to the *query
lane* at once, and the items not stored (each distinct one once) to the *item lane* under
admission; both run concurrently. Item vectors as stored (float16) and the query's vector
give ``logit = scale * similarity + bias`` and ``score = sigmoid(logit)``
(:mod:`relevance_core.representation`), after the manifest's calibration when it has one.
A freshly encoded item is scored with exactly the vectors that are stored for it, so a
score is the same whether its item came from the store or not.

**Why two lanes.** Each lane (:mod:`service.vector_lane`) is a micro-batcher with its own
inference thread and its own ONNX session (the package has a graph per side anyway).
A request whose items are all stored needs one query encoding; in a single queue it would
wait behind every item batch queued before it (a cold request of 100 items is ~4 full
batches), and its latency would be set by other requests' misses. With a lane of its own,
a query waits only for other queries (one short text each, batched together when they
arrive together) and runs while an item batch is in the model: the two threads share the
cores, so an item batch slows a query encoding down but never queues it. The query lane
does not wait for company (``max_wait_ms`` 0): its model is idle most of the time, and
while it is busy queries gather by themselves. Admission (429) counts the item lane's work
only; the query lane is bounded by the server's concurrent-request limit.

**Cascade.** With ``cascade_top_k = k > 0`` (per request, or the default) the student
scores every item, and a cross-encoder engine re-scores the best ``k``. The answer stays
on one [0, 1] scale in one order, the re-scored head above the tail:
:func:`combine_cascade` gives the head the cross-encoder's scores and the tail its
student scores, scaled down (if need be) so that the best tail item sits just below the
worst head item; the tail's order and relative spacing are kept. A raw logit answer is
the logit of that combined score.

**Preload.** A catalogue (:mod:`service.preload`) is encoded through the item lane during
warm-up, with a progress bar, and ``ready`` (``/readyz``) waits for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.activation import activate
from relevance_core.representation import (
    logits_from_similarity,
    one_query_similarities,
)
from service.admission import Admission, AdmissionConfig
from service.batcher import BatcherConfig
from service.cost_model import TimedRun
from service.engine import EngineResult, ScoringEngine
from service.engine_lifecycle import EngineLifecycle
from service.errors import InputTooLong, InvalidInput, NotReady
from service.features import EncodedPair, TextLimits, collate
from service.item_store import ItemStore, StoredItem
from service.metrics import Metrics
from service.representation_package import RepresentationPackage, load_representation_package
from service.scorers.base import Provider, Variant
from service.scorers.representation import RepresentationScorer, TextEncoder
from service.vector_lane import VectorLane

log = logging.getLogger(__name__)

QUERY, ITEM = "query", "item"
INLINE_TOKENIZE_MAX_TEXTS = 8
PRELOAD_CHUNK_TEXTS = 256
PRELOAD_DEADLINE_S = 3600.0  # per chunk; its due instant (EDF) puts live requests first
QUERY_LANE = BatcherConfig(max_batch_size=32, max_batch_tokens=8192, max_wait_ms=0.0)
# Warm-up shapes of the item lane: what admission's cost model is fitted to.
WARMUP_ROWS = (1, 4, 16, 32)
WARMUP_WIDTHS = (8, 16, 32)
# Each shape runs once untimed, then the best of this many timed runs (a shared machine's
# noise is one-sided: never faster than the model).
WARMUP_REPEATS = 2
# How long the item lane's timing waits for the cascade's own warm-up to end.
CASCADE_WARMUP_WAIT_S = 300.0


# --------------------------------------------------------------------------- cascade


def combine_cascade(scores: np.ndarray, head: Sequence[int], head_scores: np.ndarray) -> np.ndarray:
    """One [0, 1] score per item with the re-scored ``head`` ranked above the tail.

    ``scores``: the student's scores of every item; ``head``: the indices the cross-encoder
    re-scored, ``head_scores`` its scores of them. The head keeps the cross-encoder's
    scores. When the best tail score is not below the worst head score, every tail score
    is multiplied by ``(worst head) / (best tail) * (1 - 1e-6)``: the tail keeps its order
    and relative spacing, and its best item lands just below the head's worst.
    """
    out = np.asarray(scores, dtype=np.float64).copy()
    head = list(head)
    head_values = np.asarray(head_scores, dtype=np.float64)
    out[head] = head_values
    tail = np.ones(len(out), dtype=bool)
    tail[head] = False
    if head and tail.any():
        floor, best_tail = float(head_values.min()), float(out[tail].max())
        if best_tail >= floor and best_tail > 0:
            out[tail] *= floor / best_tail * (1 - 1e-6)
    return out


def score_logits(scores: np.ndarray) -> np.ndarray:
    """The logit of each score (what a ``raw_scores`` answer gives for a cascade)."""
    s = np.clip(np.asarray(scores, np.float64), 1e-12, 1 - 1e-12)
    return np.log(s) - np.log1p(-s)


# --------------------------------------------------------------------------- engine


class RepresentationEngine(EngineLifecycle):
    """Scores (query, item) pairs with a representation package, items from the store."""

    kind = "representation"

    def __init__(
        self,
        package: RepresentationPackage,
        scorer: RepresentationScorer,
        metrics: Metrics,
        *,
        limits: TextLimits | None = None,
        batching: BatcherConfig | None = None,
        admission: AdmissionConfig | None = None,
        tokenizer_threads: int = 1,
        warmup: bool = True,
        store_bytes: int = 0,
        preload: Sequence[tuple[str | None, str]] | None = None,
        preload_progress: bool = True,
        cascade: ScoringEngine | None = None,
        cascade_top_k: int = 0,
    ) -> None:
        m = package.manifest
        self.package = package
        self.scorer = scorer
        self.limits = limits or TextLimits()
        self.query_encoder = TextEncoder(str(package.tokenizer_path), m.query.max_length)
        self.item_encoder = TextEncoder(str(package.tokenizer_path), m.item.max_length)
        self.batcher_config = batching or BatcherConfig()
        admission = dataclasses.replace(
            admission or AdmissionConfig(),
            batch_pairs=self.batcher_config.max_batch_size,
            max_pair_tokens=m.item.max_length,
        )
        self.admission = Admission(admission, metrics=metrics)
        self._init_lifecycle(metrics, tokenizer_threads, warmup)
        self.store = ItemStore(store_bytes, m.item_vectors.dtype, metrics)
        self.store.bind(m.name, m.version)
        self._query_lane = VectorLane(QUERY, QUERY_LANE, scorer.encode, m.architecture, metrics)
        self._item_lane = VectorLane(
            ITEM, self.batcher_config, scorer.encode, m.architecture, metrics, self._on_batch
        )
        if cascade is not None and cascade.package.manifest.activation != "sigmoid":
            raise ValueError("the cascade's cross-encoder must score in [0, 1] (sigmoid)")
        self.cascade = cascade
        self.cascade_top_k = cascade_top_k
        self._preload = list(preload or [])
        self._preload_progress = preload_progress
        self.preloaded = 0
        metrics.max_batch_size.set(self.batcher_config.max_batch_size)

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
        **kwargs: Any,
    ) -> RepresentationEngine:
        """Load and verify a representation package, open both graphs, build the engine."""
        package = load_representation_package(model_dir)
        m = package.manifest
        scorer = RepresentationScorer.load(
            package, provider, variant, intra_op_threads, intra_op_spinning
        )
        metrics.model_info.labels(m.name, m.version, scorer.variant, scorer.provider).set(1)
        log.info(
            "representation model %s %s (%s): %s graphs on %s",
            m.name,
            m.version,
            m.architecture,
            scorer.variant,
            scorer.provider,
        )
        return cls(package, scorer, metrics, **kwargs)

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        cascade_ready = self.cascade is None or self.cascade.ready
        return super().ready and cascade_ready

    @property
    def pending_pairs(self) -> int:
        return self._item_lane.batcher.pending_pairs + self._query_lane.batcher.pending_pairs

    async def _start_lanes(self) -> None:
        await self._query_lane.start()
        await self._item_lane.start()
        if self.cascade is not None:
            await self.cascade.start()

    def _needs_warmup(self) -> bool:
        return self._warmup_enabled or bool(self._preload)

    async def wait_ready(self, timeout_s: float = 60.0) -> bool:
        started = time.monotonic()
        await super().wait_ready(timeout_s)
        if self.cascade is not None:
            await self.cascade.wait_ready(max(0.0, timeout_s - (time.monotonic() - started)))
        return self.ready

    async def _stop_lanes(self, timeout_s: float) -> None:
        await asyncio.gather(
            self._query_lane.stop(timeout_s),
            self._item_lane.stop(timeout_s),
            *([self.cascade.stop(timeout_s)] if self.cascade is not None else []),
        )

    async def _warmup(self) -> None:
        started = time.monotonic()
        try:
            if self._warmup_enabled:
                if self.cascade is not None:
                    # The cascade's warm-up (its ladder and cost model) runs the cross-
                    # encoder on the same cores: timed beside it, this model's shapes
                    # measured up to 8x their cost (451 against ~55 us a token), and the
                    # first unseen requests were refused on that forecast.
                    await self.cascade.wait_ready(CASCADE_WARMUP_WAIT_S)
                timed = await asyncio.to_thread(self._time_shapes)
                self.admission.fit(timed)
            if self._preload:
                self.status = "preloading"
                await self.preload(self._preload, progress=self._preload_progress)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("warm-up or preload failed; the service stays not ready")
            self.status = "warmup_failed"
            return
        log.info(
            "warm-up: %.2f s, %d catalogue items stored (%.1f MB)",
            time.monotonic() - started,
            self.preloaded,
            self.store.bytes / 1e6,
        )
        self._set_ready()

    def _time_shapes(self) -> list[TimedRun]:
        """Run both graphs on a few shapes before traffic; the item side's times are what
        admission's cost model starts from (later batches correct it online)."""
        runs = []
        for width in WARMUP_WIDTHS:
            if width > self.item_encoder.max_length:
                continue
            for rows in WARMUP_ROWS:
                batch = _dummy_batch(self.item_encoder, rows, width)
                width = batch["input_ids"].shape[1]
                self.scorer.encode(QUERY, batch)
                self.scorer.encode(ITEM, batch)  # a shape's first run allocates
                seconds = []
                for _ in range(WARMUP_REPEATS):
                    began = time.perf_counter()
                    self.scorer.encode(ITEM, batch)
                    seconds.append(time.perf_counter() - began)
                runs.append(TimedRun(rows, width, min(seconds)))
        return runs

    async def preload(
        self, items: Sequence[tuple[str | None, str]], *, progress: bool = False
    ) -> int:
        """Encode catalogue items ``(id or None, text)`` into the store through the item
        lane, in chunks queued behind live requests; returns how many were encoded.

        Texts are cut to the character limits as a request's are, so that a request
        sending the same text finds it.
        """
        from tqdm import tqdm  # the progress bar only; imported when a catalogue is loaded

        _, texts, _ = self.limits.apply("", [t for _, t in items], True)
        keys, todo = [], []
        for (item_id, _), text in zip(items, texts, strict=True):
            key = self.store.key(item_id, text)
            if key not in self.store:
                keys.append(key)
                todo.append(text)
        bar = tqdm(
            total=len(todo), desc="item preload", unit="item", file=sys.stderr, disable=not progress
        )
        try:
            for start in range(0, len(todo), PRELOAD_CHUNK_TEXTS):
                chunk = todo[start : start + PRELOAD_CHUNK_TEXTS]
                encoded = await self._tokenize(self.item_encoder, chunk, True, 0)
                deadline = time.monotonic() + PRELOAD_DEADLINE_S
                result = await self._item_lane.encode(encoded, deadline)
                for k, vectors, enc in zip(
                    keys[start : start + len(chunk)], result.logits, encoded, strict=True
                ):
                    self.store.put(k, vectors, enc.truncated)
                bar.update(len(chunk))
        finally:
            bar.close()
        self.preloaded += len(todo)
        return len(todo)

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
        item_ids: Sequence[str | None] | None = None,
        cascade_top_k: int | None = None,
    ) -> EngineResult:
        """Score ``texts`` against ``query``, as :meth:`ScoringEngine.score` does.

        ``item_ids``: the caller's id of each text (None: keyed by the text alone);
        ``use_cache`` off: every item is encoded anew (and stored); ``cascade_top_k``:
        the best k re-scored by the cross-encoder (None: the default, 0: off). Raises
        :class:`InputTooLong`, :class:`~service.errors.Overloaded`,
        :class:`~service.errors.DeadlineExceeded`, :class:`NotReady`, :class:`InvalidInput`.
        """
        query, cut_texts, truncated = self.limits.apply(query, texts, truncate)
        top_k = self.cascade_top_k if cascade_top_k is None else cascade_top_k
        if top_k > 0 and self.cascade is None:
            raise InvalidInput(
                "cascade_top_k: no cross-encoder is configured for the cascade "
                "(RELEVANCE_CASCADE_MODEL_DIR)",
                field="cascade_top_k",
            )
        if self._tokenize_pool is None or self._closing:
            raise NotReady("the model is not loaded or the server is shutting down")
        n = len(cut_texts)
        ids: Sequence[str | None] = item_ids if item_ids is not None else [None] * n
        started = time.monotonic()
        query_pair = self.query_encoder.encode([query], truncate, offset=-1)
        keys = [self.store.key(i, t) for i, t in zip(ids, cut_texts, strict=True)]
        found = self.store.lookup(keys, need_untruncated=not truncate, count=use_cache)
        # Each distinct missing item once (a text may come twice in one request).
        missing: dict[bytes, list[int]] = {}
        for i, item in enumerate(found):
            if item is None:
                missing.setdefault(keys[i], []).append(i)
        # The query runs in its own lane while the missing items are encoded.
        query_job = asyncio.ensure_future(self._query_lane.encode(query_pair, deadline))
        try:
            tokenize_s, item_batch = await self._encode_items(
                missing, cut_texts, truncate, deadline, arrived, started
            )
        except BaseException:
            if not query_job.cancel() and not query_job.cancelled():
                query_job.exception()  # retrieved: the item side's error is the answer
            raise
        query_result = await query_job
        for key, rows in missing.items():
            for i in rows:
                found[i] = item_batch.items[key]
        stored = [item for item in found if item is not None]
        truncated |= [item.truncated for item in stored]
        m = self.package.manifest
        vectors = [item.vectors.astype(np.float32) for item in stored]
        sims = one_query_similarities(m.architecture, query_result.logits[0], vectors)
        logits = logits_from_similarity(m.head.scale, m.head.bias, sims)
        scores = activate(m.activation, logits, m.calibration)
        queue_s, inference_s, batches = (
            query_result.queue_s,
            query_result.inference_s,
            query_result.batches,
        )
        if item_batch.queue_s is not None:
            queue_s = max(queue_s, item_batch.queue_s)
            inference_s += item_batch.inference_s
            batches += item_batch.batches
        result = EngineResult(
            query=query,
            texts=cut_texts,
            logits=logits.astype(np.float32),
            scores=scores,
            tokenize_s=tokenize_s,
            queue_s=queue_s,
            inference_s=inference_s,
            batches=batches,
            truncated=truncated,
            cached=n - sum(len(r) for r in missing.values()),
        )
        if top_k > 0:
            result = await self._cascade(result, top_k, deadline, truncate, arrived, use_cache)
        return result

    async def _encode_items(
        self,
        missing: dict[bytes, list[int]],
        texts: list[str],
        truncate: bool,
        deadline: float,
        arrived: float | None,
        started: float,
    ) -> tuple[float, _ItemBatch]:
        """Encode the missing items through the item lane under admission; store them."""
        out = _ItemBatch()
        if not missing:
            return time.monotonic() - started, out
        first = [rows[0] for rows in missing.values()]
        miss_texts = [texts[i] for i in first]
        tokens = self.admission.estimate_tokens("", miss_texts)
        with self.admission.reserve(
            len(first), tokens=tokens, arrived=arrived, deadline=deadline
        ) as ticket:
            request = self._item_lane.open(len(first), deadline, ticket.due)
            ticket.progress = lambda: request.remaining
            try:
                encoded: list[EncodedPair] = []
                for start in range(0, len(miss_texts), PRELOAD_CHUNK_TEXTS):
                    chunk = miss_texts[start : start + PRELOAD_CHUNK_TEXTS]
                    try:
                        part = await self._tokenize(self.item_encoder, chunk, truncate, start)
                    except InputTooLong as exc:
                        index = first[exc.index] if exc.index is not None else None
                        raise InputTooLong(exc.detail, index=index) from None
                    self._item_lane.batcher.add(request, start, part)
                    encoded += part
            except BaseException:
                self._item_lane.batcher.abandon(request)
                raise
            self.admission.note_tokens(
                ticket, sum(len(t) for t in miss_texts), sum(len(p) for p in encoded)
            )
            tokenize_s = time.monotonic() - started
            self._metrics.tokenize_duration.observe(tokenize_s)
            result = await self._item_lane.batcher.result(request)
        for key, vectors, pair in zip(missing, result.logits, encoded, strict=True):
            out.items[key] = self.store.put(key, vectors, pair.truncated)
        out.queue_s, out.inference_s, out.batches = (
            result.queue_s,
            result.inference_s,
            result.batches,
        )
        return tokenize_s, out

    async def _tokenize(
        self, encoder: TextEncoder, texts: list[str], truncate: bool, offset: int
    ) -> list[EncodedPair]:
        if len(texts) <= INLINE_TOKENIZE_MAX_TEXTS:
            return encoder.encode(texts, truncate, offset)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._tokenize_pool, encoder.encode, texts, truncate, offset
        )

    async def _cascade(
        self,
        result: EngineResult,
        top_k: int,
        deadline: float,
        truncate: bool,
        arrived: float | None,
        use_cache: bool,
    ) -> EngineResult:
        """Re-score the student's best ``top_k`` with the cross-encoder (see the module)."""
        assert self.cascade is not None
        head = np.argsort(-result.scores, kind="stable")[:top_k].tolist()
        try:
            ce = await self.cascade.score(
                result.query,
                [result.texts[i] for i in head],
                deadline=deadline,
                truncate=truncate,
                arrived=arrived,
                use_cache=use_cache,
            )
        except InputTooLong as exc:
            index = head[exc.index] if exc.index is not None else None
            raise InputTooLong(exc.detail, index=index) from None
        scores = combine_cascade(result.scores, head, ce.scores)
        truncated = result.truncated.copy()
        truncated[head] |= ce.truncated
        return dataclasses.replace(
            result,
            logits=score_logits(scores).astype(np.float32),
            scores=scores.astype(np.float32),
            tokenize_s=result.tokenize_s + ce.tokenize_s,
            queue_s=max(result.queue_s, ce.queue_s),
            inference_s=result.inference_s + ce.inference_s,
            batches=result.batches + ce.batches,
            truncated=truncated,
        )

    # ------------------------------------------------------------------ description
    def info(self) -> dict[str, Any]:
        """Manifest, graphs in use, lanes, admission, item store and cascade."""
        return {
            "status": self.status,
            "ready": self.ready,
            "kind": self.kind,
            "manifest": self.package.manifest.model_dump(mode="json"),
            "execution": {
                "provider": self.scorer.provider,
                "variant": self.scorer.variant,
                "batch_invariant": self.scorer.batch_invariant,
            },
            "batcher": dataclasses.asdict(self.batcher_config),
            "query_lane": dataclasses.asdict(QUERY_LANE),
            "admission": dataclasses.asdict(self.admission.config),
            "cost_model": self.admission.forecast.describe(),
            "item_store": {**self.store.info(), "preloaded": self.preloaded},
            "cascade": {
                "default_top_k": self.cascade_top_k,
                "model": self.cascade.info() if self.cascade is not None else None,
            },
            "max_query_tokens": self.query_encoder.max_length,
        }


@dataclasses.dataclass
class _ItemBatch:
    """The items a request encoded (as stored) and where their time went."""

    items: dict[bytes, StoredItem] = dataclasses.field(default_factory=dict)
    queue_s: float | None = None
    inference_s: float = 0.0
    batches: int = 0


def _dummy_batch(encoder: TextEncoder, rows: int, width: int) -> dict[str, np.ndarray]:
    """A padded batch of ``rows`` texts of about ``width`` tokens."""
    (pair,) = encoder.encode([" ".join(["item"] * max(1, width - 2))], True)
    return collate([pair] * rows)
