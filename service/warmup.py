"""Warm-up: choose the batch size and ONNX Runtime threading for this machine, run the
typical batch shapes, and time them for admission's cost model, before ``/readyz`` turns
ready.

1. **The ladder** (:func:`run_ladder`, bounded by ``budget_s``): on real-shaped inputs
   (a product title against a short query, padded as the batcher pads), it times each
   batch size of ``batch_sizes`` on the session as opened, then tries the other threading
   settings (idle threads spinning at all cores first, then one intra-op thread) at the
   two best sizes of the first pass. The fastest in pairs per second wins; rates within
   :data:`TIE` of each other are a tie, won by the larger batch (and by the session
   already open). A knob set in the
   settings is not laddered (``fixed_*``); a measurement that would pass the budget is
   not started, and the best of what was measured is chosen. Sessions side by side
   (``model_instances``, one worker each) are opened only when the settings ask: then
   the batch size is laddered on all of them running at once. They are not tried by
   default: on the 2-core machine two one-thread sessions matched one two-thread session
   in the ladder and in the raw session, and lost to it in the service (3 closed-loop
   clients, 20-100 items: 460 vs 487-501 pairs/s; a lone 10-item request 29.1 vs
   26.5-28.1 ms; measured 2026-12-04), where the event loop and tokenizer share the cores.
2. **Shapes** (:func:`warmup_batches`): ONNX Runtime allocates and picks kernels on the
   first run of a shape; each shape runs once untimed, then once timed. Those timings,
   with the ladder's at the chosen setting, are what the cost model is fitted to
   (:class:`service.cost_model.CostModel`).

Blocking: the engine calls it on a thread, before any traffic.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.batcher import BatcherConfig
from service.cost_model import TimedRun
from service.features import PairEncoder, collate
from service.scorers import Scorer

log = logging.getLogger(__name__)

WARMUP_QUERY = "cordless drill"
WARMUP_TEXT = "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit with battery and charger "
# Width of the ladder's pairs: a short query and a product title, as the benchmark's
# Home Depot pairs are (median ~30 tokens).
LADDER_WIDTH = 32
LADDER_SIZES = (4, 8, 16, 32, 64)
# Pairs timed per ladder rung (after one untimed run): enough for a rate, little time.
LADDER_PAIRS = 32
# Rates within this share of the best are a tie (the noise of a short measurement): the
# larger batch wins it, since the costs outside session.run (padding, hand-offs, futures)
# are paid once a batch; and a new session must beat the one already open by as much.
TIE = 0.05

OpenScorer = Callable[[int, bool], Scorer]
"""Opens another session of the same graph with (intra-op threads, spinning)."""


@dataclass(frozen=True)
class LadderConfig:
    """What the ladder may try; ``fixed_*`` are the settings' explicit values (not tried)."""

    budget_s: float = 5.0
    batch_sizes: tuple[int, ...] = LADDER_SIZES
    max_batch_tokens: int = 16384
    fixed_batch_size: int | None = None
    fixed_threads: int | None = None
    fixed_spinning: bool | None = None
    fixed_instances: int | None = None
    # The threading the session was opened with.
    threads: int = 0
    spinning: bool = False


@dataclass(frozen=True)
class Rung:
    """One measured setting."""

    batch_size: int
    threads: int
    spinning: bool
    pairs_per_s: float
    runs: tuple[TimedRun, ...] = ()
    instances: int = 1


