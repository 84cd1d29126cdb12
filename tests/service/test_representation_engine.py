"""The representation engine on a tiny exported package: scores as the export computes them,
the same with and without the item store, stored items never re-encoded, a query never
queued behind other requests' items, truncation, the cascade and the preload."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from apitools import make_texts
from apitools import run as run_async
from prometheus_client import CollectorRegistry

from service.engine import ScoringEngine
from service.errors import InputTooLong, InvalidInput
from service.features import TextLimits
from service.metrics import Metrics
from service.preload import CatalogueError, read_catalogue
from service.representation_engine import RepresentationEngine, combine_cascade
from service.representation_package import load_representation_package
from service.scorers.representation import RepresentationScorer

QUERY = "angle bracket"


def _engine(package_dir: Path, **kwargs: Any) -> tuple[RepresentationEngine, CollectorRegistry]:
    registry = CollectorRegistry()
    kwargs.setdefault("store_bytes", 1 << 20)
    kwargs.setdefault("warmup", False)
    return RepresentationEngine.from_package_dir(package_dir, Metrics(registry), **kwargs), registry


async def _started(engine: RepresentationEngine) -> RepresentationEngine:
    await engine.start()
    assert await engine.wait_ready(60)
    return engine


def _encoded(registry: CollectorRegistry, side: str) -> float:
    return registry.get_sample_value("relevance_encoded_texts_total", {"side": side}) or 0.0


def _deadline(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture(scope="module")
def late_interaction_package(tiny_student_dir: Path, tmp_path_factory) -> Path:
    from tests.conftest import build_tiny_representation_package

    return build_tiny_representation_package(
        tiny_student_dir,
        tmp_path_factory.mktemp("models") / "tiny-late",
        architecture="late-interaction",
        dim=8,
    )


@pytest.mark.parametrize("which", ["bi-encoder", "late-interaction"])
def test_scores_are_the_exports_and_the_same_from_the_store(
    which: str, tiny_representation_package: Path, late_interaction_package: Path
) -> None:
    from training.onnx_export.representation import package_scorer

    package = tiny_representation_package if which == "bi-encoder" else late_interaction_package
    texts = make_texts(40, seed=1)
    expected = package_scorer(package, "fp32").score([QUERY] * len(texts), texts)

    async def body() -> None:
        engine, registry = _engine(package)
        await _started(engine)
        try:
            cold = await engine.score(QUERY, texts, deadline=_deadline())
            assert cold.cached == 0 and _encoded(registry, "item") == len(set(texts))
            warm = await engine.score(QUERY, texts, deadline=_deadline())
            bypass = await engine.score(QUERY, texts, deadline=_deadline(), use_cache=False)
        finally:
            await engine.stop()
        assert np.abs(cold.scores - expected).max() <= 1e-5
        assert np.ptp(expected) > 0.1  # the scores differ, so the comparison means something
        # Stored items are not encoded again, and score exactly as when they were encoded.
        assert warm.cached == len(texts)
        assert _encoded(registry, "item") == 2 * len(set(texts))  # only the bypass re-encoded
        np.testing.assert_array_equal(warm.scores, cold.scores)
        np.testing.assert_array_equal(bypass.scores, cold.scores)
        assert _encoded(registry, "query") == 3

    run_async(body)


def test_the_manifests_calibration_maps_the_scores_as_the_export_does(
    tiny_representation_package: Path, tmp_path: Path
) -> None:
    import shutil

    from relevance_core.activation import sigmoid
    from service.model_package import ScoreCalibration, write_manifest
    from training.onnx_export.representation import package_scorer

    package = tmp_path / "calibrated"
    shutil.copytree(tiny_representation_package, package)
    manifest = load_representation_package(package).manifest
    calibration = ScoreCalibration(scale=2.5, bias=-1.0, fit={"test": True})
    write_manifest(package, manifest.model_copy(update={"calibration": calibration}))
    texts = make_texts(20, seed=2)
    expected = package_scorer(package, "fp32").score([QUERY] * len(texts), texts)

    async def body() -> Any:
        engine, _ = _engine(package)
        await _started(engine)
        try:
            return await engine.score(QUERY, texts, deadline=_deadline())
        finally:
            await engine.stop()

    result = run_async(body)
    # logits stay the head's (what raw_scores answers); scores go through the map.
    np.testing.assert_allclose(
        result.scores, sigmoid(2.5 * result.logits.astype(np.float64) - 1.0), atol=1e-6
    )
    assert np.abs(result.scores - expected).max() <= 1e-5
    assert np.abs(result.scores - sigmoid(result.logits)).max() > 0.05


def test_an_id_with_new_text_is_encoded_again(tiny_representation_package: Path) -> None:
    async def body() -> None:
        engine, registry = _engine(tiny_representation_package)
        await _started(engine)
        try:
            old = await engine.score(
                QUERY, ["brass gate valve"], deadline=_deadline(), item_ids=["7"]
            )
            new = await engine.score(
                QUERY, ["Simpson Strong-Tie angle"], deadline=_deadline(), item_ids=["7"]
            )
            plain = await engine.score(QUERY, ["Simpson Strong-Tie angle"], deadline=_deadline())
            again = await engine.score(
                QUERY, ["Simpson Strong-Tie angle"], deadline=_deadline(), item_ids=["7"]
            )
        finally:
            await engine.stop()
        assert (old.cached, new.cached, again.cached) == (0, 0, 1)
        assert new.scores[0] != old.scores[0]
        # Without an id the text alone is the key: a separate entry, the same vectors.
        assert plain.cached == 0 and plain.scores[0] == new.scores[0]
        assert _encoded(registry, "item") == 3

    run_async(body)


class _SlowItems:
    """The real scorer whose item side takes ``delay_s`` more per batch (a busy model)."""

    def __init__(self, inner: RepresentationScorer, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.provider, self.variant = inner.provider, inner.variant
        self.batch_invariant = inner.batch_invariant

    def encode(self, side: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if side == "item":
            time.sleep(self.delay_s)
        return self.inner.encode(side, inputs)

    def close(self) -> None:
        self.inner.close()


def test_a_request_of_stored_items_never_waits_behind_item_encoding(
    tiny_representation_package: Path,
) -> None:
    from service.batcher import BatcherConfig

    package = load_representation_package(tiny_representation_package)
    slow = _SlowItems(RepresentationScorer.load(package), delay_s=0.25)
    engine = RepresentationEngine(
        package,
        slow,  # type: ignore[arg-type]
        Metrics(CollectorRegistry()),
        store_bytes=1 << 20,
        warmup=False,
        batching=BatcherConfig(max_batch_size=8),
    )
    seen, unseen = make_texts(10, seed=2), [f"new item {i}" for i in range(48)]

    async def body() -> None:
        await _started(engine)
        try:
            await engine.score(QUERY, seen, deadline=_deadline())
            cold = asyncio.create_task(engine.score("deck screw", unseen, deadline=_deadline()))
            await asyncio.sleep(0.1)  # the cold request's first item batch is in the model
            began = time.monotonic()
            warm = await engine.score("door hinge", seen, deadline=_deadline())
            warm_s = time.monotonic() - began
            assert not cold.done()  # six batches of 0.25 s: still encoding
            cold_result = await cold
        finally:
            await engine.stop()
        assert warm.cached == len(seen) and cold_result.cached == 0
        # One queue would have put this query behind ~1.4 s of item batches.
        assert warm_s < 0.5, warm_s

    run_async(body)


def test_truncate_false_names_the_item_or_the_query(tiny_representation_package: Path) -> None:
    long_text = " ".join(["bracket"] * 200)  # over the item side's 64 tokens

    async def body() -> None:
        engine, _ = _engine(tiny_representation_package)
        await _started(engine)
        try:
            cut = await engine.score(QUERY, ["valve", long_text], deadline=_deadline())
            assert cut.truncated.tolist() == [False, True]
            with pytest.raises(InputTooLong) as item:
                await engine.score(
                    QUERY, ["valve", long_text], deadline=_deadline(), truncate=False
                )
            # Stored while cut: a strict request still gets its 413, not the cut vectors.
            assert item.value.index == 1
            with pytest.raises(InputTooLong) as query:
                await engine.score(long_text, ["valve"], deadline=_deadline(), truncate=False)
            assert query.value.index is None
        finally:
            await engine.stop()

    run_async(body)


def test_combine_cascade_keeps_the_head_above_the_tail_in_order() -> None:
    student = np.array([0.9, 0.2, 0.8, 0.7, 0.1])
    head = [0, 2]
    combined = combine_cascade(student, head, np.array([0.3, 0.6]))
    assert combined[head].tolist() == [0.3, 0.6]
    order = np.argsort(-combined, kind="stable").tolist()
    assert order[:2] == [2, 0]  # the head in the cross-encoder's order, above the tail
    assert order[2:] == [3, 1, 4]  # the tail in the student's order
    assert combined[3] < 0.3 and combined[3] == pytest.approx(0.3, rel=1e-5)
    assert combined[1] / combined[3] == pytest.approx(0.2 / 0.7)  # spacing kept
    # A tail already below the head is left as the student scored it.
    np.testing.assert_array_equal(
        combine_cascade(student, head, np.array([0.95, 0.99]))[[1, 3, 4]], [0.2, 0.7, 0.1]
    )


def test_the_cascade_rescores_the_head_with_the_cross_encoder(
    tiny_representation_package: Path, tiny_model_package: Path
) -> None:
    texts = make_texts(30, seed=3)

    async def body() -> None:
        cross = ScoringEngine.from_package_dir(
            tiny_model_package, Metrics(CollectorRegistry()), warmup=False
        )
        engine, _ = _engine(tiny_representation_package, cascade=cross, cascade_top_k=5)
        await _started(engine)
        try:
            plain = await engine.score(QUERY, texts, deadline=_deadline(), cascade_top_k=0)
            cascaded = await engine.score(QUERY, texts, deadline=_deadline())
            wide = await engine.score(QUERY, texts, deadline=_deadline(), cascade_top_k=100)
            reference = await cross.score(QUERY, texts, deadline=_deadline())
        finally:
            await engine.stop()
        head = np.argsort(-plain.scores, kind="stable")[:5]
        np.testing.assert_allclose(cascaded.scores[head], reference.scores[head], atol=1e-6)
        tail = np.setdiff1d(np.arange(len(texts)), head)
        assert cascaded.scores[tail].max() < cascaded.scores[head].min()
        order = np.argsort(-cascaded.scores, kind="stable")
        assert set(order[:5]) == set(head)
        assert list(order[5:]) == [i for i in np.argsort(-plain.scores, kind="stable") if i in tail]
        # A k past the item count re-scores everything: the cross-encoder alone.
        np.testing.assert_allclose(wide.scores, reference.scores, atol=1e-6)
        np.testing.assert_allclose(1 / (1 + np.exp(-cascaded.logits)), cascaded.scores, atol=1e-6)

    run_async(body)


def test_the_item_lane_is_timed_only_once_the_cascade_has_warmed_up(
    tiny_representation_package: Path, tiny_model_package: Path, monkeypatch
) -> None:
    """Both warm-ups time their models on the same cores: side by side each measured the
    other's load (the item lane up to 8x its cost, and unseen items were then refused)."""
    seen: list[bool] = []

    async def body() -> None:
        cross = ScoringEngine.from_package_dir(tiny_model_package, Metrics(CollectorRegistry()))
        engine, _ = _engine(tiny_representation_package, cascade=cross, warmup=True)
        timed = engine._time_shapes

        def recording() -> list:
            seen.append(cross.ready)
            return timed()

        monkeypatch.setattr(engine, "_time_shapes", recording)
        await _started(engine)
        await engine.stop()
        assert engine.admission.forecast.calibrated

    run_async(body)
    assert seen == [True]


