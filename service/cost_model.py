"""What a batch costs on this machine: ``a + b * rows * padded width`` seconds, measured.

:class:`CostModel` is fitted by least squares to timed runs of the real session at warm-up
(:mod:`service.warmup`) and refitted after every batch the worker runs (exponentially
weighted, so it follows the machine). :class:`service.admission.Admission` asks it what a
request's work costs; :class:`Forecast` is the protocol another cost model would implement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TimedRun:
    """One timed batch: ``rows`` pairs padded to ``width`` tokens took ``seconds``."""

    rows: int
    width: int
    seconds: float

    @property
    def padded_tokens(self) -> int:
        return self.rows * self.width


class Forecast(Protocol):
    """What a request's work costs: the one source of time admission uses."""

    @property
    def calibrated(self) -> bool:
        """Whether anything was measured (before that, admission only counts capacity)."""
        ...

    @property
    def overhead_s(self) -> float:
        """Time a request spends outside the queue and the model."""
        ...

    def pair_tokens(self, query_chars: int, text_chars: int) -> float:
        """Estimated tokens of one pair before tokenization."""
        ...

    def work_s(self, pairs: int, tokens: float) -> float:
        """Seconds of model time for ``pairs`` pairs of ``tokens`` real tokens in all."""
        ...

    def fit(self, runs: Iterable[TimedRun]) -> None:
        """Timed runs of the real session (warm-up)."""
        ...

    def observe_batch(
        self,
        rows: int,
        width: int,
        real_tokens: int,
        started: float,
        elapsed_s: float,
        backlogged: bool,
    ) -> None:
        """A batch ran from ``started`` for ``elapsed_s``; ``backlogged``: the next batch
        was already packed and waiting when it ended."""
        ...

    def note_tokens(self, chars: int, tokens: int) -> None:
        """A tokenized request: ``chars`` characters (the query counted once per pair) gave
        ``tokens`` tokens, special tokens not counted."""
        ...

    def note_overhead(self, seconds: float) -> None:
        """One request's time outside the queue and the model."""
        ...

    def describe(self) -> dict[str, float]:
        """The fitted figures (``/info``)."""
        ...