@dataclass
class Tuning:
    """The choice, what it was chosen from, and the session to serve with."""

    max_batch_size: int
    intra_op_threads: int
    intra_op_spinning: bool
    pairs_per_s: float
    source: dict[str, str]  # knob -> "ladder" | "settings" | "default"
    rungs: list[Rung] = field(default_factory=list)
    elapsed_s: float = 0.0
    scorer: Scorer | None = None
    model_instances: int = 1
    # The sessions to serve with when model_instances > 1 (``scorer`` is the first).
    scorers: list[Scorer] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        return {
            "max_batch_size": self.max_batch_size,
            "intra_op_threads": self.intra_op_threads,
            "intra_op_spinning": self.intra_op_spinning,
            "model_instances": self.model_instances,
            "pairs_per_s": round(self.pairs_per_s, 1),
            "source": self.source,
            "elapsed_s": round(self.elapsed_s, 2),
            "ladder": [
                {
                    "batch_size": r.batch_size,
                    "threads": r.threads,
                    "spinning": r.spinning,
                    "instances": r.instances,
                    "pairs_per_s": round(r.pairs_per_s, 1),
                }
                for r in self.rungs
            ],
        }


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def instance_threads(instances: int, fixed_threads: int | None) -> int:
    """Intra-op threads of each of ``instances`` sessions side by side: the settings' own,
    else the cores shared out."""
    return fixed_threads if fixed_threads is not None else max(1, cores() // instances)


def ladder_batch(
    encoder: PairEncoder, rows: int, width: int = LADDER_WIDTH
) -> dict[str, np.ndarray]:
    """``rows`` copies of a real pair cut to ``width`` tokens."""
    long_text = WARMUP_TEXT * (encoder.max_length // 8 + 1)
    template = collate(encoder.encode(WARMUP_QUERY, [long_text], truncate=True))
    width = min(width, template["input_ids"].shape[1])
    return {k: np.repeat(v[:, :width], rows, axis=0) for k, v in template.items()}


def measure(
    scorer: Scorer,
    batch: dict[str, np.ndarray],
    pairs: int = LADDER_PAIRS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, list[TimedRun]]:
    """Pairs per second of ``scorer`` on ``batch``, repeated for about ``pairs`` pairs."""
    rows, width = batch["input_ids"].shape
    scorer.run(batch)  # this shape's first run allocates
    runs = []
    for _ in range(max(1, -(-pairs // rows))):
        t0 = clock()
        scorer.run(batch)
        runs.append(TimedRun(rows, width, clock() - t0))
    total = sum(r.seconds for r in runs)
    return rows * len(runs) / max(total, 1e-9), runs


def measure_side_by_side(
    scorers: Sequence[Scorer],
    batch: dict[str, np.ndarray],
    pairs: int = LADDER_PAIRS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, list[TimedRun]]:
    """Pairs per second of ``scorers`` each running ``batch`` about ``pairs`` pairs' worth
    at once, on threads of their own (ONNX Runtime releases the GIL). The runs are what
    one batch costs in throughput: the wall time over all batches run."""
    rows, width = batch["input_ids"].shape
    repeats = max(1, -(-pairs // rows))
    for scorer in scorers:
        scorer.run(batch)  # this shape's first run allocates

    def work(scorer: Scorer) -> None:
        for _ in range(repeats):
            scorer.run(batch)

    with ThreadPoolExecutor(len(scorers)) as pool:
        t0 = clock()
        list(pool.map(work, scorers))
        wall = max(clock() - t0, 1e-9)
    done = repeats * len(scorers)
    return rows * done / wall, [TimedRun(rows, width, wall / done)] * done


def run_ladder(
    scorer: Scorer,
    encoder: PairEncoder,
    config: LadderConfig,
    open_scorer: OpenScorer | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Tuning:
    """Measure the ladder within ``config.budget_s`` (on ``clock``, which times the runs
    too). The returned ``scorer`` is the one to serve with: ``scorer`` or a session
    ``open_scorer`` opened (and ``scorers``, all of them, when several instances won);
    the other sessions opened are closed here."""
    started = clock()
    deadline = started + config.budget_s
    sizes = [config.fixed_batch_size] if config.fixed_batch_size else list(config.batch_sizes)
    sizes = [s for s in sizes if s * LADDER_WIDTH <= config.max_batch_tokens] or [sizes[0]]
    threads0, spin0 = config.threads, config.spinning
    rungs: list[Rung] = []
    seconds_per_pair = 0.0  # the slowest rate seen, to judge what still fits the budget

    def fits(rows: int, margin: float = 1.0) -> bool:
        """Whether a rung of ``rows`` would end within the budget, at ``margin`` times the
        slowest rate seen (a setting not measured yet may be slower)."""
        pairs = rows * (max(1, -(-LADDER_PAIRS // rows)) + 1)
        return clock() + pairs * seconds_per_pair * margin <= deadline

    def try_sizes(
        candidate: Scorer | list[Scorer], threads: int, spinning: bool, try_: list[int]
    ) -> None:
        nonlocal seconds_per_pair
        for size in try_:
            if rungs and not fits(size):
                continue
            batch = ladder_batch(encoder, size)
            if isinstance(candidate, list):
                rate, runs = measure_side_by_side(candidate, batch, clock=clock)
                instances = len(candidate)
            else:
                rate, runs = measure(candidate, batch, clock=clock)
                instances = 1
            seconds_per_pair = max(seconds_per_pair, 1 / rate)
            rungs.append(Rung(size, threads, spinning, rate, tuple(runs), instances))

    n = cores()
    forced = config.fixed_instances if (config.fixed_instances or 1) > 1 else None
    if forced is not None and open_scorer is None:
        log.warning("model_instances %d ignored: only CPU sessions run side by side", forced)
        forced = None
    chosen_scorer = scorer
    chosen_group: list[Scorer] = []
    if forced is None:
        try_sizes(scorer, threads0, spin0, sizes)
        best = pick(rungs)
    if open_scorer is not None and forced is None:
        top = sorted(rungs, key=lambda r: -r.pairs_per_s)[:2]
        top_sizes = sorted({r.batch_size for r in top})
        thread_options = [config.fixed_threads] if config.fixed_threads is not None else [n, 1]
        spin_options = (
            [config.fixed_spinning] if config.fixed_spinning is not None else [True, False]
        )
        # Spinning at all cores first (what a busy session gains most from), then one thread.
        for threads in thread_options:
            for spinning in spin_options:
                same_threads = threads == threads0 or {threads, threads0} <= {0, n}
                if same_threads and spinning == spin0:
                    continue  # the session as opened: measured above
                if not fits(top_sizes[-1], margin=2.0):
                    continue
                candidate = open_scorer(threads, spinning)
                before = len(rungs)
                try_sizes(candidate, threads, spinning, top_sizes)
                new_best = pick(rungs[before:]) if len(rungs) > before else None
                if new_best is not None and new_best.pairs_per_s > best.pairs_per_s * (1 + TIE):
                    if chosen_scorer is not scorer:
                        chosen_scorer.close()
                    chosen_scorer, best = candidate, new_best
                else:
                    candidate.close()
    if forced is not None:
        # Instances set in the settings: only the batch size is laddered, on all of them.
        threads = instance_threads(forced, config.fixed_threads)
        spinning = bool(config.fixed_spinning)
        assert open_scorer is not None
        chosen_group = [open_scorer(threads, spinning) for _ in range(forced)]
        chosen_scorer = chosen_group[0]
        try_sizes(chosen_group, threads, spinning, sizes)
        best = pick(rungs)
    source = {
        "max_batch_size": "settings" if config.fixed_batch_size else "ladder",
        "intra_op_threads": "settings"
        if config.fixed_threads is not None
        else ("ladder" if open_scorer else "default"),
        "intra_op_spinning": "settings"
        if config.fixed_spinning is not None
        else ("ladder" if open_scorer else "default"),
        "model_instances": "settings" if config.fixed_instances is not None else "default",
    }
    tuning = Tuning(
        max_batch_size=best.batch_size,
        intra_op_threads=best.threads,
        intra_op_spinning=best.spinning,
        pairs_per_s=best.pairs_per_s,
        source=source,
        rungs=rungs,
        elapsed_s=clock() - started,
        scorer=chosen_scorer,
        model_instances=best.instances,
        scorers=chosen_group if best.instances > 1 else [],
    )
    log.info(
        "ladder: %d settings in %.2f s; batch %d, %d x %d intra-op threads, spinning %s: "
        "%.0f pairs/s",
        len(rungs),
        tuning.elapsed_s,
        best.batch_size,
        best.instances,
        best.threads,
        "on" if best.spinning else "off",
        best.pairs_per_s,
    )
    return tuning


def pick(rungs: Sequence[Rung]) -> Rung:
    """The fastest rung, the largest batch among those within :data:`TIE` of it."""
    fastest = max(r.pairs_per_s for r in rungs)
    return max(
        (r for r in rungs if r.pairs_per_s >= fastest * (1 - TIE)), key=lambda r: r.batch_size
    )


def warm_up(
    scorer: Scorer, encoder: PairEncoder, batching: BatcherConfig
) -> tuple[int, list[TimedRun]]:
    """Run each warm-up shape once, then once more timed.

    Returns the number of shapes and the timed runs (for the cost model).
    """
    batches = list(warmup_batches(encoder, batching))
    runs = scorer.warmup(batches)
    timed = []
    for batch in batches:
        rows, width = batch["input_ids"].shape
        t0 = time.perf_counter()
        scorer.run(batch)
        timed.append(TimedRun(rows, width, time.perf_counter() - t0))
    return runs, timed


def chosen_runs(tuning: Tuning) -> Sequence[TimedRun]:
    """The ladder's timings at the chosen threading and at most the chosen batch size."""
    return [
        run
        for rung in tuning.rungs
        if rung.threads == tuning.intra_op_threads
        and rung.spinning == tuning.intra_op_spinning
        and rung.instances == tuning.model_instances
        and rung.batch_size <= tuning.max_batch_size
        for run in rung.runs
    ]


def warmup_batches(
    encoder: PairEncoder, batching: BatcherConfig
) -> Iterator[dict[str, np.ndarray]]:
    """Typical shapes: a few batch sizes by a few lengths, within the token budget."""
    max_length = encoder.max_length
    long_text = WARMUP_TEXT * (max_length // 8 + 1)
    template = collate(encoder.encode(WARMUP_QUERY, [long_text], truncate=True))
    width = template["input_ids"].shape[1]
    lengths = sorted({min(width, n) for n in (16, 32, 64, max_length // 2, max_length)})
    sizes = sorted({1, max(1, batching.max_batch_size // 4), batching.max_batch_size})
    for length in lengths:
        for size in sizes:
            rows = max(1, min(size, batching.max_batch_tokens // length))
            # Cut pairs lack their last [SEP]: warm-up exercises shapes, not scores.
            yield {k: np.repeat(v[:, :length], rows, axis=0) for k, v in template.items()}
