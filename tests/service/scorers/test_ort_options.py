"""Every serving session runs without ORT memory patterns (they pile up per input shape)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.model_package import load_package
from service.representation_package import load_representation_package
from service.scorers.cross_encoder import OnnxScorer
from service.scorers.ort_options import session_options
from service.scorers.representation import RepresentationScorer


def test_options_turn_memory_patterns_off_and_keep_the_thread_choice() -> None:
    options = session_options(3, spinning=False)
    assert options.enable_mem_pattern is False
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_options(0, spinning=True)
    assert spinning.intra_op_num_threads == 0  # ORT's default: one per core
    assert spinning.enable_mem_pattern is False


def test_both_scorers_load_their_sessions_with_these_options(
    tiny_model_package: Path, tiny_representation_package: Path
) -> None:
    cross = OnnxScorer.load(load_package(tiny_model_package), intra_op_threads=1)
    assert cross._session.get_session_options().enable_mem_pattern is False
    # Scores still come out of a session without patterns, for batches of any shape.
    for rows, width in ((1, 5), (3, 9), (2, 7)):
        batch = {
            name: np.ones((rows, width), np.int64)
            for name in ("input_ids", "attention_mask", "token_type_ids")
        }
        assert np.isfinite(cross.run(batch)).all()
    rep = RepresentationScorer.load(load_representation_package(tiny_representation_package))
    for session in rep._sessions.values():
        assert session.get_session_options().enable_mem_pattern is False