class CostModel:
    """``batch_s = a + b * padded_tokens``, fitted at warm-up and updated per batch.

    The fit is weighted least squares over exponentially decayed sums (each new batch
    multiplies the old weights by ``forgetting``): the closed form of recursive least
    squares with forgetting, without its covariance matrix's numerical care. When the
    batches seen cannot separate ``a`` from ``b`` (of about one size: padded tokens varying
    by less than ~20%), both are scaled to what those batches cost (the machine's speed
    changed, not the split between them); neither may go negative.

    While the model is the bottleneck (a packed batch was waiting when the previous one
    ended), a batch is timed from the end of the previous one, so the cost includes the
    pipeline's gaps (hand-offs, a starved event loop): the rate at which work really leaves
    the queue, not only the time inside ``session.run``. A gap while the queue only waited
    for arrivals is not the model's cost and is not counted.

    With ``instances`` sessions running batches side by side, a batch's cost is what it
    takes of the model's throughput: timed alone, its time over ``instances``; while the
    model is the bottleneck, the gap since the previous batch of any instance ended.
    """

    SPECIAL_TOKENS = 3  # [CLS] query [SEP] text [SEP]

    def __init__(
        self,
        batch_pairs: int = 64,
        max_pair_tokens: int = 512,
        *,
        forgetting: float = 0.97,
        chars_per_token: float = 4.0,
        padding_factor: float = 1.2,
    ) -> None:
        self.batch_pairs = max(1, batch_pairs)
        self.max_pair_tokens = max_pair_tokens
        self.forgetting = forgetting
        self.a = 0.0  # seconds per batch
        self.b = 0.0  # seconds per padded token
        self.chars_per_token = chars_per_token
        self.padding_factor = padding_factor  # padded / real tokens in the batches that ran
        self._sums = [0.0] * 5  # w, x, y, xx, xy   (x = padded tokens, y = seconds)
        self._overhead_s = 0.0
        self._last_end = 0.0
        self._backlogged = False
        self.batches_seen = 0
        self.instances = 1

    # ------------------------------------------------------------------ reading
    @property
    def calibrated(self) -> bool:
        return self.b > 0

    @property
    def overhead_s(self) -> float:
        return self._overhead_s

    def pair_tokens(self, query_chars: int, text_chars: int) -> float:
        tokens = (query_chars + text_chars) / self.chars_per_token + self.SPECIAL_TOKENS
        return min(float(self.max_pair_tokens), tokens)

    def work_s(self, pairs: int, tokens: float) -> float:
        if pairs <= 0:
            return 0.0
        if not self.calibrated:
            return math.inf
        batches = math.ceil(pairs / self.batch_pairs)
        return batches * self.a + self.b * tokens * self.padding_factor

    def pairs_per_s(self, tokens_per_pair: float) -> float:
        """Throughput on full batches of pairs this long (``/info``)."""
        n = self.batch_pairs
        seconds = self.work_s(n, n * tokens_per_pair)
        return n / seconds if 0 < seconds < math.inf else 0.0

    def describe(self) -> dict[str, float]:
        return {
            "batch_ms": round(self.a * 1000, 3),
            "token_us": round(self.b * 1e6, 3),
            "padding_factor": round(self.padding_factor, 3),
            "chars_per_token": round(self.chars_per_token, 2),
            "batch_pairs": self.batch_pairs,
            "batches_seen": self.batches_seen,
            "instances": self.instances,
        }

    # ------------------------------------------------------------------ learning
    def fit(self, runs: Iterable[TimedRun]) -> None:
        self._sums = [0.0] * 5
        for run in runs:
            self._add(run.padded_tokens, run.seconds, decay=1.0)
        self._solve()

    def observe_batch(
        self,
        rows: int,
        width: int,
        real_tokens: int,
        started: float,
        elapsed_s: float,
        backlogged: bool,
    ) -> None:
        ended = started + elapsed_s
        span = ended - self._last_end if self._backlogged else elapsed_s / self.instances
        self._last_end = max(self._last_end, ended)
        self._backlogged = backlogged
        padded = rows * width
        if real_tokens > 0 and padded >= real_tokens:
            self.padding_factor = 0.9 * self.padding_factor + 0.1 * (padded / real_tokens)
        if span <= 0 or padded <= 0:
            return
        self.batches_seen += 1
        self._add(padded, span, decay=self.forgetting)
        self._solve()

    def note_tokens(self, chars: int, tokens: int) -> None:
        if chars > 0 and tokens > 0:
            self.chars_per_token = 0.8 * self.chars_per_token + 0.2 * (chars / tokens)

    def note_overhead(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self._overhead_s = 0.8 * self._overhead_s + 0.2 * seconds if self._overhead_s else seconds

    def _add(self, x: float, y: float, decay: float) -> None:
        s = self._sums
        for i in range(5):
            s[i] *= decay
        s[0] += 1.0
        s[1] += x
        s[2] += y
        s[3] += x * x
        s[4] += x * y

    def _solve(self) -> None:
        w, sx, sy, sxx, sxy = self._sums
        if w <= 0:
            return
        mean_x, mean_y = sx / w, sy / w
        var_x = sxx / w - mean_x * mean_x
        if var_x > 0.04 * mean_x * mean_x:
            b = (sxy / w - mean_x * mean_y) / var_x
            a = mean_y - b * mean_x
            if b > 0 and a >= 0:
                self.a, self.b = a, b
                return
            if sxx > 0 and sxy > 0:
                # A negative intercept: cost grows faster than the tokens (attention), so
                # the line through the origin, weighted toward the large batches that
                # matter under load.
                self.a, self.b = 0.0, sxy / sxx
                return
        # One shape only (or a fit with a negative term): the batches say how fast the
        # machine is now, not how cost splits between a and b, so both are scaled to match
        # them (all per token before anything was fitted).
        if mean_x <= 0:
            return
        predicted = self.a + self.b * mean_x
        if self.b <= 0 or predicted <= 0:
            self.a, self.b = 0.0, mean_y / mean_x
            return
        ratio = mean_y / predicted
        self.a *= ratio
        self.b *= ratio
