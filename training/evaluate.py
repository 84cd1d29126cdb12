"""Held-out evaluation: ranking and classification metrics, baselines, slices and the report.

Metrics, per system, on the pairs of held-out queries (validation for checkpoint
selection, test for the report):

- **pairwise accuracy**: over item pairs of one query with different human grades, the
  share the scores order like the grades; a score tie counts 0.5 (random = 0.5). The
  primary figure: candidate lists are short, so NDCG of a random order is already high.
- **NDCG@5 / NDCG@10** (ranx) with linear graded gains ``grade - 1``; queries whose
  items all have grade 1 have no ideal ranking and are left out.
- **Spearman** correlation, pooled over all pairs, with the human grades and, where the
  teacher labeled the pairs, with the teacher's scores.
- **class accuracy and macro-F1** of the three relevance classes: human grade
  <= 1.5 irrelevant, <= 2.5 partial, else exact; score < 0.25 irrelevant, < 0.75 partial,
  else exact. Only for systems whose score is on the [0, 1] relevance scale.
- **latency per pair**: wall time to score a fixed sample of pairs in batches on this
  CPU, divided by the number of pairs.

Slices: long queries (at least ``long_query_words`` words), queries with a term that is
rare in the training queries, and the rest (neither).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

GRADE_CLASS_BOUNDS = (1.5, 2.5)  # grade <= 1.5 irrelevant, <= 2.5 partial, else exact
SCORE_CLASS_BOUNDS = (0.25, 0.75)  # score < 0.25 irrelevant, < 0.75 partial, else exact
CLASS_NAMES = ("irrelevant", "partial", "exact")
_TERM = re.compile(r"[a-z0-9]+")


# --------------------------------------------------------------------------- metrics


def _groups(query_ids: Sequence[Hashable]) -> list[np.ndarray]:
    rows: dict[Hashable, list[int]] = defaultdict(list)
    for row, qid in enumerate(query_ids):
        rows[qid].append(row)
    return [np.asarray(r) for r in rows.values()]


def pairwise_accuracy(
    query_ids: Sequence[Hashable], grades: Sequence[float], scores: Sequence[float]
) -> float:
    """Share of same-query item pairs with different grades that the scores order correctly.

    Ties in score count 0.5. NaN when no query has two different grades.
    """
    grades_arr = np.asarray(grades, dtype=np.float64)
    scores_arr = np.asarray(scores, dtype=np.float64)
    right, total = 0.0, 0
    for rows in _groups(query_ids):
        g, s = grades_arr[rows], scores_arr[rows]
        better = g[:, None] > g[None, :]
        n = int(better.sum())
        if n == 0:
            continue
        diff = s[:, None] - s[None, :]
        right += float(((diff > 0) & better).sum()) + 0.5 * float(((diff == 0) & better).sum())
        total += n
    return right / total if total else math.nan


def ndcg_at(
    query_ids: Sequence[Hashable],
    item_ids: Sequence[Hashable],
    grades: Sequence[float],
    scores: Sequence[float],
    ks: Sequence[int] = (5, 10),
) -> dict[str, float]:
    """Mean NDCG@k (ranx) with linear gains ``grade - 1`` over queries with a positive gain."""
    from ranx import Qrels, Run, evaluate

    # ranx stores relevance as integers: gains in hundredths keep the 1/3-step grades.
    gains = np.rint((np.asarray(grades, dtype=np.float64) - 1.0) * 100).astype(int)
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    run: dict[str, dict[str, float]] = defaultdict(dict)
    for qid, iid, gain, score in zip(query_ids, item_ids, gains, scores, strict=True):
        qrels[str(qid)][str(iid)] = int(gain)
        run[str(qid)][str(iid)] = float(score)
    kept = [q for q, items in qrels.items() if max(items.values()) > 0]
    if not kept:
        return {f"ndcg@{k}": math.nan for k in ks}
    metrics = [f"ndcg@{k}" for k in ks]
    result = evaluate(
        Qrels({q: qrels[q] for q in kept}),
        Run({q: run[q] for q in kept}),
        metrics,
        make_comparable=True,
    )
    if isinstance(result, float):
        result = {metrics[0]: result}
    return {name: float(value) for name, value in result.items()}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (NaN for fewer than 3 values or a constant input)."""
    from scipy.stats import spearmanr

    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a_arr) < 3 or np.ptp(a_arr) == 0 or np.ptp(b_arr) == 0:
        return math.nan
    return float(spearmanr(a_arr, b_arr).statistic)


