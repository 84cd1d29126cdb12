"""What the evaluation scores besides the students: BM25, zero-shot embedding cosine, a package.

Latency per pair (:func:`latency_ms_per_pair`): wall time to score a fixed sample of pairs
in batches on this CPU, divided by the number of pairs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relevance_core.activation import activate
from training.scoring import score_pairs


class BM25Scorer:
    """BM25 of the product title for the query; corpus statistics from the whole catalogue."""

    def __init__(self, catalogue: pd.DataFrame) -> None:
        import bm25s

        self._bm25s = bm25s
        self._index = {pid: row for row, pid in enumerate(catalogue["product_id"])}
        self._retriever = bm25s.BM25()
        tokens = bm25s.tokenize(catalogue["title"].tolist(), stopwords="en", show_progress=False)
        self._retriever.index(tokens, show_progress=False)

    def score(self, queries: Sequence[str], product_ids: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(queries), dtype=np.float64)
        rows: dict[str, list[int]] = defaultdict(list)
        for row, query in enumerate(queries):
            rows[query].append(row)
        for query, members in rows.items():
            tokens = self._bm25s.tokenize(
                [query], stopwords="en", return_ids=False, show_progress=False
            )[0]
            corpus_scores = self._retriever.get_scores(tokens) if tokens else None
            for row in members:
                index = self._index.get(product_ids[row])
                if corpus_scores is not None and index is not None:
                    out[row] = corpus_scores[index]
        return out


class EmbeddingCosineScorer:
    """Zero-shot bi-encoder: cosine of mean-pooled, normalised embeddings of query and title."""

    def __init__(self, backbone: str, batch_size: int = 64, max_length: int = 128) -> None:
        from tokenizers import Tokenizer
        from transformers import AutoModel

        from training.student import backbone_dir

        source = backbone_dir(backbone)
        self.model = AutoModel.from_pretrained(source).eval()
        self.tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                encodings = self.tokenizer.encode_batch(
                    list(texts[start : start + self.batch_size])
                )
                longest = max(len(e.ids) for e in encodings)
                ids = np.zeros((len(encodings), longest), dtype=np.int64)
                mask = np.zeros_like(ids)
                for row, enc in enumerate(encodings):
                    ids[row, : len(enc.ids)] = enc.ids
                    mask[row, : len(enc.ids)] = 1
                ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
                hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
                weights = mask_t.unsqueeze(-1).float()
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        unique_queries = sorted(set(queries))
        query_vectors = dict(zip(unique_queries, self.embed(unique_queries), strict=True))
        text_vectors = self.embed(list(texts))
        return np.asarray(
            [query_vectors[q] @ v for q, v in zip(queries, text_vectors, strict=True)]
        )


class PackageScorer:
    """A model package scored as the service scores it (``service.scorers.cross_encoder``)."""

    def __init__(
        self, package_dir: Path, threads: int, batch_size: int = 32, variant: str = "auto"
    ) -> None:
        from service.features import load_tokenizer
        from service.model_package import load_package
        from service.scorers.cross_encoder import OnnxScorer

        package = load_package(package_dir)
        self.manifest = package.manifest
        self.scorer = OnnxScorer.load(package, "cpu", variant=variant, intra_op_threads=threads)
        self.tokenizer = load_tokenizer(package.tokenizer_path, package.manifest.max_length)
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        m = self.manifest
        return f"served package {m.name} {m.version} (ONNX {self.scorer.variant}, CPU)"

    def logits(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """The graph's raw outputs (before the manifest's calibration and activation)."""
        # np.argsort's default (unstable) order: the batches the published figures came from.
        order = np.argsort([len(q) + len(t) for q, t in zip(queries, texts, strict=True)])
        return score_pairs(
            self.scorer.run, self.tokenizer, queries, texts, self.batch_size, order=order
        )

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Scores as the service returns them: the manifest's calibration, then activation."""
        m = self.manifest
        return activate(m.activation, self.logits(queries, texts), m.calibration, np.float64)


def latency_ms_per_pair(score_rows: Callable[[slice], Any], pairs: int, batch_size: int) -> float:
    """Milliseconds per pair to score ``pairs`` pairs in batches (after one warm-up batch).

    ``score_rows(rows)`` scores the pairs ``rows`` (a slice) of a fixed sample.
    """
    score_rows(slice(0, batch_size))
    started = time.perf_counter()
    for start in range(0, pairs, batch_size):
        score_rows(slice(start, min(pairs, start + batch_size)))
    return (time.perf_counter() - started) * 1000.0 / max(1, pairs)