def test_a_cascade_without_a_cross_encoder_is_refused(tiny_representation_package: Path) -> None:
    async def body() -> None:
        engine, _ = _engine(tiny_representation_package)
        await _started(engine)
        try:
            with pytest.raises(InvalidInput) as refused:
                await engine.score(QUERY, ["valve"], deadline=_deadline(), cascade_top_k=3)
        finally:
            await engine.stop()
        assert refused.value.field == "cascade_top_k"

    run_async(body)


def test_preload_fills_the_store_before_ready(tiny_representation_package: Path, tmp_path) -> None:
    catalogue = tmp_path / "catalogue.csv"
    titles = make_texts(300, seed=4)
    catalogue.write_text(
        "id,product_uid,product_title\n"
        + "".join(f'{i},{1000 + i % 250},"{t}"\n' for i, t in enumerate(titles))
    )
    items = read_catalogue(catalogue)
    assert len(items) == len(set((str(1000 + i % 250), t) for i, t in enumerate(titles)))
    assert items[0] == ("1000", titles[0])  # the product id, not the row number

    async def body() -> None:
        engine, registry = _engine(
            tiny_representation_package,
            preload=items,
            limits=TextLimits(max_text_chars=40),
            preload_progress=False,
        )
        await engine.start()
        assert not engine.ready and engine.status in ("warming_up", "preloading")
        assert await engine.wait_ready(60)
        try:
            assert engine.preloaded == len(items) and len(engine.store) == len(items)
            ids, texts = [i for i, _ in items[:50]], [t for _, t in items[:50]]
            hit = await engine.score(QUERY, texts, deadline=_deadline(), item_ids=ids)
        finally:
            await engine.stop()
        # Found with the same id and text, cut to the character limit as the preload was.
        assert hit.cached == 50
        assert _encoded(registry, "item") == len(items)

    run_async(body)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name\nx\n", "no text column"),
        ("product_uid,product_title\n1,ok\n2,\n", ":3: empty product_title"),
        ('{"text": "ok"}\n{"id": 3, "text": "x"}\n', ":2: 'id' must be a string"),
        ('{"text": "ok"}\nnot json\n', ":2: not JSON"),
        ('"plain string"\n{"text": " "}\n', ":2: expected a non-empty string 'text'"),
    ],
)
def test_a_bad_catalogue_names_the_line(content: str, message: str, tmp_path) -> None:
    suffix = ".jsonl" if content.startswith(("{", '"')) else ".csv"
    path = tmp_path / f"catalogue{suffix}"
    path.write_text(content)
    with pytest.raises(CatalogueError, match=message):
        read_catalogue(path)


def test_a_jsonl_catalogue_takes_items_as_score_does(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "1", "text": "valve"}\n"hinge"\n\n{"id": "1", "text": "valve"}\n')
    assert read_catalogue(path) == [("1", "valve"), (None, "hinge")]