def grade_classes(grades: Sequence[float]) -> np.ndarray:
    """Class index (0 irrelevant, 1 partial, 2 exact) of human grades."""
    low, high = GRADE_CLASS_BOUNDS
    g = np.asarray(grades, dtype=np.float64)
    return np.where(g <= low, 0, np.where(g <= high, 1, 2))


def score_classes(scores: Sequence[float]) -> np.ndarray:
    """Class index of [0, 1] scores, with the service's thresholds."""
    low, high = SCORE_CLASS_BOUNDS
    s = np.asarray(scores, dtype=np.float64)
    return np.where(s < low, 0, np.where(s < high, 1, 2))


def class_metrics(grades: Sequence[float], scores: Sequence[float]) -> dict[str, float]:
    """Accuracy and macro-F1 (over the three classes) of thresholded scores."""
    from sklearn.metrics import accuracy_score, f1_score

    truth, predicted = grade_classes(grades), score_classes(scores)
    return {
        "class_accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(
            f1_score(truth, predicted, labels=[0, 1, 2], average="macro", zero_division=0)
        ),
    }


def ranking_metrics(
    frame: pd.DataFrame,
    scores: np.ndarray,
    teacher_scores: np.ndarray | None = None,
    calibrated: bool = True,
) -> dict[str, float]:
    """All metrics of one system on ``frame`` (columns ``query_key``, ``product_id``, ``grade``).

    ``teacher_scores`` may hold NaN where the teacher has no label; Spearman with the
    teacher uses the labeled pairs only. ``calibrated`` says whether the scores live on the
    [0, 1] relevance scale (then the class metrics apply).
    """
    keys, grades = frame["query_key"].tolist(), frame["grade"].to_numpy()
    metrics: dict[str, float] = {
        "pairwise_accuracy": pairwise_accuracy(keys, grades, scores),
        **ndcg_at(keys, frame["product_id"].tolist(), grades, scores),
        "spearman_human": spearman(scores, grades),
    }
    if teacher_scores is not None:
        labeled = ~np.isnan(teacher_scores)
        metrics["spearman_teacher"] = spearman(np.asarray(scores)[labeled], teacher_scores[labeled])
    if calibrated:
        metrics.update(class_metrics(grades, scores))
    return metrics


# --------------------------------------------------------------------------- slices


def query_terms(query: str) -> set[str]:
    return set(_TERM.findall(query.lower()))


