"""The representation student's backend: one ONNX session per side (query, item) and the
numpy head that turns each graph's ``last_hidden_state`` into stored vectors.

Unlike the cross-encoder (:mod:`service.scorers.cross_encoder`), a batch here is single
texts of one side, ``[CLS] text [SEP]`` with token type 0, and the answer is vectors,
not logits: ``(rows, dim)`` for a bi-encoder, ``(rows, tokens, dim)`` for late
interaction (padding zero). The interaction with the query is the engine's
(:mod:`relevance_core.representation`), on vectors it may have kept from earlier.

Texts are tokenized by :class:`TextEncoder` into the same :class:`~service.features.EncodedPair`
the micro-batcher packs for the cross-encoder (a single text is a pair without a second
segment), so both sides queue through an unchanged :class:`~service.batcher.MicroBatcher`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from relevance_core.representation import pool
from service.errors import InputTooLong
from service.features import EncodedPair
from service.representation_package import SIDES, RepresentationPackage
from service.scorers.base import Provider, Variant
from service.scorers.ort_options import session_options

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class TextEncoder:
    """Tokenizes one side's texts: cut to the side's ``max_length``, unpadded."""

    def __init__(self, tokenizer_path: str, max_length: int) -> None:
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(tokenizer_path)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)

    def encode(self, texts: Sequence[str], truncate: bool, offset: int = 0) -> list[EncodedPair]:
        """``[CLS] text [SEP]`` of each text; with ``truncate`` off a text over the limit
        raises :class:`~service.errors.InputTooLong` naming ``offset + i`` (None: the query
        side passes ``offset=-1`` and the error names the query)."""
        encodings = self._tokenizer.encode_batch(list(texts))
        out = []
        for i, e in enumerate(encodings):
            cut = bool(e.overflowing)
            if cut and not truncate:
                raise InputTooLong(
                    f"over the model's {self.max_length} tokens and truncate is false",
                    index=None if offset < 0 else offset + i,
                )
            ids = np.asarray(e.ids, dtype=np.int64)
            out.append(
                EncodedPair(
                    input_ids=ids,
                    attention_mask=np.asarray(e.attention_mask, dtype=np.int64),
                    token_type_ids=np.zeros_like(ids),
                    truncated=cut,
                )
            )
        return out


class RepresentationScorer:
    """Both sides' sessions; :meth:`encode` is thread-safe (ORT releases the GIL)."""

    def __init__(
        self,
        package: RepresentationPackage,
        sessions: dict[str, ort.InferenceSession],
        variant: str,
    ) -> None:
        self.package = package
        self.variant = variant
        self._sessions: dict[str, ort.InferenceSession] | None = sessions
        self.provider = sessions["item"].get_providers()[0]
        self.batch_invariant = package.manifest.variants[variant].batch_invariant
        self._inputs = {side: [i.name for i in s.get_inputs()] for side, s in sessions.items()}
        self._architecture = package.manifest.architecture
        self._projection = package.projection
        self._output = package.manifest.output

    @classmethod
    def load(
        cls,
        package: RepresentationPackage,
        provider: Provider = "cpu",
        variant: Variant = "auto",
        intra_op_threads: int = 0,
        spinning: bool = False,
    ) -> RepresentationScorer:
        """Open the query and item graphs of ``variant`` (auto: see ``select_variant``)."""
        providers = [CPU]
        if provider == "cuda":
            if CUDA in ort.get_available_providers():
                providers = [CUDA, CPU]
            else:
                log.warning("provider=cuda requested but this onnxruntime has no CUDA EP; CPU")
        if variant == "auto" and providers[0] == CUDA and "fp16" in package.available_variants():
            chosen = "fp16"
        else:
            chosen = package.select_variant(variant)
        options = session_options(intra_op_threads, spinning)
        sessions = {
            side: ort.InferenceSession(
                str(package.graph_path(chosen, side)), sess_options=options, providers=providers
            )
            for side in SIDES
        }
        log.info("representation graphs %s on %s", chosen, sessions["item"].get_providers()[0])
        return cls(package, sessions, chosen)

    def encode(self, side: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Stored vectors of a padded batch of one side's texts (float32)."""
        if self._sessions is None:
            raise RuntimeError("the scorer is closed")
        feeds = {name: inputs[name] for name in self._inputs[side]}
        (hidden,) = self._sessions[side].run([self._output], feeds)
        return pool(hidden, inputs["attention_mask"], self._architecture, self._projection)

    def close(self) -> None:
        self._sessions = None
