"""Engine: readiness after warm-up, scores against an independent ONNX Runtime run of the
package, the manifest's activation, refusals by position, draining on stop."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from apitools import make_texts
from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer

from service.admission import AdmissionConfig
from service.batcher import BatcherConfig
from service.engine import ScoringEngine
from service.errors import InputTooLong, NotReady
from service.features import PairEncoder, TextLimits
from service.metrics import Metrics
from service.model_package import load_package
from service.scorers import OnnxScorer


class GatedScorer:
    """The real tiny model, but warm-up waits for a gate (to observe not-ready)."""

    def __init__(self, inner: OnnxScorer) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.variant = inner.variant
        self.batch_invariant = inner.batch_invariant
        self.gate = threading.Event()

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.inner.run(inputs)

    def warmup(self, batches: Iterable[dict[str, np.ndarray]]) -> int:
        assert self.gate.wait(10)
        return self.inner.warmup(batches)

    def close(self) -> None:
        self.inner.close()


def build(
    package_dir: Path, limits: TextLimits | None = None, **batching: float
) -> tuple[ScoringEngine, GatedScorer, CollectorRegistry]:
    registry = CollectorRegistry()
    package = load_package(package_dir)
    scorer = GatedScorer(OnnxScorer.load(package))
    engine = ScoringEngine(
        package,
        scorer,
        PairEncoder.for_package(package, limits),
        Metrics(registry),
        batching=BatcherConfig(**batching),  # type: ignore[arg-type]
        admission=AdmissionConfig(max_queue_pairs=500),
    )
    return engine, scorer, registry


def reference_logits(package_dir: Path, query: str, texts: Sequence[str]) -> np.ndarray:
    """Logits of the package's INT8 graph, one pair at a time, without the service's code."""
    manifest = json.loads((package_dir / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(package_dir / manifest["tokenizer"]))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=manifest["max_length"], strategy="only_second")
    graph = package_dir / manifest["variants"]["int8"]["file"]
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    logits = []
    for text in texts:
        e = tokenizer.encode(query, text)
        feeds = {
            "input_ids": np.array([e.ids], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids], dtype=np.int64),
        }
        (out,) = session.run(
            [manifest["output"]], {i.name: feeds[i.name] for i in session.get_inputs()}
        )
        logits.append(float(np.asarray(out).reshape(-1)[0]))
    return np.array(logits)


def test_ready_only_after_warmup(tiny_model_package: Path) -> None:
    engine, scorer, registry = build(tiny_model_package)

    async def main() -> None:
        await engine.start()
        await asyncio.sleep(0.05)
        assert not engine.ready and engine.status == "warming_up"
        assert registry.get_sample_value("relevance_ready") == 0
        scorer.gate.set()
        assert await engine.wait_ready(10)
        assert registry.get_sample_value("relevance_ready") == 1
        # Warm-up fitted admission's cost model on timed runs of the session.
        cost = engine.admission.forecast
        assert cost.calibrated and cost.b > 0 and cost.a >= 0
        await engine.stop()
        assert not engine.ready and engine.status == "stopped"

    asyncio.run(main())


def test_scores_match_an_independent_run_of_the_package(tiny_model_package: Path) -> None:
    engine, scorer, _ = build(tiny_model_package)
    scorer.gate.set()
    texts = ["short", "word " * 200, *make_texts(20, seed=5)]
    expected = reference_logits(tiny_model_package, "drill", texts)

    async def main() -> None:
        await engine.start()
        result = await engine.score("drill", texts, deadline=time.monotonic() + 10)
        await engine.stop()
        np.testing.assert_allclose(result.logits, expected, atol=1e-5, rtol=0)
        # The manifest names sigmoid: scores are the logistic of the reference logits.
        np.testing.assert_allclose(result.scores, 1 / (1 + np.exp(-expected)), atol=1e-6, rtol=0)
        assert result.truncated.tolist() == [False, True] + [False] * 20
        assert result.batches >= 1 and result.texts == texts and result.query == "drill"

    asyncio.run(main())


def test_identity_activation_from_the_manifest_serves_logits(
    tiny_model_package: Path, tmp_path: Path
) -> None:
    package_dir = tmp_path / "identity"
    shutil.copytree(tiny_model_package, package_dir)
    manifest_path = package_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["activation"] = "identity"
    manifest_path.write_text(json.dumps(manifest))
    engine, scorer, _ = build(package_dir)
    scorer.gate.set()
    texts = make_texts(5, seed=6)

    async def main() -> None:
        await engine.start()
        result = await engine.score("drill", texts, deadline=time.monotonic() + 10)
        await engine.stop()
        np.testing.assert_allclose(result.scores, result.logits, rtol=0, atol=0)
        np.testing.assert_allclose(
            result.scores, reference_logits(tiny_model_package, "drill", texts), atol=1e-5
        )
        assert (result.scores < 0).any() or (result.scores > 1).any()  # not squashed

    asyncio.run(main())


def test_the_manifests_calibration_is_applied_before_the_activation(
    tiny_model_package: Path, tmp_path: Path
) -> None:
    package_dir = tmp_path / "calibrated"
    shutil.copytree(tiny_model_package, package_dir)
    manifest_path = package_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["calibration"] = {"method": "platt", "scale": 3.0, "bias": -2.0}
    manifest_path.write_text(json.dumps(manifest))
    engine, scorer, _ = build(package_dir)
    scorer.gate.set()
    texts = make_texts(6, seed=7)

    async def main() -> None:
        await engine.start()
        result = await engine.score("drill", texts, deadline=time.monotonic() + 10)
        await engine.stop()
        expected = reference_logits(tiny_model_package, "drill", texts)
        # logits stay the graph's; scores are sigmoid(3 * logit - 2), in the same order
        np.testing.assert_allclose(result.logits, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(
            result.scores, 1 / (1 + np.exp(-(3.0 * expected - 2.0))), atol=1e-5, rtol=0
        )
        assert (np.argsort(result.scores) == np.argsort(expected)).all()

    asyncio.run(main())


def test_refusals_name_positions_not_json_fields(tiny_model_package: Path) -> None:
    engine, scorer, _ = build(
        tiny_model_package, TextLimits(max_query_chars=100, max_text_chars=1500)
    )
    scorer.gate.set()
    deadline = time.monotonic() + 10

    async def main() -> None:
        await engine.start()
        try:
            with pytest.raises(InputTooLong) as pair:
                await engine.score(
                    "drill", ["short", "word " * 200], deadline=deadline, truncate=False
                )
            assert pair.value.index == 1 and "model's 64 tokens" in pair.value.detail
            with pytest.raises(InputTooLong) as chars:
                await engine.score(
                    "drill", ["a", "b", "c" * 1501], deadline=deadline, truncate=False
                )
            assert chars.value.index == 2 and "1501 characters" in chars.value.detail
            with pytest.raises(InputTooLong) as query:
                await engine.score("x " * 45, ["a"], deadline=deadline, truncate=False)
            assert (
                query.value.index is None and "tokens exceed the limit of 30" in query.value.detail
            )
            for error in (pair.value, chars.value, query.value):
                assert "items" not in error.message and "texts" not in error.message
            assert engine.admission.reserved_pairs == 0  # refused requests hold nothing
        finally:
            await engine.stop()

    asyncio.run(main())


def test_long_inputs_are_cut_once_then_scored_as_cut(tiny_model_package: Path) -> None:
    engine, scorer, _ = build(
        tiny_model_package, TextLimits(max_query_chars=100, max_text_chars=50)
    )
    scorer.gate.set()
    long_query = "cordless drill " * 40
    texts = ["a", "word " * 200]

    async def main() -> None:
        await engine.start()
        try:
            cut = await engine.score(long_query, texts, deadline=time.monotonic() + 10)
            # The character limit (100) then the query's share of the model (30 tokens).
            fitted = engine.encoder.fit_query(long_query[:100], truncate=True)
            same = await engine.score(
                fitted, [t[:50] for t in texts], deadline=time.monotonic() + 10
            )
        finally:
            await engine.stop()
        assert cut.query == long_query[:100] and cut.texts == ["a", ("word " * 200)[:50]]
        assert cut.truncated.tolist() == [False, True]  # cut to 50 characters
        np.testing.assert_array_equal(cut.logits, same.logits)
        np.testing.assert_allclose(
            cut.logits, reference_logits(tiny_model_package, fitted, cut.texts), atol=1e-5
        )

    asyncio.run(main())


def test_stop_finishes_accepted_requests_then_refuses(tiny_model_package: Path) -> None:
    engine, scorer, _ = build(tiny_model_package, max_batch_size=4, max_wait_ms=1)
    scorer.gate.set()
    requests = [make_texts(20, seed=s) for s in range(6)]

    async def main() -> None:
        await engine.start()
        deadline = time.monotonic() + 30
        tasks = [
            asyncio.create_task(engine.score("drill", texts, deadline=deadline))
            for texts in requests
        ]
        await asyncio.sleep(0.01)  # accepted and queued
        await engine.stop(timeout_s=30)
        results = await asyncio.gather(*tasks)
        for texts, result in zip(requests, results, strict=True):
            np.testing.assert_allclose(
                result.logits, reference_logits(tiny_model_package, "drill", texts), atol=1e-5
            )
        with pytest.raises(NotReady):
            await engine.score("drill", ["a"], deadline=time.monotonic() + 5)

    asyncio.run(main())


def test_info_names_the_provider_in_use(tiny_model_package: Path) -> None:
    engine, _, _ = build(tiny_model_package, max_batch_size=8)
    info = engine.info()
    assert info["execution"] == {
        "provider": "CPUExecutionProvider",
        "variant": "int8",  # the tiny package's INT8 graph is static, so batch-invariant
        "batch_invariant": True,
        "model_instances": 1,
    }
    assert info["batcher"]["max_batch_size"] == 8
    assert info["admission"]["max_queue_pairs"] == 500
    assert info["max_query_tokens"] == 30  # half of the tiny model's 64, less [CLS], [SEP]
    assert info["manifest"]["name"] == "tiny"


def test_sessions_side_by_side_score_as_one_session_does(
    tiny_model_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: dict[int, int] = {}
    real_run = OnnxScorer.run

    def counted(self: OnnxScorer, inputs: dict[str, np.ndarray]) -> np.ndarray:
        runs[id(self)] = runs.get(id(self), 0) + 1
        return real_run(self, inputs)

    monkeypatch.setattr(OnnxScorer, "run", counted)
    registry = CollectorRegistry()
    engine = ScoringEngine.from_package_dir(
        tiny_model_package,
        Metrics(registry),
        intra_op_threads=1,
        model_instances=2,
        batching=BatcherConfig(max_batch_size=8),
    )
    requests = [make_texts(5 + 3 * i, seed=i) for i in range(6)]

    async def main() -> None:
        await engine.start()
        assert await engine.wait_ready(30)
        runs.clear()
        results = await asyncio.gather(
            *(engine.score("drill", t, deadline=time.monotonic() + 30) for t in requests)
        )
        for texts, result in zip(requests, results, strict=True):
            np.testing.assert_allclose(
                result.logits, reference_logits(tiny_model_package, "drill", texts), atol=1e-5
            )
        await engine.stop()

    asyncio.run(main())
    assert engine.model_instances == 2 and len(runs) == 2  # both sessions ran batches
    assert engine.info()["execution"]["model_instances"] == 2
    assert registry.get_sample_value("relevance_model_instances") == 2
    assert engine.admission.forecast.describe()["instances"] == 2