@dataclass(frozen=True)
class LongTailSlices:
    """Which held-out queries are long, which hold a rare term; the rest is neither."""

    long_words: int
    rare_max_count: int
    term_counts: Counter = field(default_factory=Counter)

    @classmethod
    def from_train(
        cls, train_queries: Sequence[str], long_words: int, rare_max_count: int
    ) -> LongTailSlices:
        counts: Counter = Counter()
        for query in set(train_queries):
            counts.update(query_terms(query))
        return cls(long_words, rare_max_count, counts)

    def is_long(self, query: str) -> bool:
        return len(query.split()) >= self.long_words

    def has_rare_term(self, query: str) -> bool:
        return any(self.term_counts[t] <= self.rare_max_count for t in query_terms(query))

    def masks(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        long = np.asarray([self.is_long(q) for q in queries], dtype=bool)
        rare = np.asarray([self.has_rare_term(q) for q in queries], dtype=bool)
        return {"long": long, "rare_term": rare, "long_tail": long | rare, "rest": ~(long | rare)}

    def describe(self) -> dict[str, str]:
        return {
            "long": f"at least {self.long_words} words",
            "rare_term": (
                "a term that no training query contains"
                if self.rare_max_count == 0
                else f"a term found in at most {self.rare_max_count} training queries"
            ),
            "long_tail": "long or rare_term",
            "rest": "neither long nor with a rare term",
        }


def slice_metrics(
    frame: pd.DataFrame, scores: np.ndarray, slices: LongTailSlices
) -> dict[str, dict[str, float]]:
    """Pairwise accuracy and Spearman with the human grades within each slice."""
    out = {}
    for name, mask in slices.masks(frame["query"].tolist()).items():
        part = frame[mask]
        out[name] = {
            "queries": int(part["query_key"].nunique()),
            "pairs": len(part),
            "pairwise_accuracy": pairwise_accuracy(
                part["query_key"].tolist(), part["grade"].to_numpy(), scores[mask]
            ),
            "spearman_human": spearman(scores[mask], part["grade"].to_numpy()),
        }
    return out


# --------------------------------------------------------------------------- baselines


class BM25Scorer:
    """BM25 of the product title for the query; corpus statistics from the whole catalogue."""

    def __init__(self, catalogue: pd.DataFrame) -> None:
        import bm25s

        self._bm25s = bm25s
        self._index = {pid: row for row, pid in enumerate(catalogue["product_id"])}
        self._retriever = bm25s.BM25()
        tokens = bm25s.tokenize(catalogue["title"].tolist(), stopwords="en", show_progress=False)
        self._retriever.index(tokens, show_progress=False)

    def score(self, queries: Sequence[str], product_ids: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(queries), dtype=np.float64)
        rows: dict[str, list[int]] = defaultdict(list)
        for row, query in enumerate(queries):
            rows[query].append(row)
        for query, members in rows.items():
            tokens = self._bm25s.tokenize(
                [query], stopwords="en", return_ids=False, show_progress=False
            )[0]
            corpus_scores = self._retriever.get_scores(tokens) if tokens else None
            for row in members:
                index = self._index.get(product_ids[row])
                if corpus_scores is not None and index is not None:
                    out[row] = corpus_scores[index]
        return out


class EmbeddingCosineScorer:
    """Zero-shot bi-encoder: cosine of mean-pooled, normalised embeddings of query and title."""

    def __init__(self, backbone: str, batch_size: int = 64, max_length: int = 128) -> None:
        from tokenizers import Tokenizer
        from transformers import AutoModel

        from training.student import backbone_dir

        source = backbone_dir(backbone)
        self.model = AutoModel.from_pretrained(source).eval()
        self.tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                encodings = self.tokenizer.encode_batch(
                    list(texts[start : start + self.batch_size])
                )
                longest = max(len(e.ids) for e in encodings)
                ids = np.zeros((len(encodings), longest), dtype=np.int64)
                mask = np.zeros_like(ids)
                for row, enc in enumerate(encodings):
                    ids[row, : len(enc.ids)] = enc.ids
                    mask[row, : len(enc.ids)] = 1
                ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
                hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
                weights = mask_t.unsqueeze(-1).float()
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        unique_queries = sorted(set(queries))
        query_vectors = dict(zip(unique_queries, self.embed(unique_queries), strict=True))
        text_vectors = self.embed(list(texts))
        return np.asarray(
            [query_vectors[q] @ v for q, v in zip(queries, text_vectors, strict=True)]
        )


class PackageScorer:
    """A model package scored the way the service scores it (``service.onnx_scorer``, CPU)."""

    def __init__(self, package_dir: Path, threads: int, batch_size: int = 32) -> None:
        from service.features import load_tokenizer
        from service.model_package import load_package
        from service.onnx_scorer import OnnxScorer

        package = load_package(package_dir)
        self.manifest = package.manifest
        self.scorer = OnnxScorer.load(package, "cpu", intra_op_threads=threads)
        self.tokenizer = load_tokenizer(package.tokenizer_path, package.manifest.max_length)
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        m = self.manifest
        return f"served package {m.name} {m.version} (ONNX {self.scorer.variant}, CPU)"

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        from service.features import encode_pairs

        order = np.argsort([len(q) + len(t) for q, t in zip(queries, texts, strict=True)])
        logits = np.zeros(len(texts), dtype=np.float64)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = encode_pairs(
                self.tokenizer, [queries[i] for i in rows], [texts[i] for i in rows]
            )
            logits[rows] = self.scorer.run(batch)
        return 1.0 / (1.0 + np.exp(-logits))


def latency_ms_per_pair(score_rows: Callable[[slice], Any], pairs: int, batch_size: int) -> float:
    """Milliseconds per pair to score ``pairs`` pairs in batches (after one warm-up batch).

    ``score_rows(rows)`` scores the pairs ``rows`` (a slice) of a fixed sample.
    """
    score_rows(slice(0, batch_size))
    started = time.perf_counter()
    for start in range(0, pairs, batch_size):
        score_rows(slice(start, min(pairs, start + batch_size)))
    return (time.perf_counter() - started) * 1000.0 / max(1, pairs)


# --------------------------------------------------------------------------- report

STUDENT_ROW_PREFIX = "student: "


def student_row_name(run: str) -> str:
    """The table row of the student run ``run``."""
    return f"{STUDENT_ROW_PREFIX}{run}"


def committee_row_name(run: str) -> str:
    """The table row of the committee that labeled the augmentation of student run ``run``."""
    return f"committee teacher of {run}"


@dataclass
class SystemResult:
    """One row of the evaluation table."""

    name: str
    kind: str  # baseline | student | teacher | committee | package
    metrics: dict[str, float]
    slices: dict[str, dict[str, float]]
    latency_ms_per_pair: float | None = None
    augment_pairs: int | None = None
    labels_from: str | None = None  # teacher | committee | None (human labels only)
    validation_pairwise_accuracy: float | None = None
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "augment_pairs": self.augment_pairs,
            "labels_from": self.labels_from,
            "metrics": self.metrics,
            "slices": self.slices,
            "latency_ms_per_pair": self.latency_ms_per_pair,
            "validation_pairwise_accuracy": self.validation_pairwise_accuracy,
            "notes": self.notes,
        }


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _table(systems: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| system | augmented pairs | pairwise acc. | NDCG@5 | NDCG@10 | Spearman (human) "
        "| Spearman (teacher) | class acc. | macro-F1 | ms / pair | val. pairwise acc. |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in systems:
        m = system["metrics"]
        aug = system["augment_pairs"]
        lines.append(
            f"| {system['name']} | {'' if aug is None else f'{aug:,}'} | "
            f"{_fmt(m.get('pairwise_accuracy'))} | {_fmt(m.get('ndcg@5'))} | "
            f"{_fmt(m.get('ndcg@10'))} | "
            f"{_fmt(m.get('spearman_human'))} | {_fmt(m.get('spearman_teacher'))} | "
            f"{_fmt(m.get('class_accuracy'))} | {_fmt(m.get('macro_f1'))} | "
            f"{_fmt(system['latency_ms_per_pair'], 3)} | "
            f"{_fmt(system['validation_pairwise_accuracy'])} |"
        )
    return lines


def render_markdown(results: dict[str, Any], plot_name: str | None) -> str:
    """The evaluation report: tables, slices, the curve, findings and the reproducing command."""
    systems = results["systems"]
    subset = results.get("teacher_subset")
    lines = [
        "# Evaluation",
        "",
        f"Held-out **{results['split']}** queries of `{results['data']['file']}` "
        f"(SHA-256 `{results['data']['sha256'][:12]}…`): {results['pairs']} pairs, "
        f"{results['queries']} queries. The split is by query, so no evaluated query occurs "
        "in training, and the augmentation set leaves out every held-out query. "
        "Every number below comes from:",
        "",
        "```",
        results["command"],
        "```",
        "",
        "Pairwise accuracy (item pairs of one query with different human grades, share "
        "ordered correctly, ties count half; random = 0.5) and Spearman are the primary "
        "figures: candidate lists are short (median 7 items), so NDCG is high even for a "
        "random order. Class accuracy / macro-F1 (grade <= 1.5 irrelevant, <= 2.5 partial, "
        "else exact; score thresholds 0.25 / 0.75) apply to scores on the [0, 1] relevance "
        "scale only. Spearman (teacher) is measured on the pairs the teacher labeled. "
        f"Latency: {results['latency']['description']} Students were selected on "
        "validation pairwise accuracy (last column), never on the test split.",
        "",
        f"## All {results['split']} queries",
        "",
        *_table(systems),
    ]
    if subset:
        lines += [
            "",
            f"## Teacher-labeled sample ({subset['queries']} queries, {subset['pairs']} pairs)",
            "",
            "The teacher is slow on a CPU, so it labeled a fixed sample of the "
            f"{results['split']} queries; this table compares every system on that sample.",
            "",
            *_table(subset["systems"]),
        ]
    notes = [f"- **{s['name']}**: {s['notes']}" for s in systems if s["notes"]]
    if subset:
        notes += [
            f"- **{s['name']}**: {s['notes']}"
            for s in subset["systems"]
            if s["kind"] == "teacher" and s["notes"]
        ]
    if notes:
        lines += ["", *notes]
    slice_names = list(results["slices"])
    lines += [
        "",
        "## Long-tail slices",
        "",
        *(
            f"- `{name}`: {text} ({results['slice_sizes'][name]} queries)"
            for name, text in results["slices"].items()
        ),
        "",
        "Pairwise accuracy / Spearman with the human grades, per slice:",
        "",
        "| system | " + " | ".join(slice_names) + " |",
        "|---|" + "---:|" * len(slice_names),
    ]
    for system in systems:
        cells = [
            f"{_fmt(cell['pairwise_accuracy'], 3)} / {_fmt(cell['spearman_human'], 3)}"
            for cell in (system["slices"][n] for n in slice_names)
        ]
        lines.append(f"| {system['name']} | " + " | ".join(cells) + " |")
    if plot_name:
        lines += [
            "",
            "## Student pairwise accuracy against augmentation size",
            "",
            f"![student pairwise accuracy vs augmentation size]({plot_name})",
        ]
    if results.get("findings"):
        lines += ["", "## Findings", "", *(f"- {f}" for f in results["findings"])]
    return "\n".join(lines) + "\n"


def findings(results: dict[str, Any]) -> list[str]:
    """The claims the issue asks to check, stated with the numbers, whichever way they go.

    Comparisons with the teacher use the teacher-labeled sample when there is one (the
    same pairs for both); the others use the whole split.
    """
    systems = results["systems"]
    subset = results.get("teacher_subset")
    students = [s for s in systems if s["kind"] == "student"]
    distilled = [s for s in students if s["augment_pairs"]]
    human = [s for s in students if not s["augment_pairs"]]
    if not distilled:
        return ["No distilled student was evaluated."]
    best = max(distilled, key=lambda s: s["validation_pairwise_accuracy"] or -1.0)
    acc = {s["name"]: s["metrics"]["pairwise_accuracy"] for s in systems}
    b = acc[best["name"]]
    source = "a committee of students" if best.get("labels_from") == "committee" else "the teacher"
    out = [
        f"Distilled student chosen on validation: {best['name']} (augmentation labeled by "
        f"{source}; pairwise accuracy {b:.4f})."
    ]
    if human:
        h = acc[human[0]["name"]]
        verdict = "beats" if b > h else "does not beat"
        out.append(f"vs the human-labels-only student ({h:.4f}): {b - h:+.4f}, {verdict} it.")
    if "BM25" in acc:
        m = acc["BM25"]
        verdict = "meets" if b - m >= 0.05 else "misses"
        out.append(f"vs BM25 ({m:.4f}): {b - m:+.4f}, {verdict} the +0.05 target.")
    if best.get("labels_from") == "committee":
        committee = committee_row_name(best["name"].removeprefix(STUDENT_ROW_PREFIX))
        if committee in acc:
            c = acc[committee]
            out.append(f"vs its committee teacher ({c:.4f}): {b - c:+.4f}.")
    pool = subset["systems"] if subset else systems
    teacher = [s for s in pool if s["kind"] == "teacher"]
    if teacher:
        t = teacher[0]["metrics"]["pairwise_accuracy"]
        on_pool = {s["name"]: s["metrics"]["pairwise_accuracy"] for s in pool}[best["name"]]
        where = "on the teacher-labeled sample" if subset else "on the whole split"
        verdict = "within 0.01 or better" if on_pool >= t - 0.01 else "more than 0.01 below"
        out.append(
            f"vs the teacher {where}: student {on_pool:.4f}, teacher {t:.4f}, "
            f"{on_pool - t:+.4f}, {verdict}."
        )
        t_ms, s_ms = teacher[0]["latency_ms_per_pair"], best["latency_ms_per_pair"]
        if t_ms and s_ms:
            verdict = "meets" if t_ms / s_ms >= 20 else "misses"
            out.append(
                f"Cost per pair on the same CPU: teacher {t_ms:.2f} ms, student (PyTorch FP32) "
                f"{s_ms:.2f} ms, {t_ms / s_ms:.1f}× cheaper ({verdict} the 20× target)."
            )
        served = [s for s in systems if s["kind"] == "package" and s["latency_ms_per_pair"]]
        if t_ms and served:
            p_ms = served[0]["latency_ms_per_pair"]
            out.append(f"{served[0]['name']}: {p_ms:.2f} ms per pair, {t_ms / p_ms:.1f}× cheaper.")
    return out


def plot_curve(results: dict[str, Any], path: Path) -> Path:
    """Student pairwise accuracy against augmentation size; teacher and BM25 as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    def students(systems: list[dict[str, Any]], committee: bool) -> list[dict[str, Any]]:
        # The curve is the LLM teacher's (human-only is its size 0); committee students
        # learned from other labels, so they are points of their own.
        chosen = [
            s
            for s in systems
            if s["kind"] == "student" and (s.get("labels_from") == "committee") == committee
        ]
        return sorted(chosen, key=lambda s: s["augment_pairs"] or 0)

    def line(ax: Any, systems: list[dict[str, Any]], label: str, style: str) -> None:
        for committee in (False, True):
            rows = students(systems, committee)
            if rows:
                ax.plot(
                    [s["augment_pairs"] or 0 for s in rows],
                    [s["metrics"]["pairwise_accuracy"] for s in rows],
                    style if not committee else "",
                    marker="o" if not committee else "*",
                    markersize=6 if not committee else 12,
                    label=label if not committee else f"{label}, committee labels",
                )

    subset = results.get("teacher_subset")
    split = results["split"]
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=120)
    line(ax, results["systems"], f"student, all {split} queries", "-")
    if subset:
        line(ax, subset["systems"], f"student, teacher-labeled {split} sample", "--")
    teacher = [s for s in (subset or results)["systems"] if s["kind"] == "teacher"]
    if teacher:
        where = f"teacher-labeled {split} sample" if subset else f"all {split} queries"
        ax.axhline(
            teacher[0]["metrics"]["pairwise_accuracy"],
            color="tab:red",
            label=f"teacher, {where}",
        )
    for committee in (s for s in results["systems"] if s["kind"] == "committee"):
        ax.axhline(
            committee["metrics"]["pairwise_accuracy"],
            color="tab:green",
            linestyle="--",
            label=f"{committee['name']}, all {split} queries",
        )
    bm25 = [s for s in results["systems"] if s["name"] == "BM25"]
    if bm25:
        ax.axhline(
            bm25[0]["metrics"]["pairwise_accuracy"],
            color="tab:gray",
            linestyle=":",
            label=f"BM25, all {split} queries",
        )
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlabel("labeled augmentation pairs (0 = human labels only)")
    ax.set_ylabel("pairwise accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
