"""The representation student in PyTorch, its text encoding, and its head's maths in numpy.

The student is one BERT encoder (``BertModel``, the MiniLM weights) plus a small head:
an optional projection matrix ``W`` (``hidden x dim``, no bias), a ``scale`` and a
``bias``. With ``h`` the encoder's last hidden states and ``m`` the attention mask:

- bi-encoder: ``v = normalize((sum_t m_t h_t / sum_t m_t) W)``; similarity
  ``s(q, d) = v_q . v_d`` (cosine).
- late interaction: ``v_t = normalize(h_t W)`` for every token (padding zeroed);
  ``s(q, d) = (1 / |q|) sum_{i in q} max_{j in d} v_i . v_j`` (mean MaxSim).

``logit = scale * s + bias``, ``score = sigmoid(logit)``. :func:`pool` and
:func:`similarity` are the numpy version of the head that the export checks against the
PyTorch one and that a server computes after the ONNX encoder (whose output is
``last_hidden_state``).

Texts are tokenized one at a time (no pairs): ``[CLS] text [SEP]``, cut to the side's
``max_length`` (query or item), padded to the longest text of a batch, token types 0.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from relevance_core import representation as head
from relevance_core.representation import NORM_EPS as _NORM_EPS
from relevance_core.representation import similarity as similarity
from training.artifacts import TOKENIZER_FILES
from training.representation import ARCHITECTURES, BI_ENCODER, HEAD_FILE, LATE_INTERACTION
from training.student import StudentError, backbone_dir, keep_encoder_layers

if TYPE_CHECKING:
    from transformers import BertModel

    from training.config import RepresentationConfig, StudentConfig

PROJECTION_FILE = "projection.npy"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class HeadSpec:
    """What turns encoder states into stored vectors and two sides' vectors into a score."""

    architecture: str
    hidden_size: int
    dim: int  # width of the stored vectors (hidden_size when there is no projection)
    projection: bool
    scale: float
    bias: float
    query_max_length: int
    item_max_length: int

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )

    @property
    def pooling(self) -> str:
        return "mean" if self.architecture == BI_ENCODER else "none (one vector per token)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- text encoding


def text_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    """A ``tokenizer.json`` set to cut single texts to ``max_length`` tokens, no padding."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """``[CLS] text [SEP]`` per text, padded to the longest: int64 arrays by input name."""
    if not texts:
        raise ValueError("encode_texts needs at least one text")
    encodings = tokenizer.encode_batch(list(texts))
    longest = max(len(e.ids) for e in encodings)
    batch = {name: np.zeros((len(encodings), longest), dtype=np.int64) for name in INPUT_NAMES}
    for row, enc in enumerate(encodings):
        batch["input_ids"][row, : len(enc.ids)] = enc.ids
        batch["attention_mask"][row, : len(enc.ids)] = enc.attention_mask
    return batch


# --------------------------------------------------------------------------- numpy head
# The maths lives in relevance_core.representation, which the service computes with too.


def pool(
    hidden: np.ndarray, mask: np.ndarray, spec: HeadSpec, projection: np.ndarray | None
) -> np.ndarray:
    """Stored vectors from ``last_hidden_state`` ``(n, L, hidden)`` and the mask ``(n, L)``.

    Bi-encoder: ``(n, dim)``. Late interaction: ``(n, L, dim)``, padded tokens zero.
    """
    return head.pool(hidden, mask, spec.architecture, projection)


def logits_from_similarity(spec: HeadSpec, sims: np.ndarray) -> np.ndarray:
    return head.logits_from_similarity(spec.scale, spec.bias, sims)


# --------------------------------------------------------------------------- torch student


class RepresentationStudent(nn.Module):
    """A shared BERT encoder for both sides plus the head of :class:`HeadSpec`."""

    def __init__(
        self,
        encoder: BertModel,
        architecture: str,
        dim: int | None,
        *,
        init_scale: float,
        init_bias: float,
        query_max_length: int,
        item_max_length: int,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        self.encoder = encoder
        self.architecture = architecture
        self.query_max_length = query_max_length
        self.item_max_length = item_max_length
        hidden = encoder.config.hidden_size
        self.projection: nn.Linear | None = None
        if dim is not None:
            self.projection = nn.Linear(hidden, dim, bias=False)
            # Orthogonal rows keep inner products roughly as the encoder had them (a
            # random projection), so training starts from the pretrained geometry.
            nn.init.orthogonal_(self.projection.weight)
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    @property
    def dim(self) -> int:
        if self.projection is not None:
            return self.projection.out_features
        return self.encoder.config.hidden_size

    def head_parameters(self) -> list[nn.Parameter]:
        return [self.scale, self.bias]

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """Stored vectors: ``(n, dim)`` (bi-encoder) or ``(n, L, dim)`` (late interaction)."""
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        with self._fp32_head():
            hidden = hidden.float()
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if self.architecture == BI_ENCODER:
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                if self.projection is not None:
                    pooled = self.projection(pooled)
                return nn.functional.normalize(pooled, dim=-1, eps=_NORM_EPS)
            tokens = self.projection(hidden) if self.projection is not None else hidden
            return nn.functional.normalize(tokens, dim=-1, eps=_NORM_EPS) * weights

    def _fp32_head(self) -> torch.autocast:
        """The head outside any autocast, as it is served (FP32 numpy): in BF16 the
        projection and similarity round to ~3 digits, which ``scale`` (~10) carries into
        the logit; on MiniLM that moved logits 2-4x more than the BF16 encoder did."""
        return torch.autocast(self.scale.device.type, enabled=False)

    def similarity(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        item: torch.Tensor,
        item_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Row-aligned similarity, as :func:`similarity` (the numpy one) computes it."""
        if self.architecture == BI_ENCODER:
            return (query * item).sum(-1)
        sims = torch.einsum("nqd,nkd->nqk", query, item)
        sims = sims.masked_fill(~item_mask.bool()[:, None, :], float("-inf"))
        best = sims.max(dim=2).values
        q_mask = query_mask.bool()
        best = best.masked_fill(~q_mask, 0.0)
        return best.sum(1) / q_mask.sum(1).clamp(min=1).to(best.dtype)

    def logits(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        item: torch.Tensor,
        item_mask: torch.Tensor,
    ) -> torch.Tensor:
        with self._fp32_head():
            return self.scale * self.similarity(query, query_mask, item, item_mask) + self.bias

    def head_spec(self) -> HeadSpec:
        return HeadSpec(
            architecture=self.architecture,
            hidden_size=self.encoder.config.hidden_size,
            dim=self.dim,
            projection=self.projection is not None,
            scale=float(self.scale.detach()),
            bias=float(self.bias.detach()),
            query_max_length=self.query_max_length,
            item_max_length=self.item_max_length,
        )

    def projection_matrix(self) -> np.ndarray | None:
        """``W`` as ``(hidden, dim)`` float32 (``h @ W``), or None."""
        if self.projection is None:
            return None
        return self.projection.weight.detach().float().numpy().T.copy()


