"""Fixtures for the training tests: a tiny labeled data file and a tiny random teacher base."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
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


def human_pairs() -> pd.DataFrame:
    """Five human-graded pairs of two queries (the distillation tests' training rows)."""
    return pd.DataFrame(
        {
            "query": ["angle bracket"] * 3 + ["hose"] * 2,
            "query_key": ["angle bracket"] * 3 + ["hose"] * 2,
            "product_id": ["1", "2", "3", "4", "5"],
            "title": ["Angle bracket", "Angle iron", "Deck screw", "Garden hose", "Hose reel"],
            "grade": [3.0, 2.0, 1.0, 3.0, 2.33],
        }
    )


def teacher_pairs() -> pd.DataFrame:
    """Three teacher-labeled pairs, two of them for a query of :func:`human_pairs`."""
    return pd.DataFrame(
        {
            "query": ["angle bracket", "angle bracket", "tile saw"],
            "query_key": ["angle bracket", "angle bracket", "tile saw"],
            "product_id": ["9", "8", "7"],
            "title": ["Corner brace", "Shelf bracket", "Wet tile saw"],
            "teacher_score": [0.7, 0.4, 0.9],
        }
    )


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
    from training.onnx_export.build import export_package

    out = tmp_path_factory.mktemp("fp32-package") / "minilm-homedepot"
    return export_package(
        saved_student_dir,
        out,
        name="minilm-homedepot",
        version="0",
        max_length=64,
        variants=("fp32",),
    )


def tiny_config(root: Path, data: Path, teacher_base: Path, student_dir: Path):
    """A TrainConfig for the tiny pipeline: every path under ``root``, everything small."""
    from training.config import load_config

    return load_config(
        overrides={
            "paths": {
                "data": str(data),
                "labels_dir": str(root / "labels"),
                "student_results": str(root / "results" / "students"),
                "cascade_results": str(root / "results" / "cascade"),
                "runs_dir": str(root / "runs"),
                "models_dir": str(root / "models"),
                "docs_dir": str(root / "docs"),
                "teacher_cache_dir": str(root / "cache"),
                "teacher_checkpoints": str(root / "checkpoints" / "teacher"),
            },
            "split": {"seed": 3, "train": 0.5, "validation": 0.25, "test": 0.25},
            "teacher": {
                "base": str(teacher_base),
                "lora_layers": 1,
                "lora_r": 4,
                "batch_size": 8,
                "train_pairs": 32,
                "warmup_steps": 1,
                "threads": 1,
                "max_length": 48,
            },
            "augment": {
                "bm25_per_query": 3,
                "random_per_query": 1,
                "generated_queries": 8,
                "bm25_per_generated": 2,
                "seed": 1,
            },
            "label": {"eval_queries": 3, "threads": 1, "chunk_size": 16, "batch_size": 8},
            "student": {
                "backbone": str(student_dir),
                "batch_size": 8,
                "items_per_query": 4,
                "epochs": 1.0,
                "eval_every_steps": 3,
                "validation_queries": None,
                "threads": 1,
                "learning_rate": 1e-3,
            },
            "curve": {"augment_multiples": [0.5]},
            "export": {"variants": ["fp32"]},
            "evaluate": {
                "embedding_backbone": str(student_dir),
                "latency_pairs": 16,
                "teacher_latency_pairs": 4,
                "batch_size": 8,
                "threads": 1,
            },
        },
        environ={},
    )


@dataclass
class TinyPipeline:
    """The tiny pipeline, run once: each stage's output, or the error that stopped it.

    ``get(stage)`` fails the calling test with the stage's own error, or skips it when an
    earlier stage failed, so each stage's test fails on its own.
    """

    root: Path
    config: Any
    dataset: Any
    outputs: dict[str, Any] = field(default_factory=dict)
    failed: tuple[str, BaseException] | None = None

    def run(self, stage: str, step: Any) -> None:
        if self.failed is not None:
            return
        try:
            self.outputs[stage] = step()
        except Exception as exc:  # recorded; the stage's test reports it
            self.failed = (stage, exc)

    def get(self, stage: str) -> Any:
        if stage in self.outputs:
            return self.outputs[stage]
        if self.failed is not None and self.failed[0] == stage:
            pytest.fail(f"stage {stage} failed: {self.failed[1]!r}")
        failed = self.failed[0] if self.failed else "?"
        pytest.skip(f"stage {stage} did not run: stage {failed} failed first")


@pytest.fixture(scope="session")
def tiny_pipeline(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_dataset: Path,
    tiny_teacher_base: Path,
    tiny_student_dir: Path,
) -> TinyPipeline:
    """teacher -> label -> distill -> committee -> evaluate -> export, once per session.

    Stage tests read the outputs and must leave them as they found them (copy the root
    with :func:`copy_pipeline` to change anything).
    """
    from training.artifacts import curve_sizes, load_augmentation, load_dataset, read_run
    from training.config import CommitteeConfig
    from training.evaluation.stage import stage_evaluate
    from training.onnx_export.stage import stage_export
    from training.stages import stage_committee, stage_distill, stage_label, stage_teacher

    root = tmp_path_factory.mktemp("pipeline")
    config = tiny_config(root, tiny_dataset, tiny_teacher_base, tiny_student_dir)
    pipeline = TinyPipeline(root, config, load_dataset(config))
    pipeline.run("teacher", lambda: stage_teacher(config))
    pipeline.run("label", lambda: stage_label(config))
    pipeline.run("distill", lambda: stage_distill(config))
    (size,) = curve_sizes(config, pipeline.dataset)
    wanted = min(2 * size, len(load_augmentation(config, pipeline.dataset)))
    committee = CommitteeConfig(members=("human-only", f"distill-n{size}"), augment_pairs=wanted)
    pipeline.config = config = config.model_copy(update={"committee": committee})
    pipeline.run("committee", lambda: stage_committee(config))
    pipeline.run(
        "records",
        lambda: [
            read_run(d) for d in [*pipeline.outputs["distill"], pipeline.outputs["committee"]]
        ],
    )
    command = "python -m training evaluate --config tiny.json"
    pipeline.run("evaluate", lambda: stage_evaluate(config, command=command))
    pipeline.run("export", lambda: stage_export(config))
    # Once a package is shipped, the report also scores it the way the service does.
    pipeline.run("evaluate-with-package", lambda: stage_evaluate(config, command=command))
    return pipeline


def copy_pipeline(pipeline: TinyPipeline, root: Path):
    """The pipeline's outputs copied under ``root``, and a config that points there."""
    import shutil

    for name in ("labels", "results", "runs", "models", "checkpoints"):
        if (pipeline.root / name).exists():
            shutil.copytree(pipeline.root / name, root / name)
    paths = {
        key: str(root / Path(getattr(pipeline.config.paths, key)).relative_to(pipeline.root))
        for key in (
            "labels_dir",
            "student_results",
            "cascade_results",
            "runs_dir",
            "models_dir",
            "docs_dir",
            "teacher_checkpoints",
        )
    }
    return pipeline.config.model_copy(
        update={"paths": pipeline.config.paths.model_copy(update=paths)}
    )


@pytest.fixture(scope="session")
def make_tiny_config(tiny_dataset: Path, tiny_teacher_base: Path, tiny_student_dir: Path):
    """``make_tiny_config(root)``: a fresh tiny config whose outputs go under ``root``."""
    return lambda root: tiny_config(root, tiny_dataset, tiny_teacher_base, tiny_student_dir)


@pytest.fixture
def pipeline_copy(tiny_pipeline: TinyPipeline, tmp_path: Path):
    """A config over a private copy of the tiny pipeline's outputs (safe to change)."""
    tiny_pipeline.get("export")
    return copy_pipeline(tiny_pipeline, tmp_path)
