"""The naive PyTorch baseline: where its weights come from, and that it answers like the service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from loadtest.naive_server import TorchModelNotFound, create_app, find_torch_model


def _student_like(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_find_torch_model_lookup_order(tmp_path: Path) -> None:
    package = tmp_path / "models" / "pkg"
    package.mkdir(parents=True)
    run = _student_like(tmp_path / "runs" / "students" / "aug-0")
    explicit = _student_like(tmp_path / "elsewhere")
    (package / "manifest.json").write_text(
        json.dumps({"provenance": {"student": {"run": "aug-0"}}})
    )
    assert find_torch_model(package) == run
    assert find_torch_model(package, explicit) == explicit
    recorded = _student_like(tmp_path / "recorded")
    (package / "manifest.json").write_text(
        json.dumps({"provenance": {"torch_model_dir": str(recorded)}})
    )
    assert find_torch_model(package) == recorded
    with pytest.raises(TorchModelNotFound, match="--torch-model"):
        find_torch_model(tmp_path / "models" / "missing-weights", None)
    with pytest.raises(TorchModelNotFound):
        find_torch_model(package, tmp_path / "nothing-here")


def test_naive_app_scores_and_reranks(tiny_student_dir: Path) -> None:
    app = create_app(tiny_student_dir, max_length=64, threads=1)
    texts = ["Simpson Strong-Tie 12-Gauge Angle", "Everbilt 3/4 in. Brass FIP Gate Valve"]
    with TestClient(app) as client:
        scored = client.post(
            "/score",
            json={"query": "angle bracket", "items": [{"id": "a", "text": texts[0]}, texts[1]]},
        )
        assert scored.status_code == 200, scored.text
        scores = scored.json()["scores"]
        assert [s["id"] for s in scores] == ["a", "1"]
        assert all(0 <= s["score"] <= 1 for s in scores)
        ranked = client.post("/rerank", json={"query": "angle bracket", "texts": texts}).json()
        assert sorted(r["index"] for r in ranked) == [0, 1]
        assert ranked[0]["score"] >= ranked[1]["score"]
        raw = client.post(
            "/rerank", json={"query": "angle bracket", "texts": texts, "raw_scores": True}
        ).json()
        by_index = {r["index"]: r["score"] for r in raw}
        expected = 1 / (1 + np.exp(-np.array([by_index[0], by_index[1]])))
        np.testing.assert_allclose([s["score"] for s in scores], expected, atol=1e-6)