def build_representation(
    student: StudentConfig, settings: RepresentationConfig
) -> tuple[RepresentationStudent, Tokenizer, Tokenizer]:
    """A fresh student from the backbone's encoder, with its query and item tokenizers."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    source = backbone_dir(student.backbone)
    torch.manual_seed(student.seed)  # the projection's initialisation
    if settings.architecture == LATE_INTERACTION and settings.dim is None:
        raise StudentError("late interaction needs representation.dim (e.g. 128)")
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # an unused pooler or classifier is expected
    try:
        encoder = BertModel.from_pretrained(source, add_pooling_layer=False, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(previous)
    if student.layers is not None:
        keep_encoder_layers(_AsStudent(encoder), student.layers)
    model = RepresentationStudent(
        encoder,
        settings.architecture,
        settings.dim,
        init_scale=settings.init_scale,
        init_bias=settings.init_bias,
        query_max_length=settings.query_max_length,
        item_max_length=settings.item_max_length,
    )
    tokenizer = source / "tokenizer.json"
    return (
        model,
        text_tokenizer(tokenizer, settings.query_max_length),
        text_tokenizer(tokenizer, settings.item_max_length),
    )


class _AsStudent:
    """``keep_encoder_layers`` expects ``model.bert`` and ``model.config``."""

    def __init__(self, encoder: BertModel) -> None:
        self.bert = encoder
        self.config = encoder.config


# --------------------------------------------------------------------------- save / load


def save_representation(model: RepresentationStudent, backbone: str, out_dir: Path) -> Path:
    """The encoder (``save_pretrained``), the tokenizer files and the head, in ``out_dir``.

    ``tokenizer.json`` is saved without truncation or padding: each side sets its own
    ``max_length`` (see :func:`text_tokenizer`; the lengths are in the head file).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(out_dir)
    source = backbone_dir(backbone)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out_dir / name)
    plain = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    plain.no_padding()
    plain.no_truncation()
    plain.save(str(out_dir / "tokenizer.json"))
    projection = model.projection_matrix()
    if projection is not None:
        np.save(out_dir / PROJECTION_FILE, projection)
    (out_dir / HEAD_FILE).write_text(json.dumps(model.head_spec().to_dict(), indent=2) + "\n")
    return out_dir


def is_representation_run(run_dir: Path) -> bool:
    return (Path(run_dir) / HEAD_FILE).is_file()


def read_head(model_dir: Path) -> tuple[HeadSpec, np.ndarray | None]:
    """The head of a saved run (or package): its spec and projection matrix."""
    path = Path(model_dir) / HEAD_FILE
    if not path.is_file():
        raise StudentError(f"{model_dir} holds no representation student ({HEAD_FILE} missing)")
    spec = HeadSpec(**json.loads(path.read_text()))
    projection = None
    if spec.projection:
        projection = np.load(Path(model_dir) / PROJECTION_FILE).astype(np.float32)
    return spec, projection


def load_representation(model_dir: Path) -> tuple[RepresentationStudent, Tokenizer, Tokenizer]:
    """A saved student (eval mode) with its query and item tokenizers."""
    from transformers import BertModel

    model_dir = Path(model_dir)
    spec, projection = read_head(model_dir)
    encoder = BertModel.from_pretrained(model_dir, add_pooling_layer=False, dtype=torch.float32)
    model = RepresentationStudent(
        encoder,
        spec.architecture,
        spec.dim if spec.projection else None,
        init_scale=spec.scale,
        init_bias=spec.bias,
        query_max_length=spec.query_max_length,
        item_max_length=spec.item_max_length,
    )
    if projection is not None:
        with torch.no_grad():
            model.projection.weight.copy_(torch.from_numpy(projection.T))  # type: ignore[union-attr]
    tokenizer = model_dir / "tokenizer.json"
    return (
        model.eval(),
        text_tokenizer(tokenizer, spec.query_max_length),
        text_tokenizer(tokenizer, spec.item_max_length),
    )
