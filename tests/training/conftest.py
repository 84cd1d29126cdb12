"""Fixtures for the training tests: a tiny labeled data file and a tiny random teacher base."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

# 24 product types; each query has four items graded 3, 2.33, 1.67 and 1, so every
# split has queries with distinct grades (pairwise accuracy is defined everywhere).
PRODUCT_TYPES = (
    "angle bracket", "shower head", "door hinge", "deck screw", "wall anchor", "light bulb",
    "paint roller", "garden hose", "ceiling fan", "water heater", "tile cutter", "wood glue",
    "pipe wrench", "faucet cartridge", "smoke detector", "extension cord", "ladder hook",
    "drill bit", "cabinet knob", "window screen", "toilet seat", "grout sealer",
    "fence post", "storage bin",
)  # fmt: skip
BRANDS = ("Acme", "Behr", "Delta", "Moen", "Ryobi", "Stanley")


def write_tiny_dataset(path: Path) -> Path:
    """A file in the Home Depot ``train.csv`` format with 24 queries x 4 products."""
    rows = []
    row_id = 0
    products = {}
    for index, kind in enumerate(PRODUCT_TYPES):
        brand = BRANDS[index % len(BRANDS)]
        other = PRODUCT_TYPES[(index + 7) % len(PRODUCT_TYPES)]
        unrelated = PRODUCT_TYPES[(index + 13) % len(PRODUCT_TYPES)]
        items = [
            (f"{brand} {kind.title()} in Chrome", 3.0),
            (f"{brand} Heavy Duty {kind.split()[-1].title()} Kit", 2.33),
            (
                f"{BRANDS[(index + 1) % 6]} {other.title()} with {kind.split()[0].title()} Trim",
                1.67,
            ),
            (f"{BRANDS[(index + 2) % 6]} {unrelated.title()} Pack", 1.0),
        ]
        for title, grade in items:
            uid = products.setdefault(title, str(100001 + len(products)))
            rows.append((row_id, uid, title, kind, grade))
            row_id += 1
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "product_uid", "product_title", "search_term", "relevance"])
        writer.writerows(rows)
    return path


def build_tiny_teacher_base(out_dir: Path, texts: list[str]) -> Path:
    """A tiny random Qwen2 decoder with a word-level tokenizer built from ``texts``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"])
    tokenizer.train_from_iterator([*texts, "Query: Product: Relevance:"], trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    config = Qwen2Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=wrapped.pad_token_id,
        eos_token_id=wrapped.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out_dir)
    wrapped.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "train.csv")


@pytest.fixture(scope="session")
def tiny_teacher_base(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    import pandas as pd

    frame = pd.read_csv(tiny_dataset)
    texts = frame["product_title"].tolist() + frame["search_term"].tolist()
    return build_tiny_teacher_base(tmp_path_factory.mktemp("teacher-base"), texts)


@pytest.fixture(scope="session")
def saved_student_dir(tiny_student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh student built and saved by ``training.student`` from the tiny backbone."""
    from training.config import StudentConfig
    from training.student import build_student, save_student

    model, _ = build_student(StudentConfig(backbone=str(tiny_student_dir), seed=1))
    return save_student(model, str(tiny_student_dir), tmp_path_factory.mktemp("saved") / "s", 64)


@pytest.fixture(scope="session")
def fp32_package(saved_student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``saved_student_dir`` exported (FP32 only, to stay fast) through the real export."""
    from training.export import export_package

    out = tmp_path_factory.mktemp("fp32-package") / "minilm-homedepot"
    return export_package(
        saved_student_dir,
        out,
        name="minilm-homedepot",
        version="0",
        max_length=64,
        variants=("fp32",),
    )
