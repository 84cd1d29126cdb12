"""The evaluation report: row names, result rows, the markdown tables, findings and the curve.

The results JSON (``runs/evaluation/<split>.json``) is read back only through this
module (:func:`manifest_evaluation`), which knows how its rows are named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.evaluation.cascade import report_lines as cascade_lines

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
    kind: str  # baseline | student | representation | teacher | committee | package
    metrics: dict[str, float]
    slices: dict[str, dict[str, float]]
    latency_ms_per_pair: float | None = None
    # Representation students: the same pairs with the item vectors already stored (only
    # the query encoding and the interaction timed); ``latency_ms_per_pair`` encodes both.
    latency_cached_ms_per_pair: float | None = None
    augment_pairs: int | None = None
    labels_from: str | None = None  # teacher | committee | None (human labels only)
    validation_pairwise_accuracy: float | None = None
    notes: str = ""
    # Share of the validation queries' random negatives scored below the irrelevant
    # threshold (systems on the [0, 1] scale only).
    negatives_irrelevant_share: float | None = None
    # Set when the latency is a stored result's (timed that day, maybe on another machine).
    latency_measured_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "augment_pairs": self.augment_pairs,
            "labels_from": self.labels_from,
            "metrics": self.metrics,
            "slices": self.slices,
            "latency_ms_per_pair": self.latency_ms_per_pair,
            **(
                {"latency_cached_ms_per_pair": self.latency_cached_ms_per_pair}
                if self.latency_cached_ms_per_pair is not None
                else {}
            ),
            "validation_pairwise_accuracy": self.validation_pairwise_accuracy,
            "negatives_irrelevant_share": self.negatives_irrelevant_share,
            **(
                {"latency_measured_at": self.latency_measured_at}
                if self.latency_measured_at is not None
                else {}
            ),
            "notes": self.notes,
        }


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _table(systems: list[dict[str, Any]], negatives: bool = False) -> list[str]:
    """The metrics table; ``negatives`` adds the random-negatives column."""
    extra = " random neg. irrelevant |" if negatives else ""
    lines = [
        "| system | augmented pairs | pairwise acc. | NDCG@5 | NDCG@10 | Spearman (human) "
        "| Spearman (teacher) | class acc. | macro-F1 | ms / pair | val. pairwise acc. |" + extra,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if negatives else ""),
    ]
    for system in systems:
        m = system["metrics"]
        aug = system["augment_pairs"]
        cell = f" {_share(system.get('negatives_irrelevant_share'))} |" if negatives else ""
        lines.append(
            f"| {system['name']} | {'' if aug is None else f'{aug:,}'} | "
            f"{_fmt(m.get('pairwise_accuracy'))} | {_fmt(m.get('ndcg@5'))} | "
            f"{_fmt(m.get('ndcg@10'))} | "
            f"{_fmt(m.get('spearman_human'))} | {_fmt(m.get('spearman_teacher'))} | "
            f"{_fmt(m.get('class_accuracy'))} | {_fmt(m.get('macro_f1'))} | "
            f"{_fmt(system['latency_ms_per_pair'], 3)} | "
            f"{_fmt(system['validation_pairwise_accuracy'])} |" + cell
        )
    return lines


def _negatives_lines(results: dict[str, Any]) -> list[str]:
    """What the random-negatives column counts, and which systems miss the target."""
    negatives = results.get("negatives")
    if not negatives or not negatives.get("pairs"):
        return []
    target = negatives["target"]
    missing = [
        s["name"]
        for s in results["systems"]
        if s.get("negatives_irrelevant_share") is not None
        and s["negatives_irrelevant_share"] < target
    ]
    return [
        "",
        f"Random negatives: {negatives['pairs']:,} (validation query, random catalogue title) "
        f"pairs, {negatives['per_query']} never-judged products per query for "
        f"{negatives['queries']:,} queries (seed {negatives['seed']}); the column is the share "
        f"scored below {negatives['threshold']} (irrelevant), target {100 * target:.0f}%, for "
        "systems on the [0, 1] scale. "
        + (
            "Below the target: " + ", ".join(missing) + "."
            if missing
            else "Every such system meets it."
        ),
    ]


def _ensemble_lines(record: dict[str, Any] | None) -> list[str]:
    """Each member, the ensemble and the ensemble without the LLM, on validation and test."""
    if not record:
        return []
    weights = ", ".join(f"{k} {w:.2f}" for k, w in record["ensemble"]["weights"].items())
    without = ", ".join(f"{k} {w:.2f}" for k, w in record["without_llm"]["weights"].items())
    lines = [
        "",
        "## Teacher ensemble",
        "",
        f"`{record['id']}`: z-scored members mixed with simplex-grid weights ({weights}; "
        f"without the LLM: {without}) and mapped onto [0, 1] by an isotonic fit, all on the "
        "whole validation split only, so its validation figures are in-sample and test is "
        "the held-out check. Pairwise accuracy:",
        "",
        "| system | validation | test |",
        "|---|---:|---:|",
    ]
    for row in record["table"]:
        lines.append(f"| {row['system']} | {_fmt(row['validation'])} | {_fmt(row['test'])} |")
    decision = record["decision"]
    lines += ["", f"**{record['verdict']}**", "", f"Rule: {decision['rule']}."]
    return lines


def _curve_lines(runs: dict[str, Any] | None) -> list[str]:
    """The augmentation curve per size with each seed, their mean and spread."""
    curve = (runs or {}).get("curve") or []
    if not curve:
        return []
    lines = [
        "",
        "### Augmentation curve, per seed",
        "",
        "| augmented pairs | seeds | test pairwise acc. (each seed) | test mean | test spread "
        "| val. mean | val. spread |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for point in curve:
        seeds = ", ".join(
            f"{_fmt(s['test_pairwise_accuracy'])} (seed {s['seed']})" for s in point["seeds"]
        )
        lines.append(
            f"| {point['augment_pairs']:,} | {len(point['seeds'])} | {seeds} | "
            f"{_fmt(point['test_mean'])} | {_fmt(point['test_spread'])} | "
            f"{_fmt(point['validation_mean'])} | {_fmt(point['validation_spread'])} |"
        )
    noise = runs.get("seed_noise") or {}  # type: ignore[union-attr]
    if noise.get("test") is not None:
        lines += [
            "",
            f"Noise between two trainings (largest spread of seeds at one size): test "
            f"{_fmt(noise['test'])}, validation {_fmt(noise.get('validation'))}.",
        ]
    return lines


def _frontier_lines(frontier: dict[str, Any] | None, split: str, plot: str | None) -> list[str]:
    """The frontier table, its plot and the default-package rule with its choice."""
    if not frontier:
        return []
    lines = [
        "",
        "## Quality / latency frontier",
        "",
        f"{split.title()} pairwise accuracy against measured cost per pair. Students: their "
        "served variant (ONNX) exported and timed on the same validation pairs, accuracy of "
        "that same graph on the whole split; how each cost was measured is in its row.",
        "",
        f"| system | layers | {split} pairwise acc. | val. pairwise acc. | ms / pair "
        f"| {frontier['slo_items']} items, ms | cost measured as | notes |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for p in sorted(frontier["points"], key=lambda p: p["ms_per_pair"] or math.inf):
        chosen = p["run"] is not None and p["run"] == frontier["choice"]
        request = None if p["ms_per_pair"] is None else p["ms_per_pair"] * frontier["slo_items"]
        lines.append(
            f"| {'**' + p['name'] + '** (default)' if chosen else p['name']} | "
            f"{'' if p['layers'] is None else p['layers']} | "
            f"{_fmt(p['test_pairwise_accuracy'])} | {_fmt(p['validation_pairwise_accuracy'])} | "
            f"{_fmt(p['ms_per_pair'], 3)} | {_fmt(request, 0)} | {p['cost']} | {p['notes']} |"
        )
    if plot:
        lines += ["", f"![test pairwise accuracy vs cost per pair]({plot})"]
    chosen = frontier["choice"] or "none (no student fits the budget)"
    lines += ["", f"Default package rule: {frontier['rule']}. Choice: **{chosen}**."]
    return lines


def render_markdown(
    results: dict[str, Any], plot_name: str | None, frontier_plot: str | None = None
) -> str:
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
        *_table(systems, negatives=bool((results.get("negatives") or {}).get("pairs"))),
        *_negatives_lines(results),
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
    lines += _ensemble_lines(results.get("ensemble"))
    if plot_name:
        lines += [
            "",
            "## Student pairwise accuracy against augmentation size",
            "",
            f"![student pairwise accuracy vs augmentation size]({plot_name})",
        ]
    lines += _curve_lines(results.get("student_runs"))
    lines += _frontier_lines(results.get("frontier"), results["split"], frontier_plot)
    lines += cascade_lines(results.get("cascade"))
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
        t_at, s_at = teacher[0].get("latency_measured_at"), best.get("latency_measured_at")
        if t_ms and s_ms and t_at == s_at:
            verdict = "meets" if t_ms / s_ms >= 20 else "misses"
            out.append(
                f"Cost per pair on the same CPU: teacher {t_ms:.2f} ms, student (PyTorch FP32) "
                f"{s_ms:.2f} ms, {t_ms / s_ms:.1f}× cheaper ({verdict} the 20× target)."
            )
        elif t_ms and s_ms:
            # A stored result's timing and one of this run: not a ratio of one machine.
            out.append(
                f"Cost per pair, not side by side: teacher {t_ms:.2f} ms "
                f"({'timed in this run' if t_at is None else 'timed ' + t_at}), student "
                f"(PyTorch FP32) {s_ms:.2f} ms "
                f"({'timed in this run' if s_at is None else 'timed ' + s_at}, a stored "
                "result); the served package's ratio below is of one run."
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

    def line(
        ax: Any, systems: list[dict[str, Any]], label: str, style: str, plain: bool = True
    ) -> None:
        for committee in (False, True) if plain else (True,):
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
    # With per-seed results (training.recipe), the curve is the mean of the seeds at each
    # size and every seed a point of its own, so the noise between trainings shows.
    curve = (results.get("student_runs") or {}).get("curve") or []
    label = f"student, all {split} queries"
    line(ax, results["systems"], label, "-", plain=not curve)
    if curve:
        sizes = [c["augment_pairs"] for c in curve]
        ax.plot(sizes, [c["test_mean"] for c in curve], "-o", label=f"{label} (mean of seeds)")
        seeds = [
            (c["augment_pairs"], s["test_pairwise_accuracy"]) for c in curve for s in c["seeds"]
        ]
        ax.scatter(*zip(*seeds, strict=True), marker="x", color="tab:blue", label="each seed")
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


def manifest_evaluation(results: dict[str, Any], run: str) -> dict[str, Any]:
    """What a package manifest records of an evaluation: the exported run's row and baselines."""
    rows = {s["name"]: s for s in results["systems"]}
    student_row = rows.get(student_row_name(run), {})
    return {
        "split": results["split"],
        "pairs": results["pairs"],
        "queries": results["queries"],
        "report": "docs/evaluation.md",
        "student": student_row.get("metrics"),
        "student_latency_ms_per_pair": student_row.get("latency_ms_per_pair"),
        "baselines": {
            s["name"]: s["metrics"]
            for s in results["systems"]
            if s["kind"] in ("baseline", "teacher")
        },
    }
