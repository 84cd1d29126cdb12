"""Requests that look like a search ranking stack's: a query and its retrieved candidates.

Queries and product titles come from the Home Depot file (``../shared/data/homedepot/
train.csv``, or ``LOADTEST_DATA``); each request takes one query, the products judged for
it (what a retriever would have found), and fills up with other catalogue titles to a
candidate count drawn from a range (default 20-200). Without the file, synthetic
product-like text keeps every tool usable.

Standard library only: the locust container imports this module without the project's
dependencies.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "homedepot" / "train.csv"
DATA_ENV = "LOADTEST_DATA"

Endpoint = Literal["score", "rerank", "shadow"]
ENDPOINT_PATHS: dict[str, str] = {
    "score": "/score",
    "rerank": "/rerank",
    "shadow": "/shadow/score",
}

_BRANDS = ("Everbilt", "Husky", "DEWALT", "BEHR", "Delta", "Hampton Bay", "RIDGID", "Glacier Bay")
_THINGS = (
    "Angle Bracket",
    "Gate Valve",
    "Shower Faucet Trim Kit",
    "Deck Coating",
    "LED Flush Mount Light",
    "Cordless Drill",
    "Wood Screws",
    "Ceiling Fan",
    "Vinyl Plank Flooring",
    "Garden Hose",
)
_DETAILS = ("1/2 in.", "3/4 in.", "12-Gauge", "1-gal.", "20-Volt", "in Chrome", "Brass", "White")


@dataclass(frozen=True)
class Catalogue:
    """Queries, each with the titles judged for it, and every distinct title."""

    queries: list[str]
    judged: dict[str, list[str]]
    titles: list[str]
    source: str

    @classmethod
    def load(cls, path: str | Path | None = None, *, max_rows: int = 200_000) -> Catalogue:
        """Read the data file (``path``, else ``$LOADTEST_DATA``, else the shared default).

        Falls back to :meth:`synthetic` when the file is absent, and says so in ``source``.
        """
        chosen = Path(path or os.environ.get(DATA_ENV) or DEFAULT_DATA)
        if not chosen.is_file():
            return cls.synthetic(note=f"synthetic ({chosen} not found)")
        judged: dict[str, list[str]] = {}
        titles: dict[str, None] = {}
        with chosen.open(encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                if i >= max_rows:
                    break
                query = " ".join((row.get("search_term") or "").split())
                title = " ".join((row.get("product_title") or "").split())
                if not query or not title:
                    continue
                judged.setdefault(query, []).append(title)
                titles[title] = None
        if not judged:
            return cls.synthetic(note=f"synthetic ({chosen} has no usable rows)")
        return cls(sorted(judged), judged, list(titles), str(chosen))

    @classmethod
    def synthetic(
        cls, n_titles: int = 2000, *, seed: int = 0, note: str = "synthetic"
    ) -> Catalogue:
        """Product-like titles and short queries made from a small vocabulary."""
        rng = random.Random(seed)
        titles = sorted(
            {
                f"{rng.choice(_BRANDS)} {rng.choice(_DETAILS)} {rng.choice(_THINGS)} "
                f"Model {rng.randint(100, 9999)}"
                for _ in range(n_titles)
            }
        )
        judged: dict[str, list[str]] = {}
        for thing in _THINGS:
            query = thing.lower()
            judged[query] = [t for t in titles if thing in t][:8]
        return cls(sorted(judged), judged, titles, note)


@dataclass(frozen=True)
class ScoringRequest:
    """One request to send: which endpoint, the query and the candidate texts."""

    endpoint: Endpoint
    query: str
    texts: list[str]

    @property
    def path(self) -> str:
        return ENDPOINT_PATHS[self.endpoint]

    def body(self, *, ids: bool = True) -> dict[str, object]:
        """The JSON body for this project's service (``/score`` ids are ``p<index>``)."""
        if self.endpoint == "rerank":
            return {"query": self.query, "texts": self.texts}
        items: list[object] = (
            [{"id": f"p{i}", "text": t} for i, t in enumerate(self.texts)] if ids else self.texts
        )
        return {"query": self.query, "items": items}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


