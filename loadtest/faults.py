"""Fault injection for the reliability run: the service with a teacher that hangs or raises.

``python -m loadtest.faults --teacher hang|raise|slow|ok`` serves the real app (settings
from the ``RELEVANCE_*`` environment and the usual ``--host/--port/--model`` flags) with a
stand-in teacher in place of the LLM, so the shadow's failure modes can be produced on
demand. Everything else is the production path (``service.__main__.serve``).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

TEACHER_MODES = ("ok", "slow", "hang", "raise")


class FakeTeacher:
    """A teacher whose behaviour is chosen: answer, answer slowly, never answer, or raise.

    ``ok`` scores by text length (deterministic); ``slow`` sleeps ``delay_s`` first;
    ``hang`` blocks until :meth:`release` (forever in a server); ``raise`` fails every call.
    """

    name = "fake-teacher"
    version = "fault"

    def __init__(self, mode: str = "ok", delay_s: float = 1.0) -> None:
        if mode not in TEACHER_MODES:
            raise ValueError(f"teacher mode must be one of {TEACHER_MODES}, got {mode!r}")
        self.mode = mode
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()
        self._released = threading.Event()

    def score(self, queries: list[str], texts: list[str]) -> np.ndarray:
        with self._lock:
            self.calls += 1
        if self.mode == "slow":
            time.sleep(self.delay_s)
        elif self.mode == "hang":
            self._released.wait()
        elif self.mode == "raise":
            raise RuntimeError("fault injection: the teacher failed")
        return np.array([min(1.0, len(t) / 100) for t in texts], dtype=np.float64)

    def release(self) -> None:
        """Let hanging calls return (tests end them this way)."""
        self._released.set()


def teacher_loader(mode: str, delay_s: float = 1.0) -> Callable[[], FakeTeacher]:
    return lambda: FakeTeacher(mode, delay_s)


def main(argv: Sequence[str] | None = None) -> None:
    from service.__main__ import parse_settings, serve
    from service.app import create_app

    parser = argparse.ArgumentParser(prog="python -m loadtest.faults", description=__doc__)
    parser.add_argument("--teacher", choices=TEACHER_MODES, default="ok")
    parser.add_argument("--teacher-delay-s", type=float, default=1.0, help="for --teacher slow")
    args, rest = parser.parse_known_args(argv)
    settings = parse_settings(rest)
    app = create_app(settings, teacher_loader=teacher_loader(args.teacher, args.teacher_delay_s))
    serve(app, settings)


if __name__ == "__main__":
    main()
