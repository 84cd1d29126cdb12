"""The naive baseline: a plain FastAPI app running the student in PyTorch, one request at a time.

What a first version of the service would look like: each request is tokenized with the
transformers tokenizer and scored in one forward pass of its own items; concurrent requests
are never merged into batches (they run side by side in FastAPI's thread pool). Same
student weights, same truncation and activation as the service, same ``/score`` and
``/rerank`` request shapes, so the benchmark sends both the same traffic.

    python -m loadtest.naive_server --model models/minilm-homedepot [--torch-model DIR] --port 8001

The PyTorch weights are found by :func:`find_torch_model`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from relevance_core.activation import sigmoid

SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"


class Item(BaseModel):
    id: str
    text: str


class ScoreBody(BaseModel):
    query: str
    items: list[Item | str]


class RerankBody(BaseModel):
    query: str
    texts: list[str]
    raw_scores: bool = False


class TorchModelNotFound(FileNotFoundError):
    """No PyTorch weights for a model package; the message says where it looked."""


def find_torch_model(package_dir: Path, explicit: Path | None = None) -> Path:
    """The ``save_pretrained`` directory of a package's student.

    Looked up in order: ``explicit`` (the ``--torch-model`` flag); the package directory
    itself when it holds weights; ``provenance.torch_model_dir`` in its manifest; the
    training run ``runs/students/<provenance.student.run>`` next to ``models/``.
    """
    tried: list[str] = []

    def usable(path: Path) -> bool:
        tried.append(str(path))
        return (path / "config.json").is_file() and any(
            (path / name).is_file() for name in (SAFETENSORS, TORCH_BIN)
        )

    if explicit is not None:
        if usable(explicit):
            return explicit
        raise TorchModelNotFound(f"--torch-model {explicit} has no config.json + weights")
    if usable(package_dir):
        return package_dir
    manifest_path = package_dir / "manifest.json"
    provenance: dict[str, Any] = {}
    if manifest_path.is_file():
        provenance = json.loads(manifest_path.read_text()).get("provenance") or {}
    candidates = []
    if provenance.get("torch_model_dir"):
        candidates.append(Path(provenance["torch_model_dir"]))
    run = (provenance.get("student") or {}).get("run")
    if run:
        # models/<name>/ -> <repo>/runs/students/<run>/ (training.artifacts.students_dir)
        candidates.append(package_dir.resolve().parent.parent / "runs" / "students" / run)
    for candidate in candidates:
        if usable(candidate):
            return candidate
    raise TorchModelNotFound(
        f"no PyTorch weights for {package_dir} (tried {', '.join(tried)}); pass --torch-model "
        "with the student's save_pretrained directory"
    )


def create_app(model_dir: Path, max_length: int, threads: int = 0) -> Any:
    """The baseline app: model loaded once at start, scored per request under ``no_grad``."""
    import numpy as np
    import torch
    from fastapi import FastAPI
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if threads > 0:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    def logits(query: str, texts: list[str]) -> np.ndarray:
        inputs = tokenizer(
            [query] * len(texts),
            texts,
            padding=True,
            truncation="only_second",
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            return model(**inputs).logits[:, 0].float().numpy()

    app = FastAPI(title="naive PyTorch baseline")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Plain `def` endpoints: FastAPI runs each in its thread pool, one request per call.
    @app.post("/score")
    def score(body: ScoreBody) -> dict[str, Any]:
        items = [
            i if isinstance(i, Item) else Item(id=str(n), text=i) for n, i in enumerate(body.items)
        ]
        values = sigmoid(logits(body.query, [i.text for i in items]))
        return {
            "model": {"name": "naive-pytorch", "version": str(model_dir)},
            "scores": [
                {"id": item.id, "index": n, "score": float(v)}
                for n, (item, v) in enumerate(zip(items, values, strict=True))
            ],
        }

    @app.post("/rerank")
    def rerank(body: RerankBody) -> list[dict[str, Any]]:
        raw = logits(body.query, body.texts)
        values = raw if body.raw_scores else sigmoid(raw)
        order = np.argsort(-values, kind="stable")
        return [{"index": int(i), "score": float(values[i])} for i in order]

    return app


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m loadtest.naive_server", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="model package directory")
    parser.add_argument("--torch-model", type=Path, help="student save_pretrained directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    args = parser.parse_args(argv)
    manifest = json.loads((args.model / "manifest.json").read_text())
    torch_dir = find_torch_model(args.model, args.torch_model)
    app = create_app(torch_dir, int(manifest["max_length"]), args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
