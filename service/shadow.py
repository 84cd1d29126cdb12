"""Teacher shadow: the LLM teacher behind ``/shadow/score`` and a background mirror of ``/score``.

The teacher is slow (a few pairs per second on CPU) and optional. Nothing here may slow
or break ``/score``:

* the teacher loads in the background, and only when a teacher directory is configured;
  ``relevance_core.teacher`` loads torch only then;
* ``/shadow/score`` has its own concurrency limit: when every slot is taken it answers
  429 at once instead of queueing;
* mirroring samples a fraction of ``/score`` requests into a bounded queue with a
  non-blocking put; when the queue is full, or the teacher is failing or missing, the
  request is dropped and counted. A single background worker scores mirrored requests
  and exports student/teacher agreement (Spearman per query, mean absolute difference)
  and, optionally, appends the pairs to a JSONL file the training pipeline can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.errors import ShadowBusy, ShadowFailed, ShadowTimeout, ShadowUnavailable
from service.metrics import Metrics

log = logging.getLogger(__name__)


class ShadowScorer(Protocol):
    """A teacher: blocking, scores in [0, 1] for (query, text) pairs."""

    def score(self, queries: list[str], texts: list[str]) -> np.ndarray: ...


def load_teacher_scorer(teacher_dir: Path, threads: int = 1) -> ShadowScorer:
    """Load the real teacher (torch is imported here, so only on demand)."""
    # Fail before importing torch: that import alone takes seconds of CPU and the GIL from
    # the /score requests being served meanwhile.
    if not Path(teacher_dir).is_dir():
        raise FileNotFoundError(f"no teacher package at {teacher_dir}")
    from relevance_core.teacher import load_teacher

    return load_teacher(teacher_dir, threads=threads or None)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation with average ranks for ties; None when undefined."""
    if len(a) < 2:
        return None
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # Ties share the mean of their ranks.
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


@dataclass(frozen=True)
class MirrorJob:
    query: str
    item_ids: list[str]
    texts: list[str]
    student_scores: np.ndarray


