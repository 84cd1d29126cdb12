"""Score cache: logits of (query, item) pairs already scored, bounded in bytes.

Search traffic repeats itself (the same query re-ranks the same popular items, a page is
reloaded), and a repeated pair costs a full trip through the model. The engine looks each
pair up before admission; a request whose pairs are all cached is answered at once, without
entering admission's queue or the batcher, and a partly cached one sends only its misses.

* **Key**: a 16-byte BLAKE2b digest of (package name, version, graph variant, query, item
  text), the texts as scored (after the character limits). Another model never reads this
  model's entries, and :meth:`ScoreCache.bind` empties the cache when the engine loads
  another model, so stale entries do not even take up room. Each loaded model version has
  its own engine and cache (:mod:`service.models`): a swap starts the new version on an
  empty cache, and the old one's is emptied when its engine stops.
* **Value**: the logit (the activation is applied on the way out, as for scored pairs) and
  whether the tokenizer cut the text: a cut text is a miss for a request that asked not to
  be truncated, so that request still gets its 413.
* **Bound**: least recently used entries are evicted once the estimated bytes pass
  ``max_bytes``. The estimate is what CPython really holds per entry (the key's bytes
  object, the value tuple and its float, and the ordered dict's node and table slot); a
  test checks it against ``tracemalloc``.

It lives on the event loop only (the engine's ``score``), so it needs no lock.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from collections.abc import Sequence

from service.metrics import Metrics

# An OrderedDict entry beyond its key and value objects: the hash table's slot and index
# plus the linked-list node that keeps the order (CPython 3.11, 64-bit; measured ~100-115).
DICT_ENTRY_BYTES = 120
_PROBE_KEY = b"\0" * 16
ENTRY_BYTES = (
    sys.getsizeof(_PROBE_KEY) + sys.getsizeof((0.0, False)) + sys.getsizeof(0.5) + DICT_ENTRY_BYTES
)
"""Estimated bytes of one cache entry (key digest, value tuple, float, dict overhead)."""


def pair_key(model: str, query: str, text: str) -> bytes:
    """The cache key of a pair for ``model`` (see :meth:`ScoreCache.model_key`)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (model, query, text):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two splits collide
        h.update(data)
    return h.digest()


class ScoreCache:
    """An LRU of pair logits bounded by an estimate of the bytes it holds."""

    def __init__(self, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._metrics = metrics
        self._entries: OrderedDict[bytes, tuple[float, bool]] = OrderedDict()
        self._model = ""
        # What this cache last added to the gauges: several engines (model versions) each
        # hold a cache, and the gauges report their sum.
        self._reported = (0, 0)

    @staticmethod
    def model_key(name: str, version: str, variant: str) -> str:
        """What identifies the scores of one loaded model (the graph variant included)."""
        return f"{name}\0{version}\0{variant}"

    @property
    def enabled(self) -> bool:
        return self.max_bytes >= ENTRY_BYTES

    @property
    def model(self) -> str:
        return self._model

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """Estimated bytes held (entries x :data:`ENTRY_BYTES`)."""
        return len(self._entries) * ENTRY_BYTES

    def bind(self, model: str) -> None:
        """Serve ``model`` from now on; another model than before empties the cache."""
        if model != self._model:
            self.clear()
            self._model = model

    def clear(self) -> None:
        self._entries.clear()
        self._gauge()

    def lookup(
        self,
        query: str,
        texts: Sequence[str],
        *,
        need_untruncated: bool = False,
        count: bool = True,
    ) -> tuple[list[bytes], list[tuple[float, bool] | None]]:
        """Keys of the pairs and their cached (logit, truncated), ``None`` for a miss.

        ``need_untruncated``: an entry whose text the tokenizer cut counts as a miss (the
        request refuses cut texts, and only the encoder can say which field is at fault).
        ``count`` off (a request that bypasses the cache): only the keys, all misses,
        nothing counted and no entry's recency touched.
        """
        keys = [pair_key(self._model, query, t) for t in texts]
        if not count:
            return keys, [None] * len(keys)
        found: list[tuple[float, bool] | None] = []
        hits = 0
        for key in keys:
            value = self._entries.get(key) if self.enabled else None
            if value is not None and need_untruncated and value[1]:
                value = None
            if value is not None:
                self._entries.move_to_end(key)
                hits += 1
            found.append(value)
        self._count(hits, len(keys) - hits)
        return keys, found

    def put(
        self, keys: Sequence[bytes], logits: Sequence[float], truncated: Sequence[bool]
    ) -> None:
        """Remember scored pairs; the least recently used go when the bound is passed."""
        if not self.enabled:
            return
        entries = self._entries
        for key, logit, cut in zip(keys, logits, truncated, strict=True):
            entries[key] = (float(logit), bool(cut))
            entries.move_to_end(key)
        limit = self.max_bytes // ENTRY_BYTES
        evicted = 0
        while len(entries) > limit:
            entries.popitem(last=False)
            evicted += 1
        if evicted and self._metrics is not None:
            self._metrics.cache_evictions.inc(evicted)
        self._gauge()

    def info(self) -> dict[str, int | bool]:
        return {
            "enabled": self.enabled,
            "entries": len(self._entries),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "entry_bytes": ENTRY_BYTES,
        }

    def _count(self, hits: int, misses: int) -> None:
        if self._metrics is None:
            return
        if hits:
            self._metrics.cache_lookups.labels(result="hit").inc(hits)
        if misses:
            self._metrics.cache_lookups.labels(result="miss").inc(misses)

    def _gauge(self) -> None:
        if self._metrics is not None:
            now = (self.bytes, len(self._entries))
            self._metrics.cache_bytes.inc(now[0] - self._reported[0])
            self._metrics.cache_entries.inc(now[1] - self._reported[1])
            self._reported = now
