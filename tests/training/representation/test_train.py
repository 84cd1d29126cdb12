"""The represent stage: labels from the configured file, training lowers the loss, the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.training.conftest import human_pairs, teacher_pairs
from training.artifacts import PipelineError, load_augmentation, load_dataset, read_run
from training.config import LossConfig, RepresentationConfig, StudentConfig
from training.distill import train_student, training_frame
from training.label import seal
from training.losses import HybridDistillationLoss
from training.representation.model import build_representation, encode_texts, load_representation
from training.representation.runs import labeled_pairs, representation_fingerprint
from training.representation.train import batch_logits, train_representation
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
    # Sealed (gzipped, as labels are committed) the labels are the same labels: the run
    # stays current instead of failing to find the plain file or retraining.
    assert seal(tmp_path / "labels" / "new-teacher" / "augment.csv") is not None
    assert not (tmp_path / "labels" / "new-teacher" / "augment.csv").exists()
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


# ------------------------------------------------------------ resumable, BF16 (training/fit_loop)


def _frame() -> pd.DataFrame:
    return training_frame(human_pairs(), teacher_pairs())


def _resumable(tiny_student_dir: Path) -> tuple[StudentConfig, RepresentationConfig]:
    student = StudentConfig(
        backbone=str(tiny_student_dir), batch_size=4, items_per_query=3, epochs=3.0,
        eval_every_steps=2, validation_queries=None, threads=1, checkpoint_minutes=0,
        precision="fp32",
    )  # fmt: skip
    # Late interaction: the projection's weights must resume too.
    settings = RepresentationConfig(architecture="late-interaction", dim=8, labels=None)
    return student, settings


def _weights(run: Path) -> dict[str, np.ndarray]:
    """The saved encoder and projection; the head's scale and bias are in ``run.json``."""
    from safetensors.numpy import load_file

    from training.representation.model import PROJECTION_FILE

    return {**load_file(run / "model.safetensors"), "projection": np.load(run / PROJECTION_FILE)}


class _StopsAt(HybridDistillationLoss):
    """Raises KeyboardInterrupt (what SIGTERM becomes on the command line) at call ``n``."""

    stop_at = 0
    calls = 0

    def combine(self, terms):
        type(self).calls += 1
        if type(self).calls == self.stop_at:
            raise KeyboardInterrupt
        return super().combine(terms)


def test_an_interrupted_representation_run_resumes_where_it_stopped(
    tiny_student_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.representation.train as module

    student, settings = _resumable(tiny_student_dir)
    frame, record = _frame(), {"fingerprint": "r1"}
    whole = train_representation(
        frame, human_pairs(), student, LossConfig(), tmp_path / "whole", record, settings=settings
    )

    stops = type("StopsAtStep4", (_StopsAt,), {"stop_at": 4, "calls": 0})
    monkeypatch.setattr(module, "HybridDistillationLoss", stops)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_representation(
            frame, human_pairs(), student, LossConfig(), run, record, settings=settings
        )
    assert not run.exists()
    assert (tmp_path / "run.checkpoint" / "state.pt").is_file()

    monkeypatch.undo()
    resumed = train_representation(
        frame, human_pairs(), student, LossConfig(), run, record, settings=settings
    )
    assert resumed["resumed_at_step"] == 3 and whole["resumed_at_step"] is None
    assert resumed["precision"] == whole["precision"] == "fp32"
    # The history carries the head's scale and bias: they too follow the same path.
    assert {"scale", "bias"} <= set(whole["history"][-1])
    assert resumed["history"] == [
        {**h, "elapsed_s": pytest.approx(h["elapsed_s"], abs=1e9)} for h in whole["history"]
    ]
    assert resumed["best_step"] == whole["best_step"]
    assert resumed["pairs_seen"] == whole["pairs_seen"]
    for value in ("scale", "bias"):
        assert resumed["head"][value] == pytest.approx(whole["head"][value], abs=1e-6)
    expected, got = _weights(tmp_path / "whole"), _weights(run)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6)
    assert not (tmp_path / "run.checkpoint").exists()


def test_a_cross_encoder_checkpoint_is_not_resumed_as_a_representation_run(
    tiny_student_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.distill

    student, settings = _resumable(tiny_student_dir)
    frame, record, run = _frame(), {"fingerprint": "same"}, tmp_path / "run"
    stops = type("StopsAtStep3", (_StopsAt,), {"stop_at": 3, "calls": 0})
    monkeypatch.setattr(training.distill, "HybridDistillationLoss", stops)
    with pytest.raises(KeyboardInterrupt):
        train_student(frame, human_pairs(), student, LossConfig(), run, record)
    monkeypatch.undo()
    assert (tmp_path / "run.checkpoint" / "state.pt").is_file()
    # Same rows, steps, seed, fingerprint and place: only the kind differs.
    other = train_representation(
        frame, human_pairs(), student, LossConfig(), run, record, settings=settings
    )
    assert other["resumed_at_step"] is None


def test_bf16_autocast_trains_a_representation_with_fp32_weights(
    tiny_student_dir: Path, tmp_path: Path
) -> None:
    student, settings = _resumable(tiny_student_dir)
    student = student.model_copy(update={"precision": "bf16", "epochs": 1.0})
    record = train_representation(
        _frame(), human_pairs(), student, LossConfig(), tmp_path / "run", settings=settings
    )
    assert record["precision"] == "bf16"
    assert all(w.dtype == np.float32 for w in _weights(tmp_path / "run").values())
    assert np.isfinite(record["history"][-1]["loss"])


@pytest.mark.parametrize("architecture", ["bi-encoder", "late-interaction"])
def test_the_head_stays_fp32_under_autocast(tiny_student_dir: Path, architecture: str) -> None:
    from types import SimpleNamespace

    model, query_tok, _ = build_representation(
        StudentConfig(backbone=str(tiny_student_dir)),
        RepresentationConfig(architecture=architecture, dim=8, labels=None),  # type: ignore[arg-type]
    )
    model.eval()
    inputs = {k: torch.from_numpy(v) for k, v in encode_texts(query_tok, ["a b c", "d"]).items()}
    with torch.inference_mode():
        hidden = model.encoder(**inputs).last_hidden_state

    class FixedStates(torch.nn.Module):
        def forward(self, **_: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(last_hidden_state=hidden)

    # The encoder's states held fixed: what autocast may change is then the head alone.
    model.encoder = FixedStates()  # type: ignore[assignment]
    mask = inputs["attention_mask"]

    def head() -> tuple[torch.Tensor, torch.Tensor]:
        vectors = model.encode(**inputs)
        return vectors, model.logits(vectors, mask, vectors.flip(0), mask.flip(0))

    with torch.inference_mode():
        fp32 = head()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = head()
    for a, b in zip(fp32, bf16, strict=True):
        assert b.dtype == torch.float32 and torch.equal(a, b)