@dataclass
class Mix:
    """Request shape: candidate-count range and the share of each endpoint."""

    min_items: int = 20
    max_items: int = 200
    rerank_share: float = 0.3
    shadow_share: float = 0.0
    shadow_max_items: int = 50
    seed: int = 0
    _weights: tuple[float, float, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(
                f"need 1 <= min_items <= max_items, got {self.min_items}-{self.max_items}"
            )
        if (
            self.rerank_share < 0
            or self.shadow_share < 0
            or self.rerank_share + self.shadow_share > 1
        ):
            raise ValueError("rerank_share and shadow_share must be >= 0 and add up to <= 1")
        score = 1.0 - self.rerank_share - self.shadow_share
        self._weights = (score, self.rerank_share, self.shadow_share)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Mix:
        """``LOADTEST_ITEMS`` ("20-200"), ``LOADTEST_RERANK_SHARE``, ``LOADTEST_SHADOW_SHARE``,
        ``LOADTEST_SHADOW_MAX_ITEMS``, ``LOADTEST_SEED``."""
        env = os.environ if environ is None else environ
        low, high = parse_range(env.get("LOADTEST_ITEMS", "20-200"))
        return cls(
            min_items=low,
            max_items=high,
            rerank_share=float(env.get("LOADTEST_RERANK_SHARE", "0.3")),
            shadow_share=float(env.get("LOADTEST_SHADOW_SHARE", "0")),
            shadow_max_items=int(env.get("LOADTEST_SHADOW_MAX_ITEMS", "50")),
            seed=int(env.get("LOADTEST_SEED", "0")),
        )

    def to_env(self) -> dict[str, str]:
        """The environment that makes :meth:`from_env` rebuild this mix (for subprocesses)."""
        return {
            "LOADTEST_ITEMS": f"{self.min_items}-{self.max_items}",
            "LOADTEST_RERANK_SHARE": str(self.rerank_share),
            "LOADTEST_SHADOW_SHARE": str(self.shadow_share),
            "LOADTEST_SHADOW_MAX_ITEMS": str(self.shadow_max_items),
            "LOADTEST_SEED": str(self.seed),
        }


def parse_range(text: str) -> tuple[int, int]:
    """``"20-200"`` -> (20, 200); ``"50"`` -> (50, 50)."""
    low, _, high = text.partition("-")
    return int(low), int(high or low)


class RequestFactory:
    """Draws requests from a catalogue with a seeded RNG (one per user or worker)."""

    def __init__(self, catalogue: Catalogue, mix: Mix, seed: int | None = None) -> None:
        self.catalogue = catalogue
        self.mix = mix
        self._rng = random.Random(mix.seed if seed is None else seed)

    def next(self) -> ScoringRequest:
        endpoint: Endpoint = self._rng.choices(("score", "rerank", "shadow"), self.mix._weights)[0]
        n = self._rng.randint(self.mix.min_items, self.mix.max_items)
        if endpoint == "shadow":
            # The teacher is slow: shadow requests stay small, as a sampled mirror would.
            n = min(n, self.mix.shadow_max_items)
        query = self._rng.choice(self.catalogue.queries)
        texts = list(dict.fromkeys(self.catalogue.judged.get(query, [])))[:n]
        seen = set(texts)
        # Bounded: the catalogue may hold fewer distinct titles than asked for.
        for _ in range(4 * n):
            if len(texts) >= n:
                break
            title = self._rng.choice(self.catalogue.titles)
            if title not in seen:
                seen.add(title)
                texts.append(title)
        self._rng.shuffle(texts)
        return ScoringRequest(endpoint, query, texts)

    def take(self, count: int) -> list[ScoringRequest]:
        return [self.next() for _ in range(count)]


def slo_budget_s(items: int, slo_latency_ms: float, slo_items: int) -> float:
    """Latency budget of a request of ``items`` pairs: ``slo_latency * max(1, items/slo_items)``.

    Same rule as ``service.middleware.RequestMetrics``: bigger requests get more time.
    """
    return slo_latency_ms / 1000 * max(1.0, items / slo_items)
