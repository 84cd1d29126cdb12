"""Item store: the representation student's item vectors, kept in memory, bounded in bytes.

A representation student encodes an item without the query, so an item's vectors are
computed once and reused by every later query that ranks it; a request whose items are
all stored costs one query encoding plus a dot product per item.

* **Key**: a 16-byte BLAKE2b digest of (package version, item id, item text), the parts
  length-prefixed. The text is in the key, so an id seen with different text (a renamed
  product) is a new entry and never scores with the old text's vectors; an item without
  an id is keyed by its text alone (the id part is then a marker no id can spell). The
  text is the one scored (after the character limits), so what is hashed is what the
  model saw. The package's name and version are in the key too (another model never
  reads these vectors), and :meth:`ItemStore.bind` empties the store on a model change.
* **Value**: the vectors as the package stores them (``item_vectors.dtype``, float16 for
  the bi-encoder: ``(dim,)``; late interaction: ``(tokens, dim)``) and whether the
  tokenizer cut the text (a request with ``truncate`` off must still get its 413).
* **Bound**: least recently used entries are evicted until the estimated bytes are
  within ``max_bytes``; an entry bigger than the whole bound is not kept. The estimate
  (:func:`entry_bytes`) is what CPython and numpy hold per entry (the key's bytes, the
  array's header and data, the value tuple, the ordered dict's node); a test checks it
  against ``tracemalloc``, and a property test that no sequence of operations passes
  the bound.

It lives on the event loop only (the engine's ``score`` and the preload), so no lock.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.metrics import Metrics

# An OrderedDict entry beyond its key and value: the table slot and index and the linked
# list node (CPython 3.11, 64-bit; as service.score_cache measured it).
DICT_ENTRY_BYTES = 120
_KEY_BYTES = sys.getsizeof(b"\0" * 16)
_TUPLE_BYTES = sys.getsizeof((None, False))
_ARRAY_HEADER_BYTES = sys.getsizeof(np.empty(0, np.float16))
_NO_ID = b"\0"  # an id part is b"\1" + id: a missing id cannot collide with any id


def item_key(model: str, item_id: str | None, text: str) -> bytes:
    """The store key of an item for ``model`` (``name\\0version``)."""
    h = hashlib.blake2b(digest_size=16)
    id_part = _NO_ID if item_id is None else b"\1" + item_id.encode("utf-8", "surrogatepass")
    for part in (model.encode("utf-8"), id_part, text.encode("utf-8", "surrogatepass")):
        h.update(len(part).to_bytes(8, "little"))  # length-prefixed: no two splits collide
        h.update(part)
    return h.digest()


def entry_bytes(vectors: np.ndarray) -> int:
    """Estimated bytes one stored entry holds (key, array header and data, tuple, dict)."""
    return _KEY_BYTES + _ARRAY_HEADER_BYTES + int(vectors.nbytes) + _TUPLE_BYTES + DICT_ENTRY_BYTES


@dataclass(frozen=True, slots=True)
class StoredItem:
    vectors: np.ndarray
    truncated: bool


class ItemStore:
    """An LRU of item vectors bounded by an estimate of the bytes it holds."""

    def __init__(self, max_bytes: int, dtype: str = "float16", metrics: Metrics | None = None):
        self.max_bytes = max(0, int(max_bytes))
        self.dtype = np.dtype(dtype)
        self._metrics = metrics
        self._entries: OrderedDict[bytes, tuple[StoredItem, int]] = OrderedDict()
        self._bytes = 0
        self._model = ""

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def model(self) -> str:
        return self._model

    @property
    def bytes(self) -> int:
        """Estimated bytes held (the sum of :func:`entry_bytes` of the entries)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def bind(self, name: str, version: str) -> None:
        """Serve this model from now on; another model than before empties the store."""
        model = f"{name}\0{version}"
        if model != self._model:
            self.clear()
            self._model = model

    def key(self, item_id: str | None, text: str) -> bytes:
        return item_key(self._model, item_id, text)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
        self._gauge()

    def lookup(
        self, keys: Sequence[bytes], *, need_untruncated: bool = False, count: bool = True
    ) -> list[StoredItem | None]:
        """The stored entry of each key, ``None`` for a miss (hits become most recent).

        ``need_untruncated``: an entry whose text the tokenizer cut is a miss (the request
        refuses cut texts and the encoder names the field). ``count`` off (a request that
        bypasses the store): all misses, nothing counted, no recency touched.
        """
        if not count or not self.enabled:
            return [None] * len(keys)
        found: list[StoredItem | None] = []
        hits = 0
        for key in keys:
            entry = self._entries.get(key)
            item = entry[0] if entry is not None else None
            if item is not None and need_untruncated and item.truncated:
                item = None
            if item is not None:
                self._entries.move_to_end(key)
                hits += 1
            found.append(item)
        if self._metrics is not None:
            if hits:
                self._metrics.item_store_lookups.labels(result="hit").inc(hits)
            if len(keys) - hits:
                self._metrics.item_store_lookups.labels(result="miss").inc(len(keys) - hits)
        return found

    def put(self, key: bytes, vectors: np.ndarray, truncated: bool) -> StoredItem:
        """Keep an item's vectors (cast to the store's dtype, own copy); returns the entry as
        stored, which is what scoring must use whether or not it was kept (an entry bigger
        than the bound is not kept). The least recently used go when the bound is passed."""
        item = StoredItem(np.array(vectors, dtype=self.dtype, copy=True), bool(truncated))
        if not self.enabled:
            return item
        cost = entry_bytes(item.vectors)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if cost > self.max_bytes:
            self._gauge()
            return item
        self._entries[key] = (item, cost)
        self._bytes += cost
        evicted = 0
        while self._bytes > self.max_bytes:
            _, (_, freed) = self._entries.popitem(last=False)
            self._bytes -= freed
            evicted += 1
        if evicted and self._metrics is not None:
            self._metrics.item_store_evictions.inc(evicted)
        self._gauge()
        return item

    def cast(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as the store keeps them (what scoring uses, stored or not)."""
        return np.asarray(vectors, dtype=self.dtype)

    def info(self) -> dict[str, int | bool | str]:
        return {
            "enabled": self.enabled,
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "dtype": str(self.dtype),
        }

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.item_store_bytes.set(self._bytes)
            self._metrics.item_store_entries.set(len(self._entries))
