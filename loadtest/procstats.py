"""What a server process holds, read from ``/proc`` (Linux): memory, threads, open files.

A :class:`Sampler` polls one process in a background thread while a scenario runs, so a
report can state the peak resident memory and how threads and file handles moved.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProcSnapshot:
    """One reading: resident and peak-resident memory (MiB), threads, open descriptors, and
    the machine's 1-minute load average (is someone else taking the CPU?)."""

    at_s: float
    rss_mib: float
    hwm_mib: float
    threads: int
    open_fds: int
    load1: float | None = None


def snapshot(pid: int, at_s: float = 0.0) -> ProcSnapshot | None:
    """Read ``/proc/<pid>``; ``None`` when the process is gone (or this is not Linux)."""
    status = Path(f"/proc/{pid}/status")
    try:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None

    def mib(name: str) -> float:
        value = fields.get(name, "0 kB").split()[0]
        return round(int(value) / 1024, 1)

    return ProcSnapshot(
        at_s=round(at_s, 2),
        rss_mib=mib("VmRSS"),
        hwm_mib=mib("VmHWM"),
        threads=int(fields.get("Threads", "0").strip() or 0),
        open_fds=fds,
        load1=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    )


@dataclass
class Sampler:
    """Polls a process every ``interval_s`` in a daemon thread: ``with Sampler(pid) as s``."""

    pid: int
    interval_s: float = 0.5
    samples: list[ProcSnapshot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _started: float = 0.0

    def __enter__(self) -> Sampler:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="procstats", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._take()

    def _take(self) -> None:
        found = snapshot(self.pid, time.monotonic() - self._started)
        if found is not None:
            self.samples.append(found)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take()
            self._stop.wait(self.interval_s)

    @property
    def max_rss_mib(self) -> float | None:
        """Peak resident memory seen: the kernel's high-water mark where it has one."""
        if not self.samples:
            return None
        return max(max(s.rss_mib, s.hwm_mib) for s in self.samples)

    @property
    def first(self) -> ProcSnapshot | None:
        return self.samples[0] if self.samples else None

    @property
    def last(self) -> ProcSnapshot | None:
        return self.samples[-1] if self.samples else None
