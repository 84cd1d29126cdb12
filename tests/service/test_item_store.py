"""Item store: keying (same id, new text), LRU eviction, the byte bound under any sequence of
operations (property test), the honesty of its byte estimate, metrics."""

from __future__ import annotations

import tracemalloc
from collections import OrderedDict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.item_store import ItemStore, entry_bytes, item_key
from service.metrics import Metrics

MODEL = "tiny\x000.0.1"


def _vec(n: int, value: float = 0.5) -> np.ndarray:
    return np.full(n, value, dtype=np.float32)


def test_the_key_is_model_id_and_text() -> None:
    keys = {
        item_key(MODEL, "100001", "Simpson Angle"),
        item_key(MODEL, "100001", "Simpson Angle 12-Gauge"),  # same id, new text
        item_key(MODEL, "100002", "Simpson Angle"),
        item_key(MODEL, None, "Simpson Angle"),  # no id: the text alone
        item_key(MODEL, "", "Simpson Angle"),  # an empty id is an id, not "no id"
        item_key("tiny\x000.0.2", "100001", "Simpson Angle"),
        item_key(MODEL, "100001 S", "impson Angle"),  # length-prefixed parts
    }
    assert len(keys) == 7
    assert item_key(MODEL, None, "x") == item_key(MODEL, None, "x")


def test_an_id_seen_with_new_text_never_gets_the_old_vectors() -> None:
    store = ItemStore(1 << 20)
    store.bind("tiny", "0.0.1")
    store.put(store.key("42", "old title"), _vec(8, 1.0), False)
    assert store.lookup([store.key("42", "new title")]) == [None]
    (hit,) = store.lookup([store.key("42", "old title")])
    assert hit is not None and hit.vectors[0] == 1.0
    # A model change empties the store: a new version never reads the old one's vectors.
    store.bind("tiny", "0.0.2")
    assert len(store) == 0 and store.bytes == 0


def test_lookup_counts_hits_and_misses_and_bypass_counts_nothing() -> None:
    registry = CollectorRegistry()
    store = ItemStore(1 << 20, metrics=Metrics(registry))
    store.bind("tiny", "1")
    a, b = store.key(None, "a"), store.key(None, "b")
    store.put(a, _vec(4), truncated=True)
    found = store.lookup([a, b])
    assert found[0] is not None and found[0].truncated and found[1] is None
    assert store.lookup([a], need_untruncated=True) == [None]  # a cut text is re-encoded
    assert store.lookup([a], count=False) == [None]

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return registry.get_sample_value(name, labels or {}) or 0.0

    assert sample("relevance_item_store_lookups_total", {"result": "hit"}) == 1
    assert sample("relevance_item_store_lookups_total", {"result": "miss"}) == 2
    assert sample("relevance_item_store_bytes") == store.bytes == entry_bytes(found[0].vectors)
    assert sample("relevance_item_store_entries") == 1


def test_least_recently_used_go_first_and_evictions_are_counted() -> None:
    registry = CollectorRegistry()
    cost = entry_bytes(np.zeros(16, np.float16))
    store = ItemStore(3 * cost, metrics=Metrics(registry))
    keys = [store.key(None, t) for t in "abcd"]
    for key in keys[:3]:
        store.put(key, _vec(16), False)
    store.lookup([keys[0]])  # a is now the most recent: b goes first
    store.put(keys[3], _vec(16), False)
    assert [k in store for k in keys] == [True, False, True, True]
    assert store.bytes == 3 * cost
    assert registry.get_sample_value("relevance_item_store_evictions_total") == 1
    # Vectors are kept in the store's dtype, in their own memory (not a view of a batch).
    batch = np.ones((4, 16), np.float32)
    item = store.put(keys[0], batch[1], False)
    assert item.vectors.dtype == np.float16 and item.vectors.base is None


def test_an_entry_bigger_than_the_bound_is_returned_but_not_kept() -> None:
    store = ItemStore(entry_bytes(np.zeros(8, np.float16)))
    key = store.key(None, "long")
    item = store.put(key, _vec(64), False)
    assert item.vectors.shape == (64,) and key not in store and store.bytes == 0


def test_the_byte_estimate_is_what_python_really_holds() -> None:
    store = ItemStore(1 << 30)
    vectors = [np.random.default_rng(i).standard_normal(384).astype(np.float32) for i in range(4)]
    keys = [store.key(str(i), f"product title {i}") for i in range(3000)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i, key in enumerate(keys):
        store.put(key, vectors[i % 4], False)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    real = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert abs(store.bytes - real) / real < 0.15, (store.bytes, real)


# One operation of a request mix: store an item (id from a small pool, text, vector size
# as a bi-encoder's or a late-interaction item's token count) or look items up.
_op = st.one_of(
    st.tuples(
        st.just("put"),
        st.sampled_from([None, "1", "2", "3"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.integers(min_value=0, max_value=48 * 8),
    ),
    st.tuples(
        st.just("get"),
        st.sampled_from([None, "1", "2", "3"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.just(0),
    ),
)


@settings(max_examples=300, deadline=None)
@given(bound=st.integers(min_value=0, max_value=6000), ops=st.lists(_op, min_size=1, max_size=80))
def test_the_store_never_passes_its_bound_and_evicts_in_lru_order(
    bound: int, ops: list[tuple[str, str | None, str, int]]
) -> None:
    store = ItemStore(bound)
    store.bind("tiny", "1")
    model: OrderedDict[bytes, int] = OrderedDict()  # reference LRU: key -> cost
    for kind, item_id, text, size in ops:
        key = store.key(item_id, text)
        if kind == "put":
            vec = np.full(size, len(text), np.float32)
            stored = store.put(key, vec, False)
            assert stored.vectors.shape == (size,)
            model.pop(key, None)
            cost = entry_bytes(np.zeros(size, np.float16))
            if bound > 0 and cost <= bound:
                model[key] = cost
                while sum(model.values()) > bound:
                    model.popitem(last=False)
        else:
            (found,) = store.lookup([key])
            assert (found is not None) == (key in model)
            if found is not None:
                model.move_to_end(key)
                assert found.vectors.size == 0 or found.vectors[0] == len(text)
        assert store.bytes <= bound
        assert store.bytes == sum(model.values())
        assert all(k in store for k in model)  # with the size: the same entries
        assert len(store) == len(model)
