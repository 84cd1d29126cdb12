"""The representation head's maths (numpy and torch), text encoding, save and load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import RepresentationConfig, StudentConfig
from training.representation import BI_ENCODER, LATE_INTERACTION
from training.representation.model import (
    HeadSpec,
    build_representation,
    encode_texts,
    load_representation,
    pool,
    read_head,
    save_representation,
    similarity,
)
from training.representation.scoring import PairScorer, pair_similarities, torch_encoder
from training.student import StudentError


def _spec(architecture: str, dim: int = 2, projection: bool = False) -> HeadSpec:
    return HeadSpec(architecture, 2, dim, projection, 1.0, 0.0, 8, 8)


def test_maxsim_against_a_hand_computation() -> None:
    # Query: 2 real tokens + 1 padding; item: 2 real tokens + 1 padding (a vector that
    # would win every max if the mask were ignored).
    query = np.array([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    query_mask = np.array([[1, 1, 0]])
    item = np.array([[[0.6, 0.8], [1.0, 0.0], [0.0, 5.0]]])
    item_mask = np.array([[1, 1, 0]])
    # Token 1: max(0.6, 1.0) = 1.0; token 2: max(0.8, 0.0) = 0.8; mean over 2 tokens.
    expected = (1.0 + 0.8) / 2
    assert similarity(query, query_mask, item, item_mask)[0] == pytest.approx(expected)
    torch_model = _late_interaction_module()
    got = torch_model.similarity(
        torch.tensor(query), torch.tensor(query_mask), torch.tensor(item), torch.tensor(item_mask)
    )
    assert float(got[0]) == pytest.approx(expected)
    # Variable-length pairs (the stored form: real tokens only) give the same number.
    pairs = pair_similarities(_spec(LATE_INTERACTION), [query[0, :2]], [item[0, :2]])
    assert pairs[0] == pytest.approx(expected)


def test_bi_encoder_is_the_cosine_of_mean_pooled_states() -> None:
    hidden = np.array(
        [[[3.0, 0.0], [1.0, 2.0], [100.0, -100.0]], [[0.0, 2.0], [0.0, 2.0], [0.0, 0.0]]]
    )
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    vectors = pool(hidden, mask, _spec(BI_ENCODER), None)
    # Row 0: mean of the two real tokens (2, 1), padding ignored; row 1: mean (0, 4/3).
    assert vectors[0] == pytest.approx(np.array([2.0, 1.0]) / np.sqrt(5.0))
    assert vectors[1] == pytest.approx([0.0, 1.0])
    sims = similarity(vectors, None, vectors[::-1], None)
    assert sims == pytest.approx([1.0 / np.sqrt(5.0)] * 2)


def test_late_interaction_pool_projects_normalises_and_zeroes_padding() -> None:
    hidden = np.array([[[1.0, 1.0], [2.0, 0.0], [7.0, 7.0]]])
    projection = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    tokens = pool(hidden, np.array([[1, 1, 0]]), _spec(LATE_INTERACTION, 3, True), projection)
    assert tokens[0, 0] == pytest.approx(np.array([1.0, 0.0, 2.0]) / np.sqrt(5.0))
    assert tokens[0, 1] == pytest.approx([1.0, 0.0, 0.0])
    assert tokens[0, 2] == pytest.approx([0.0, 0.0, 0.0])


def _late_interaction_module():
    from training.representation.model import RepresentationStudent

    class _Encoder(torch.nn.Module):
        config = type("C", (), {"hidden_size": 2})()

    return RepresentationStudent(
        _Encoder(),
        LATE_INTERACTION,
        None,
        init_scale=1.0,
        init_bias=0.0,
        query_max_length=8,
        item_max_length=8,
    )


@pytest.mark.parametrize(("architecture", "dim"), [(BI_ENCODER, None), (LATE_INTERACTION, 8)])
def test_torch_head_equals_the_numpy_head(
    tiny_student_dir: Path, architecture: str, dim: int | None
) -> None:
    model, query_tok, item_tok = build_representation(
        StudentConfig(backbone=str(tiny_student_dir)),
        RepresentationConfig(architecture=architecture, dim=dim),
    )
    model.eval()
    batch = encode_texts(item_tok, ["Simpson Strong-Tie 12-Gauge Angle", "hose"])
    inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.inference_mode():
        vectors = model.encode(**inputs).numpy()
        hidden = model.encoder(**inputs).last_hidden_state.numpy()
    spec = model.head_spec()
    assert np.abs(pool(hidden, batch["attention_mask"], spec, model.projection_matrix())
                  - vectors).max() < 1e-6  # fmt: skip
    if architecture == LATE_INTERACTION:
        assert vectors.shape == (2, batch["input_ids"].shape[1], 8)
        assert np.all(vectors[1, batch["attention_mask"][1] == 0] == 0)
    # Each distinct text is encoded once, and a pair's score does not depend on the others.
    scorer = PairScorer(spec, torch_encoder(model), query_tok, item_tok, batch_size=2)
    queries, items = ["angle", "hose", "angle"], ["hose reel", "angle bracket", "hose reel"]
    scores = scorer.score(queries, items)
    assert scores[0] == scores[2]
    assert scorer.score(queries[1:2], items[1:2])[0] == pytest.approx(scores[1], abs=1e-6)


def test_save_and_load_round_trip(tiny_student_dir: Path, tmp_path: Path) -> None:
    model, *_ = build_representation(
        StudentConfig(backbone=str(tiny_student_dir)),
        RepresentationConfig(architecture=LATE_INTERACTION, dim=4, init_scale=3.0, init_bias=-1.0),
    )
    run = save_representation(model.eval(), str(tiny_student_dir), tmp_path / "run")
    spec, projection = read_head(run)
    assert (spec.architecture, spec.dim, spec.scale, spec.bias) == (LATE_INTERACTION, 4, 3.0, -1.0)
    assert projection == pytest.approx(model.projection_matrix())
    loaded, query_tok, _ = load_representation(run)
    batch = {k: torch.from_numpy(v) for k, v in encode_texts(query_tok, ["deck screw"]).items()}
    with torch.inference_mode():
        assert torch.allclose(loaded.encode(**batch), model.encode(**batch), atol=1e-6)
    # The saved tokenizer cuts nothing itself: each side sets its own max_length.
    assert query_tok.truncation["max_length"] == spec.query_max_length


def test_late_interaction_needs_a_dim(tiny_student_dir: Path) -> None:
    with pytest.raises(StudentError, match="dim"):
        build_representation(
            StudentConfig(backbone=str(tiny_student_dir)),
            RepresentationConfig(architecture=LATE_INTERACTION),
        )