class TeacherShadow:
    """Owns the optional teacher, the shadow endpoint's slots and the mirror worker."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        loader: Callable[[], ShadowScorer] | None = None,
        name: str = "teacher",
        concurrency: int = 1,
        timeout_s: float = 120.0,
        mirror_rate: float = 0.0,
        queue_size: int = 16,
        output_path: Path | None = None,
        seed: int | None = None,
    ) -> None:
        self._metrics = metrics
        self._loader = loader
        self.name = name
        self.version = "unknown"
        self._timeout_s = timeout_s
        self._slots = concurrency
        self._busy = 0
        self.mirror_rate = mirror_rate
        self._queue: asyncio.Queue[MirrorJob] = asyncio.Queue(maxsize=queue_size)
        self._output_path = output_path
        self._random = random.Random(seed)
        self._teacher: ShadowScorer | None = None
        self._load_done = asyncio.Event()
        self.status = "disabled" if loader is None else "loading"
        # Endpoint calls and the mirror worker each get their own threads.
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def available(self) -> bool:
        return self._teacher is not None

    async def start(self) -> None:
        """Start loading the teacher (if configured) and the mirror worker."""
        self._pool = ThreadPoolExecutor(self._slots + 1, thread_name_prefix="relevance-teacher")
        if self._loader is not None:
            self._tasks.append(asyncio.create_task(self._load(), name="relevance-teacher-load"))
        self._tasks.append(asyncio.create_task(self._mirror_worker(), name="relevance-mirror"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def wait_loaded(self, timeout_s: float = 600.0) -> bool:
        """Wait until the teacher loaded or failed; True when it is available."""
        if self._loader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._load_done.wait(), timeout_s)
        return self.available

    async def _load(self) -> None:
        assert self._loader is not None
        started = time.monotonic()
        try:
            teacher = await asyncio.get_running_loop().run_in_executor(self._pool, self._loader)
        except Exception as exc:
            self.status = f"failed: {type(exc).__name__}: {exc}"
            log.error("teacher shadow disabled, loading failed: %s", exc)
        else:
            self._teacher = teacher
            self.name = str(getattr(teacher, "name", self.name))
            self.version = str(getattr(teacher, "version", self.version))
            self.status = "ready"
            log.info("teacher %s loaded in %.1f s", self.name, time.monotonic() - started)
        self._load_done.set()

    def info(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "teacher": self.name,
            "concurrency": self._slots,
            "busy": self._busy,
            "mirror_rate": self.mirror_rate,
            "mirror_queue": self._queue.qsize(),
            "output": str(self._output_path) if self._output_path else None,
        }

    # ------------------------------------------------------------------ endpoint
    async def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Teacher scores for one request, or 503 (no teacher, or it failed), 429 (busy), 504
        (too slow)."""
        teacher = self._teacher
        if teacher is None:
            reason = {
                "disabled": "no teacher configured (set RELEVANCE_TEACHER_DIR)",
                "loading": "the teacher is still loading",
            }.get(self.status, f"the teacher could not be loaded ({self.status})")
            self._metrics.shadow_requests.labels("endpoint", "unavailable").inc()
            raise ShadowUnavailable(f"shadow teacher unavailable: {reason}")
        if self._busy >= self._slots:
            self._metrics.shadow_requests.labels("endpoint", "busy").inc()
            raise ShadowBusy(
                f"the teacher is busy ({self._slots} concurrent requests); retry later",
                retry_after_s=5,
            )
        self._busy += 1
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        future = loop.run_in_executor(self._pool, _call, teacher, query, list(texts))
        # The slot is freed when the thread really ends, not when the client gives up.
        future.add_done_callback(lambda _: self._release())
        try:
            scores = await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except TimeoutError:
            self._metrics.shadow_requests.labels("endpoint", "timeout").inc()
            raise ShadowTimeout(f"the teacher took longer than {self._timeout_s:g} s") from None
        except Exception as exc:
            self._metrics.shadow_requests.labels("endpoint", "error").inc()
            log.warning("teacher call failed: %s: %s", type(exc).__name__, exc)
            raise ShadowFailed(f"the teacher failed ({type(exc).__name__})") from exc
        self._metrics.shadow_duration.observe(time.monotonic() - started)
        self._metrics.shadow_requests.labels("endpoint", "ok").inc()
        return scores

    def _release(self) -> None:
        self._busy -= 1

    # ------------------------------------------------------------------ mirroring
    def mirror(
        self, query: str, item_ids: Sequence[str], texts: Sequence[str], student_scores: np.ndarray
    ) -> bool:
        """Maybe queue a scored /score request for the teacher; never blocks, never raises."""
        try:
            if self.mirror_rate <= 0 or self._random.random() >= self.mirror_rate:
                return False
            if self._teacher is None:
                self._metrics.shadow_requests.labels("mirror", "unavailable").inc()
                return False
            job = MirrorJob(query, list(item_ids), list(texts), np.asarray(student_scores))
            self._queue.put_nowait(job)
            self._metrics.shadow_queue_depth.set(self._queue.qsize())
            return True
        except asyncio.QueueFull:
            self._metrics.shadow_requests.labels("mirror", "dropped").inc()
            return False
        except Exception:  # the mirror must never turn a good /score answer into an error
            log.exception("mirroring failed")
            return False

    async def _mirror_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            self._metrics.shadow_queue_depth.set(self._queue.qsize())
            teacher = self._teacher
            if teacher is None:
                self._metrics.shadow_requests.labels("mirror", "unavailable").inc()
                continue
            started = time.monotonic()
            future = loop.run_in_executor(self._pool, _call, teacher, job.query, job.texts)
            try:
                teacher_scores = await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
            except TimeoutError:
                self._metrics.shadow_requests.labels("mirror", "timeout").inc()
                # Do not pile more work on a stuck teacher: wait for the thread to end.
                await asyncio.gather(future, return_exceptions=True)
                continue
            except Exception as exc:
                self._metrics.shadow_requests.labels("mirror", "error").inc()
                log.warning("mirrored teacher call failed: %s", exc)
                continue
            self._metrics.shadow_duration.observe(time.monotonic() - started)
            self._metrics.shadow_requests.labels("mirror", "ok").inc()
            self._record(job, teacher_scores)
            if self._output_path is not None:
                try:
                    await loop.run_in_executor(self._pool, self._append, job, teacher_scores)
                except OSError as exc:
                    log.warning("cannot write mirrored pairs to %s: %s", self._output_path, exc)

    def _record(self, job: MirrorJob, teacher_scores: np.ndarray) -> None:
        student = np.asarray(job.student_scores, dtype=np.float64)
        self._metrics.shadow_pairs.inc(len(student))
        self._metrics.shadow_abs_diff.observe(float(np.abs(student - teacher_scores).mean()))
        rho = spearman(student, teacher_scores)
        if rho is not None:
            self._metrics.shadow_spearman.observe(rho)
            self._metrics.shadow_agreement.observe(rho)

    def _append(self, job: MirrorJob, teacher_scores: np.ndarray) -> None:
        assert self._output_path is not None
        self._output_path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            json.dumps(
                {
                    "query": job.query,
                    "text": text,
                    "item_id": item_id,
                    "teacher_score": float(t),
                    "student_score": float(s),
                    "teacher": self.name,
                    # Added later: readers must accept records without it.
                    "teacher_version": self.version,
                },
                ensure_ascii=False,
            )
            for item_id, text, t, s in zip(
                job.item_ids, job.texts, teacher_scores, job.student_scores, strict=True
            )
        ]
        with self._output_path.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def _call(teacher: ShadowScorer, query: str, texts: list[str]) -> np.ndarray:
    """Run the teacher and check what it returned (a bad teacher must fail loudly here)."""
    scores = np.asarray(teacher.score([query] * len(texts), texts), dtype=np.float64).reshape(-1)
    if scores.shape != (len(texts),) or not np.isfinite(scores).all():
        raise ValueError(f"teacher returned {scores.shape} non-finite or misshaped scores")
    return scores
