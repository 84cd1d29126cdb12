"""The warm-up ladder on a fake session whose cost per batch is known: it picks the fastest
setting, keeps to its time budget, leaves alone the knobs the settings fix, and closes the
sessions it does not keep. Time is a clock the fake session advances, not the wall."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from apitools import metric, serving
from apitools import run as run_async
from fastapi import FastAPI

from service import warmup
from service.features import PairEncoder
from service.model_package import load_package
from service.warmup import LADDER_SIZES, LadderConfig, run_ladder


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeSession:
    """Costs ``seconds(rows, threads, spinning)`` per batch, on the shared clock."""

    provider = "CPUExecutionProvider"
    variant = "int8"
    batch_invariant = True

    def __init__(
        self, clock: Clock, threads: int, spinning: bool, seconds: Callable[[int, int, bool], float]
    ) -> None:
        self.clock = clock
        self.threads = threads
        self.spinning = spinning
        self.seconds = seconds
        self.closed = False
        self.runs = 0

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        assert not self.closed
        rows = len(inputs["input_ids"])
        self.clock.now += self.seconds(rows, self.threads, self.spinning)
        self.runs += 1
        return np.zeros(rows, dtype=np.float32)

    def warmup(self, batches: Iterable[dict[str, np.ndarray]]) -> int:
        return sum(1 for _ in batches)

    def close(self) -> None:
        self.closed = True


def machine(rows: int, threads: int, spinning: bool) -> float:
    """Like the 2-core machine of the issue: best at batch 8 with spinning, 30% worse at
    64; one thread is slower than two."""
    per_pair = 0.0053 * {4: 1.1, 8: 1.0, 16: 1.08, 32: 1.15, 64: 1.3}[rows]
    if not spinning:
        per_pair *= 1.1
    if threads == 1:
        per_pair *= 1.7
    return 0.0005 + rows * per_pair


@pytest.fixture
def encoder(tiny_model_package: Path) -> PairEncoder:
    return PairEncoder.for_package(load_package(tiny_model_package))


@pytest.fixture(autouse=True)
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warmup, "cores", lambda: 2)


def ladder(
    encoder: PairEncoder, config: LadderConfig
) -> tuple[warmup.Tuning, FakeSession, list[FakeSession], Clock]:
    clock = Clock()
    first = FakeSession(clock, config.threads, config.spinning, machine)
    opened: list[FakeSession] = []

    def open_scorer(threads: int, spinning: bool) -> FakeSession:
        session = FakeSession(clock, threads, spinning, machine)
        opened.append(session)
        return session

    tuning = run_ladder(first, encoder, config, open_scorer, clock=clock)
    return tuning, first, opened, clock


def test_the_ladder_picks_the_fastest_setting_and_closes_the_rest(encoder: PairEncoder) -> None:
    tuning, first, opened, clock = ladder(encoder, LadderConfig(budget_s=10.0))
    assert (tuning.max_batch_size, tuning.intra_op_threads, tuning.intra_op_spinning) == (
        8,
        2,
        True,
    )
    assert tuning.scorer is not first and not tuning.scorer.closed
    assert [s.closed for s in opened if s is not tuning.scorer] == [True] * (len(opened) - 1)
    assert not first.closed  # the engine closes the session it opened itself
    sizes = [r.batch_size for r in tuning.rungs if r.threads == 0 and not r.spinning]
    assert sizes == list(LADDER_SIZES)
    assert tuning.pairs_per_s == pytest.approx(8 / machine(8, 2, True))
    assert tuning.source == {
        "max_batch_size": "ladder",
        "intra_op_threads": "ladder",
        "intra_op_spinning": "ladder",
        "model_instances": "default",
    }
    # Sessions side by side are not tried unless the settings ask for them.
    assert {r.instances for r in tuning.rungs} == {1}
    assert tuning.model_instances == 1 and tuning.scorers == []
    assert tuning.elapsed_s == pytest.approx(clock.now)


@pytest.mark.parametrize("budget_s", [0.3, 1.0, 1.5, 2.0, 2.5])
def test_the_ladder_keeps_to_its_budget(encoder: PairEncoder, budget_s: float) -> None:
    tuning, _, _, clock = ladder(encoder, LadderConfig(budget_s=budget_s))
    assert clock.now <= budget_s
    assert tuning.rungs  # at least one setting is always measured
    assert tuning.max_batch_size in LADDER_SIZES


def test_settings_fix_the_knobs_they_set(encoder: PairEncoder) -> None:
    config = LadderConfig(
        budget_s=10.0,
        fixed_batch_size=32,
        fixed_threads=1,
        fixed_spinning=False,
        fixed_instances=1,
        threads=1,
    )
    tuning, first, opened, _ = ladder(encoder, config)
    assert opened == []  # nothing else to try: the session as opened is the setting
    assert {r.batch_size for r in tuning.rungs} == {32}
    assert (tuning.max_batch_size, tuning.intra_op_threads, tuning.intra_op_spinning) == (
        32,
        1,
        False,
    )
    assert tuning.scorer is first
    assert set(tuning.source.values()) == {"settings"}
    # Only the batch size fixed: threading is still laddered, at that size.
    tuning, _, opened, _ = ladder(encoder, LadderConfig(budget_s=10.0, fixed_batch_size=64))
    assert tuning.max_batch_size == 64 and opened
    assert {r.batch_size for r in tuning.rungs} == {64}


class SleepSession(FakeSession):
    """Costs its seconds in real time, sleeping (so sessions side by side overlap, as ONNX
    Runtime's do with the GIL released)."""

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        assert not self.closed
        rows = len(inputs["input_ids"])
        time.sleep(self.seconds(rows, self.threads, self.spinning))
        self.runs += 1
        return np.zeros(rows, dtype=np.float32)


def small_ops(rows: int, threads: int, spinning: bool) -> float:
    """Two threads gain little on small batches: 1.2x one thread's speed, not 2x."""
    return (0.002 + rows * 0.003) / (1.2 if threads != 1 else 1.0)


def test_sessions_side_by_side_are_measured_running_at_once(encoder: PairEncoder) -> None:
    opened: list[FakeSession] = []

    def open_scorer(threads: int, spinning: bool) -> FakeSession:
        opened.append(SleepSession(Clock(), threads, spinning, small_ops))
        return opened[-1]

    first = SleepSession(Clock(), 0, False, small_ops)
    config = LadderConfig(budget_s=10.0, batch_sizes=(8, 16), fixed_instances=2)
    tuning = run_ladder(first, encoder, config, open_scorer)
    assert tuning.model_instances == 2 and tuning.scorers == opened
    assert all(s.runs > 0 and not s.closed for s in opened)
    # Together about twice one session of one thread (they overlap: the rate is not that
    # of the two run one after the other).
    alone = tuning.max_batch_size / small_ops(tuning.max_batch_size, 1, False)
    assert tuning.pairs_per_s > 1.6 * alone
    assert tuning.describe()["model_instances"] == 2
    # Its cost model runs are a batch's share of the throughput, not one session's time.
    runs = warmup.chosen_runs(tuning)
    assert runs and all(r.seconds < small_ops(r.rows, 1, False) * 0.8 for r in runs)


def test_instances_set_in_the_settings_are_opened_and_only_the_batch_size_laddered(
    encoder: PairEncoder,
) -> None:
    tuning, first, opened, _ = ladder(encoder, LadderConfig(budget_s=10.0, fixed_instances=2))
    assert len(opened) == 2 and tuning.scorers == opened and tuning.model_instances == 2
    assert [s.threads for s in opened] == [1, 1]  # 2 cores shared out
    assert {r.instances for r in tuning.rungs} == {2}
    assert tuning.scorer is opened[0] and not first.closed  # the engine closes its own
    assert tuning.source["model_instances"] == "settings"
    # One instance set: nothing side by side is tried.
    tuning, _, opened, _ = ladder(encoder, LadderConfig(budget_s=10.0, fixed_instances=1))
    assert {r.instances for r in tuning.rungs} == {1} and tuning.model_instances == 1


def test_the_served_choice_is_shown_in_info_and_metrics(make_app: Callable[..., FastAPI]) -> None:
    def check(app: FastAPI, source: str, size: int | None = None) -> None:
        async def body() -> Any:
            async with serving(app) as client:
                info = (await client.get("/info")).json()["model"]
                return info, metric(app, "relevance_max_batch_size_pairs")

        info, gauge = run_async(body)
        tuning = info["tuning"]
        assert tuning["source"]["max_batch_size"] == source
        assert info["batcher"]["max_batch_size"] == tuning["max_batch_size"] == gauge
        assert info["admission"]["batch_pairs"] == gauge
        assert info["cost_model"]["token_us"] > 0  # fitted at warm-up
        if size is not None:
            assert gauge == size
        else:
            assert gauge in LADDER_SIZES

    check(make_app(tune_budget_s=1.0, intra_op_threads=1), "ladder")
    check(make_app(tune_budget_s=1.0, max_batch_size=16, intra_op_threads=1), "settings", 16)


def test_a_tie_within_the_noise_goes_to_the_larger_batch() -> None:
    rungs = [
        warmup.Rung(4, 0, False, 100.0),
        warmup.Rung(32, 0, False, 97.0),  # within 5% of the best
        warmup.Rung(64, 0, False, 80.0),
    ]
    assert warmup.pick(rungs).batch_size == 32
    assert warmup.pick(rungs[::2]).batch_size == 4
