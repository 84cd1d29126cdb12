"""What both engine kinds share around scoring: start, background warm-up, readiness and a
draining stop.

:class:`~service.engine.ScoringEngine` (cross-encoder) and
:class:`~service.representation_engine.RepresentationEngine` differ in their lanes and in
what warm-up measures; how they come up and go down is one contract (``/readyz``, hot swap,
SIGTERM): a warm-up task in the background, ``ready`` once it is done, and ``stop()`` that
refuses new work, waits for what admission accepted, stops the lanes, then releases the
model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from service.admission import Admission
from service.metrics import Metrics
from service.worker import BatchRun

log = logging.getLogger(__name__)


class _ClosableModel(Protocol):
    def close(self) -> None: ...


class EngineLifecycle:
    """Lifecycle of an engine; subclasses set ``admission`` and ``scorer`` and the hooks."""

    admission: Admission
    scorer: _ClosableModel
    _metrics: Metrics

    def _init_lifecycle(self, metrics: Metrics, tokenizer_threads: int, warmup: bool) -> None:
        self._metrics = metrics
        self._tokenizer_threads = tokenizer_threads
        self._tokenize_pool: ThreadPoolExecutor | None = None
        self._warmup_enabled = warmup
        self._warmup_task: asyncio.Task[None] | None = None
        self._ready = False
        self._closing = False
        self.status = "starting"

    # ------------------------------------------------------------------ hooks
    async def _start_lanes(self) -> None:
        raise NotImplementedError

    async def _stop_lanes(self, timeout_s: float) -> None:
        raise NotImplementedError

    def _needs_warmup(self) -> bool:
        return self._warmup_enabled

    async def _warmup(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Free the model once nothing runs on it any more."""
        self.scorer.close()

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self._ready and not self._closing

    async def start(self) -> None:
        """Start the lanes, and warm the model up in the background (``ready`` after it)."""
        self._tokenize_pool = ThreadPoolExecutor(
            self._tokenizer_threads, thread_name_prefix="relevance-tokenize"
        )
        await self._start_lanes()
        if self._needs_warmup():
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
        await self._stop_lanes(max(0.0, timeout_s - (time.monotonic() - started)))
        if self._tokenize_pool is not None:
            self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self._release()
        self.status = "stopped"

    def _set_ready(self) -> None:
        self._ready = True
        self.status = "ready"
        self._metrics.ready.set(1)

    def _on_batch(self, run: BatchRun) -> None:
        """A finished batch's real cost: what admission's forecast learns from."""
        self.admission.observe_batch(
            run.pairs, run.width, run.real_tokens, run.started, run.elapsed_s, run.backlogged
        )
