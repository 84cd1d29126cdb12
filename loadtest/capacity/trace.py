"""Traffic traces: offered load (pairs/s) over time, generated or read from a CSV file.

A trace is a step function: ``rates[i]`` pairs/s from ``times_s[i]`` to the next time (the
last step lasts ``step_s``). CSV format, with a header::

    t_s,pairs_per_s
    0,150.0
    60,152.3

The generator draws a diurnal curve (a cosine between the night's trough and the
afternoon's peak) with one spike (a flash sale, a campaign e-mail, a retry storm): the
load steps up by ``spike_factor`` at ``spike_hour`` and stays there for ``spike_minutes``
(from one minute to the next: faster than any autoscaler).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Trace:
    times_s: tuple[float, ...]
    rates: tuple[float, ...]  # pairs/s
    step_s: float

    def __post_init__(self) -> None:
        if not self.times_s or len(self.times_s) != len(self.rates):
            raise ValueError("a trace needs as many rates as times, and at least one")
        if any(b <= a for a, b in zip(self.times_s, self.times_s[1:], strict=False)):
            raise ValueError("trace times must increase")
        if any(r < 0 or not math.isfinite(r) for r in self.rates):
            raise ValueError("trace rates must be finite and >= 0")

    @property
    def duration_s(self) -> float:
        return self.times_s[-1] - self.times_s[0] + self.step_s

    def rate_at(self, t_s: float) -> float:
        """The step's rate at ``t_s`` (0 outside the trace)."""
        if t_s < self.times_s[0] or t_s >= self.times_s[0] + self.duration_s:
            return 0.0
        lo, hi = 0, len(self.times_s) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.times_s[mid] <= t_s:
                lo = mid
            else:
                hi = mid - 1
        return self.rates[lo]

    def segments(self) -> list[tuple[float, float, float]]:
        """(start, end, rate) of every step."""
        ends = (*self.times_s[1:], self.times_s[-1] + self.step_s)
        return list(zip(self.times_s, ends, self.rates, strict=True))

    @property
    def peak(self) -> float:
        return max(self.rates)

    def write_csv(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["t_s", "pairs_per_s"])
            for t, r in zip(self.times_s, self.rates, strict=True):
                writer.writerow([f"{t:g}", f"{r:.3f}"])


def read_csv(path: Path) -> Trace:
    """A trace from ``t_s,pairs_per_s`` rows; the step is the last interval between rows."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"t_s", "pairs_per_s"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)} (need t_s,pairs_per_s)")
        rows = [(float(row["t_s"]), float(row["pairs_per_s"])) for row in reader]
    if not rows:
        raise ValueError(f"{path}: no rows")
    times, rates = zip(*rows, strict=True)
    step = times[-1] - times[-2] if len(times) > 1 else 60.0
    return Trace(tuple(times), tuple(rates), step)


def diurnal(
    *,
    hours: float = 24.0,
    step_s: float = 60.0,
    trough: float = 150.0,
    peak: float = 1500.0,
    trough_hour: float = 4.0,
    spike_hour: float | None = 20.0,
    spike_factor: float = 2.0,
    spike_minutes: float = 15.0,
) -> Trace:
    """A day of load: trough at ``trough_hour``, peak 12 hours later, one spike."""
    times, rates = [], []
    for i in range(int(hours * 3600 / step_s)):
        t = i * step_s
        phase = 2 * math.pi * (t / 3600 - trough_hour) / 24
        rate = trough + (peak - trough) * (0.5 - 0.5 * math.cos(phase))
        if spike_hour is not None:
            into_min = t / 60 - spike_hour * 60
            if 0 <= into_min < spike_minutes:
                rate *= spike_factor
        times.append(t)
        rates.append(rate)
    return Trace(tuple(times), tuple(rates), step_s)
