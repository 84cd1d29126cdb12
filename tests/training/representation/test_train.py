"""The represent stage: labels from the configured file, training lowers the loss, the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from training.artifacts import PipelineError, load_augmentation, load_dataset, read_run
from training.distill import training_frame
from training.losses import HybridDistillationLoss
from training.representation.model import build_representation, load_representation
from training.representation.runs import labeled_pairs, representation_fingerprint
from training.representation.train import batch_logits
from training.stages import stage_represent


def _with_labels(config, root: Path, pairs: int = 12):
    """``config`` whose representation.labels names a small label file under labels/."""
    dataset = load_dataset(config)
    augmentation = load_augmentation(config, dataset).head(pairs)
    labels = augmentation.loc[:, ["query_key", "product_id"]].assign(
        teacher_score=np.linspace(0.1, 0.9, len(augmentation))
    )
    path = root / "labels" / "new-teacher" / "augment.csv"
    path.parent.mkdir(parents=True)
    labels.to_csv(path, index=False)
    return config.model_copy(
        update={
            "representation": config.representation.model_copy(
                update={"labels": "new-teacher/augment.csv"}
            )
        }
    )


def _loss(model, query_tok, item_tok, frame: pd.DataFrame) -> float:
    loss_fn = HybridDistillationLoss()
    model.eval()
    with torch.inference_mode():
        logits = batch_logits(
            model, query_tok, item_tok, frame["query"].tolist(), frame["title"].tolist()
        )
        targets = torch.tensor(frame["target"].to_numpy(), dtype=torch.float32)
        return float(loss_fn(logits, targets, torch.from_numpy(frame["group"].to_numpy())))


@pytest.mark.parametrize(("architecture", "dim"), [("bi-encoder", None), ("late-interaction", 8)])
def test_training_lowers_the_loss(
    make_tiny_config, tmp_path: Path, architecture: str, dim: int | None
) -> None:
    config = _with_labels(make_tiny_config(tmp_path), tmp_path)
    config = config.model_copy(
        update={
            "student": config.student.model_copy(update={"epochs": 4.0}),
            "representation": config.representation.model_copy(
                update={"architecture": architecture, "dim": dim}
            ),
        }
    )
    run_dir = stage_represent(config)
    assert run_dir.name == f"{architecture}-n12"
    record = read_run(run_dir)
    assert record["architecture"] == architecture
    assert record["augment_pairs"] == 12
    assert record["labels_file"] == "new-teacher/augment.csv"
    assert record["labels_from"] == "teacher"
    assert record["train_pairs_by_source"]["teacher"] == 12
    assert record["head"]["dim"] == (dim or 32)

    dataset = load_dataset(config)
    frame = training_frame(dataset.splits["train"], labeled_pairs(config, dataset))
    before = _loss(*build_representation(config.student, config.representation), frame)
    after = _loss(*load_representation(run_dir), frame)
    assert after < before
    # The head's scale and bias moved, on their own larger step.
    assert record["head"]["scale"] != config.representation.init_scale
    # A second call with the same config finds the run current and keeps it.
    mtime = (run_dir / "run.json").stat().st_mtime_ns
    assert stage_represent(config) == run_dir
    assert (run_dir / "run.json").stat().st_mtime_ns == mtime


def test_labels_are_a_config_value(make_tiny_config, tmp_path: Path) -> None:
    config = _with_labels(make_tiny_config(tmp_path), tmp_path, pairs=5)
    dataset = load_dataset(config)
    assert len(labeled_pairs(config, dataset)) == 5
    human_only = config.model_copy(
        update={"representation": config.representation.model_copy(update={"labels": None})}
    )
    assert labeled_pairs(human_only, dataset) is None
    missing = config.model_copy(
        update={"representation": config.representation.model_copy(update={"labels": "no.csv"})}
    )
    with pytest.raises(PipelineError, match="does not exist"):
        labeled_pairs(missing, dataset)


def test_representation_knobs_leave_cross_encoder_fingerprints(make_tiny_config, tmp_path) -> None:
    from training.artifacts import student_fingerprint

    config = make_tiny_config(tmp_path)
    dataset = load_dataset(config)
    other = config.model_copy(
        update={
            "representation": config.representation.model_copy(
                update={"architecture": "late-interaction", "dim": 128}
            )
        }
    )
    assert student_fingerprint(config, dataset, 0) == student_fingerprint(other, dataset, 0)
    assert representation_fingerprint(config, dataset, None, 0) != representation_fingerprint(
        other, dataset, None, 0
    )
