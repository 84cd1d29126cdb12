"""Scoring engine: tokenizer + micro-batcher + model behind one async ``score()``.

The engine is what the app's lifespan owns. ``start()`` starts the batcher and warms
the model up in the background; ``ready`` turns true once warm-up is done (``/readyz``).
``stop()`` refuses new work, finishes what was accepted, then releases the model.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from service.batcher import BatcherConfig, MicroBatcher, PendingRequest
from service.errors import DeadlineExceeded, NotReady, PayloadTooLarge
from service.features import EncodedPair, collate, load_tokenizer, tokenize_pairs
from service.metrics import Metrics
from service.model_package import ModelPackage, load_package
from service.onnx_scorer import OnnxScorer, Provider, Scorer, Variant

log = logging.getLogger(__name__)

# Requests this small are tokenized on the event loop; bigger ones on the tokenizer thread,
# in chunks queued one by one.
INLINE_TOKENIZE_MAX_PAIRS = 8
TOKENIZE_CHUNK_PAIRS = 256
WARMUP_QUERY = "cordless drill"
WARMUP_TEXT = "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit with battery and charger "


@dataclass(frozen=True)
class EngineResult:
    """Scores of one request in input order, plus where the time went."""

    logits: np.ndarray
    scores: np.ndarray
    tokenize_s: float
    queue_s: float
    inference_s: float
    batches: int
    truncated: np.ndarray  # bool per pair: the tokenizer cut the text to fit the model


class ScoringEngine:
    """Scores (query, text) pairs with the package's model through the micro-batcher."""

    def __init__(
        self,
        package: ModelPackage,
        scorer: Scorer,
        tokenizer: Tokenizer,
        batcher_config: BatcherConfig,
        metrics: Metrics,
        *,
        tokenizer_threads: int = 1,
        warmup: bool = True,
    ) -> None:
        self.package = package
        self.scorer = scorer
        self.batcher_config = batcher_config
        self.max_length = package.manifest.max_length
        self._tokenizer = tokenizer
        # Queries are measured and cut untruncated; pairs are truncated on the text side.
        self._query_tokenizer = copy.deepcopy(tokenizer)
        self._query_tokenizer.no_truncation()
        self._max_query_tokens = max(1, self.max_length // 2 - 2)
        self._metrics = metrics
        self._batcher = MicroBatcher(scorer.run, batcher_config, metrics)
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
        batcher_config: BatcherConfig | None = None,
        tokenizer_threads: int = 1,
        warmup: bool = True,
    ) -> ScoringEngine:
        """Load and verify a model package, open its graph and build the engine."""
        package = load_package(model_dir)
        tokenizer = load_tokenizer(package.tokenizer_path, package.manifest.max_length)
        scorer = OnnxScorer.load(package, provider, variant, intra_op_threads, intra_op_spinning)
        m = package.manifest
        metrics.model_info.labels(m.name, m.version, scorer.variant, scorer.provider).set(1)
        log.info("model %s %s: %s graph on %s", m.name, m.version, scorer.variant, scorer.provider)
        return cls(
            package,
            scorer,
            tokenizer,
            batcher_config or BatcherConfig(),
            metrics,
            tokenizer_threads=tokenizer_threads,
            warmup=warmup,
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self._ready and not self._closing

    @property
    def batcher(self) -> MicroBatcher:
        return self._batcher

    async def start(self) -> None:
        """Start the batcher and warm the model up in the background."""
        self._tokenize_pool = ThreadPoolExecutor(
            self._tokenizer_threads, thread_name_prefix="relevance-tokenize"
        )
        await self._batcher.start()
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
        if self._warmup_task is not None and not self._warmup_task.done():
            self._warmup_task.cancel()
        started = time.monotonic()
        # Requests still tokenizing hold reservations too: wait for all of them.
        if not await self._batcher.wait_idle(timeout_s):
            log.warning(
                "shutdown: %d pairs unanswered after %.0f s",
                self._batcher.reserved_pairs,
                timeout_s,
            )
        await self._batcher.stop(max(0.0, timeout_s - (time.monotonic() - started)))
        if self._tokenize_pool is not None:
            self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self.scorer.close()
        self.status = "stopped"

    async def _warmup(self) -> None:
        started = time.monotonic()
        try:
            runs, pairs_per_s = await asyncio.to_thread(self._warmup_runs)
        except Exception:
            log.exception("warm-up failed; the service stays not ready")
            self.status = "warmup_failed"
            return
        self._batcher.seed_rate(pairs_per_s)
        log.info(
            "warm-up: %d batch shapes in %.2f s; %.0f pairs/s on a full batch",
            runs,
            time.monotonic() - started,
            pairs_per_s,
        )
        self._set_ready()

    def _warmup_runs(self) -> tuple[int, float]:
        """Run the warm-up shapes, then time a full batch of middle length once more.

        The second run is warm: its rate is what admission control uses until real
        batches have been measured, so a burst right after start-up is not all admitted.
        """
        batches = list(self._warmup_batches())
        runs = self.scorer.warmup(batches)
        widths = sorted({b["input_ids"].shape[1] for b in batches})
        middle = widths[len(widths) // 2]
        probe = max(
            (b for b in batches if b["input_ids"].shape[1] == middle),
            key=lambda b: b["input_ids"].shape[0],
        )
        t0 = time.monotonic()
        self.scorer.run(probe)
        return runs, probe["input_ids"].shape[0] / max(time.monotonic() - t0, 1e-9)

    def _set_ready(self) -> None:
        self._ready = True
        self.status = "ready"
        self._metrics.ready.set(1)

    def _warmup_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Typical shapes: a few batch sizes by a few lengths, within the token budget."""
        cfg = self.batcher_config
        long_text = WARMUP_TEXT * (self.max_length // 8 + 1)
        template = collate(tokenize_pairs(self._tokenizer, [WARMUP_QUERY], [long_text]))
        width = template["input_ids"].shape[1]
        lengths = sorted({min(width, n) for n in (32, self.max_length // 2, self.max_length)})
        sizes = sorted({1, max(1, cfg.max_batch_size // 4), cfg.max_batch_size})
        for length in lengths:
            for size in sizes:
                rows = max(1, min(size, cfg.max_batch_tokens // length))
                # Cut pairs lack their last [SEP]: warm-up exercises shapes, not scores.
                yield {k: np.repeat(v[:, :length], rows, axis=0) for k, v in template.items()}

    # ------------------------------------------------------------------ scoring
    async def score(
        self,
        query: str,
        texts: Sequence[str],
        *,
        deadline: float,
        truncate: bool = True,
        text_field: str = "items[{}].text",
    ) -> EngineResult:
        """Score ``texts`` against ``query``; ``deadline`` is a ``time.monotonic()`` instant.

        Raises :class:`~service.errors.Overloaded` (queue full),
        :class:`~service.errors.PayloadTooLarge` (a pair over the model's length with
        ``truncate`` off), :class:`~service.errors.DeadlineExceeded`.
        """
        if self._tokenize_pool is None or self._closing:
            raise NotReady("the model is not loaded or the server is shutting down")
        with self._batcher.reserve(len(texts)):
            started = time.monotonic()
            request = self._batcher.open(len(texts), deadline)
            try:
                truncated = await self._tokenize_into(
                    request, query, list(texts), truncate, text_field
                )
            except BaseException:
                # Queued chunks of a refused request are skipped; an error the batcher
                # already set (an expired deadline) is superseded by this one.
                if not request.future.cancel() and not request.future.cancelled():
                    request.future.exception()
                raise
            tokenize_s = time.monotonic() - started
            self._metrics.tokenize_duration.observe(tokenize_s)
            result = await self._batcher.result(request)
        logits = result.logits
        scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return EngineResult(
            logits=logits,
            scores=scores,
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
        text_field: str,
    ) -> np.ndarray:
        """Tokenize and queue a request's pairs; returns which texts the tokenizer cut.

        Small requests are tokenized on the event loop (well under a millisecond, cheaper
        than two GIL hand-offs to a thread). Larger ones go to the tokenizer thread in
        chunks, each queued as soon as it is ready, so the model starts on the first
        batches while the rest is still being tokenized.
        """
        if len(texts) <= INLINE_TOKENIZE_MAX_PAIRS:
            query = self._fit_query(query, truncate)
            pairs = self._tokenize(query, texts, truncate, text_field, 0)
            self._batcher.add(request, 0, pairs)
            return np.array([p.truncated for p in pairs], dtype=bool)
        loop = asyncio.get_running_loop()
        pool = self._tokenize_pool
        query = await loop.run_in_executor(pool, self._fit_query, query, truncate)
        truncated = np.zeros(len(texts), dtype=bool)
        for start in range(0, len(texts), TOKENIZE_CHUNK_PAIRS):
            if time.monotonic() >= request.deadline:
                raise DeadlineExceeded("deadline_ms: the deadline passed while tokenizing")
            chunk = texts[start : start + TOKENIZE_CHUNK_PAIRS]
            pairs = await loop.run_in_executor(
                pool, self._tokenize, query, chunk, truncate, text_field, start
            )
            self._batcher.add(request, start, pairs)
            truncated[start : start + len(pairs)] = [p.truncated for p in pairs]
        return truncated

    def _tokenize(
        self, query: str, texts: list[str], truncate: bool, text_field: str, offset: int
    ) -> list[EncodedPair]:
        try:
            pairs = tokenize_pairs(self._tokenizer, [query] * len(texts), texts)
        except Exception as exc:  # tokenizers refuses when the text cannot absorb the cut
            raise PayloadTooLarge(
                f"query: too long for the model's {self.max_length} tokens ({exc})",
                field="query",
            ) from exc
        if not truncate:
            for i, pair in enumerate(pairs):
                if pair.truncated:
                    name = text_field.format(offset + i)
                    raise PayloadTooLarge(
                        f"{name}: query and text exceed the model's {self.max_length} tokens "
                        "and truncate is false",
                        field=name,
                    )
        return pairs

    def _fit_query(self, query: str, truncate: bool) -> str:
        """Keep the query within half the model's length so every text keeps room."""
        encoding = self._query_tokenizer.encode(query, add_special_tokens=False)
        if len(encoding.ids) <= self._max_query_tokens:
            return query
        if not truncate:
            raise PayloadTooLarge(
                f"query: {len(encoding.ids)} tokens exceed the limit of "
                f"{self._max_query_tokens} and truncate is false",
                field="query",
            )
        return query[: encoding.offsets[self._max_query_tokens - 1][1]]

    # ------------------------------------------------------------------ description
    def info(self) -> dict[str, Any]:
        """Manifest, execution provider actually in use, batcher settings, state."""
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
            "max_query_tokens": self._max_query_tokens,
        }
