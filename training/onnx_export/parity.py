"""Parity gates of an exported graph, and the batch-invariance probe.

- FP32 must reproduce the PyTorch scores: max |score_onnx - score_torch| <= 1e-4.
- FP16 / INT8, against the chosen FP32 graph on the validation queries: pairwise accuracy
  drops by at most 0.005 and the mean per-query Kendall tau is at least 0.9.
- Batch invariance: a few short pairs scored one at a time against the same pairs inside
  one padded batch with longer pairs; over 1e-5 a variant is ``batch_invariant: false``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.activation import sigmoid
from service.features import load_tokenizer
from training.evaluation.metrics import pairwise_accuracy
from training.scoring import score_pairs, session_runner

# (query_id, query, text, grade on the 1..3 scale)
ValidationPair = tuple[Hashable, str, str, float]

FP32_MAX_ABS_DIFF = 1e-4
MAX_PAIRWISE_ACCURACY_DROP = 0.005
MIN_MEAN_KENDALL_TAU = 0.9
# The service promises batched scores equal one-at-a-time scores to this.
MAX_BATCH_INVARIANCE_DIFF = 1e-5
# Batch-invariance probe: short pairs scored alone vs next to longer (padding) company.
INVARIANCE_PROBES = 8
INVARIANCE_COMPANY = 16
_EPS = 1e-9


def mean_kendall_tau(
    query_ids: Sequence[Hashable], reference: np.ndarray, scores: np.ndarray
) -> float:
    """Mean over queries (with >= 2 items) of Kendall's tau-b between two score lists.

    Queries where either list is constant have no defined tau and are skipped; NaN
    when none is left.
    """
    from scipy.stats import kendalltau

    taus = []
    for rows in _group(query_ids).values():
        if len(rows) < 2:
            continue
        tau = kendalltau(np.asarray(reference)[rows], np.asarray(scores)[rows]).statistic
        if not math.isnan(tau):
            taus.append(tau)
    return float(np.mean(taus)) if taus else math.nan


def _group(query_ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for row, qid in enumerate(query_ids):
        groups[qid].append(row)
    return groups


@dataclass(frozen=True)
class ParityResult:
    passed: bool
    numbers: dict[str, Any]
    reason: str = ""


def check_fp32_parity(torch_scores: np.ndarray, onnx_scores: np.ndarray) -> ParityResult:
    """FP32 ONNX must reproduce the PyTorch scores to ``FP32_MAX_ABS_DIFF``."""
    diff = float(np.max(np.abs(np.asarray(torch_scores) - np.asarray(onnx_scores))))
    finite = bool(np.all(np.isfinite(onnx_scores)))
    numbers = {
        "reference": "pytorch",
        "pairs": len(onnx_scores),
        "max_abs_score_diff": diff,
        "threshold_max_abs_score_diff": FP32_MAX_ABS_DIFF,
    }
    if not finite or not diff <= FP32_MAX_ABS_DIFF:
        return ParityResult(False, numbers, f"max |score diff| vs PyTorch {diff:.3g} > 1e-4")
    return ParityResult(True, numbers)


def check_ranking_parity(
    query_ids: Sequence[Hashable],
    grades: Sequence[float],
    reference_scores: np.ndarray,
    scores: np.ndarray,
) -> ParityResult:
    """A reduced-precision variant must keep the FP32 ranking (see module docstring)."""
    acc_ref = pairwise_accuracy(query_ids, grades, reference_scores)
    acc = pairwise_accuracy(query_ids, grades, scores)
    tau = mean_kendall_tau(query_ids, reference_scores, scores)
    drop = acc_ref - acc
    numbers = {
        "reference": "fp32",
        "pairs": len(scores),
        "queries": len(_group(query_ids)),
        "pairwise_accuracy": acc,
        "pairwise_accuracy_fp32": acc_ref,
        "mean_kendall_tau_vs_fp32": tau,
        "max_abs_score_diff_vs_fp32": float(
            np.max(np.abs(np.asarray(reference_scores) - np.asarray(scores)))
        ),
        "threshold_pairwise_accuracy_drop": MAX_PAIRWISE_ACCURACY_DROP,
        "threshold_mean_kendall_tau": MIN_MEAN_KENDALL_TAU,
    }
    reasons = []
    if not np.all(np.isfinite(scores)):
        reasons.append("non-finite scores")
    # A drop is what hurts; a variant that happens to rank better is not rejected.
    # _EPS: a mean of taus that is 0.9 on paper comes out as 0.8999999999999999.
    if not drop <= MAX_PAIRWISE_ACCURACY_DROP + _EPS:
        reasons.append(f"pairwise accuracy {acc:.4f} vs FP32 {acc_ref:.4f}")
    if not tau >= MIN_MEAN_KENDALL_TAU - _EPS:
        reasons.append(f"mean Kendall tau vs FP32 {tau:.4f} < {MIN_MEAN_KENDALL_TAU}")
    return ParityResult(not reasons, numbers, "; ".join(reasons))


def invariance_pairs(
    text_pairs: Sequence[tuple[str, str]],
    n_probes: int = INVARIANCE_PROBES,
    n_company: int = INVARIANCE_COMPANY,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Probe pairs (the shortest) and longer company pairs for :func:`batch_invariance`.

    Company texts are the longest pairs' texts said three times, so every company pair is
    longer than every probe (up to ``max_length``) and the probes get padding in the batch.
    """
    ordered = sorted(dict.fromkeys(text_pairs), key=lambda p: (len(p[0]) + len(p[1]), p))
    probes = ordered[:n_probes]
    longest = ordered[::-1]
    company = [
        (longest[i % len(longest)][0], " ".join([longest[i % len(longest)][1]] * 3))
        for i in range(n_company)
    ]
    return probes, company


def batch_invariance(
    session: Any,
    tokenizer_path: str | Path,
    max_length: int,
    probes: Sequence[tuple[str, str]],
    company: Sequence[tuple[str, str]],
) -> float:
    """Max |score alone - score in a mixed padded batch| over ``probes``.

    Each probe is scored as a batch of one, then all probes together in one batch between
    the two halves of ``company`` (padded to the longest, as the service pads).
    """
    tokenizer = load_tokenizer(tokenizer_path, max_length)
    run_batch = session_runner(session)

    def run(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        queries, texts = [p[0] for p in pairs], [p[1] for p in pairs]
        logits = score_pairs(run_batch, tokenizer, queries, texts, batch_size=len(pairs))
        return sigmoid(logits, np.float64)

    alone = np.array([run([p])[0] for p in probes])
    half = len(company) // 2
    mixed = run([*company[:half], *probes, *company[half:]])[half : half + len(probes)]
    return float(np.max(np.abs(alone - mixed)))
