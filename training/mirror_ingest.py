"""Mirrored live traffic as teacher labels: ``python -m training ingest-mirror FILE...``.

The service's shadow (``service/shadow.py``) appends one JSON line per mirrored pair:
``{query, text, item_id, teacher_score, student_score, teacher[, teacher_version]}``.
Ingesting turns those lines into labeled pairs the next ``distill`` trains on:

1. **Validated**, line by line; a bad line is skipped and counted by reason
   (``malformed`` JSON, ``missing_field``, ``bad_score`` outside [0, 1] or not finite,
   ``blank_text``, ``bad_teacher``: a teacher name unfit for a directory name).
2. **Keyed by teacher**: ``<teacher>-<teacher_version>`` (just ``teacher`` when the name
   already ends with its version, as the real teacher's ``teacher_id`` does, or when the
   record has no version: records written before the field existed). Every teacher's
   pairs go to its own label directory, ``labels/<key>/``, next to that teacher's other
   labels; ``distill`` reads only the configured teacher's, so labels of another teacher
   are kept apart, never mixed in.
3. **Dropped and counted**: a pair whose query is a validation or test query
   (``eval_query``: never train on the evaluation splits), a pair with a human label
   (``human_labeled``), a pair the same teacher already labeled (``teacher_labeled``:
   its augmentation and split label files and earlier mirror files), and repeats within
   the input (``duplicate``; their teacher scores are averaged). Pairs are identified by
   the normalised query and the normalised item text, since a client's item id may be a
   position in its request.
4. **Held back**: a stable share of queries (``mirror.holdout``, by a hash of the query)
   is marked ``role = holdout``: the promotion gate's slice of live traffic, which
   ``distill`` never trains on.

What is left is written as ``labels/<key>/mirror-<version>.csv.gz`` (gzip, reproducible
bytes) with a ``mirror-<version>.json`` report beside it; the version is a hash of the
pairs, the data file and the hold-out settings. Re-ingesting the same files adds
nothing (every pair is then ``teacher_labeled``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from relevance_core.hashing import sha256_file
from training.artifacts import Dataset, PipelineError, load_dataset, teacher_label_id
from training.atomic import atomic_path
from training.config import TrainConfig
from training.data import normalize_text, query_key
from training.label import read_labels

logger = logging.getLogger(__name__)

MIRROR_PREFIX = "mirror-"
MIRROR_SUFFIX = ".csv.gz"
MIRROR_COLUMNS = (
    "query",
    "query_key",
    "product_id",
    "title",
    "text_key",
    "teacher_score",
    "student_score",
    "count",
    "role",
)
INVALID_REASONS = ("malformed", "missing_field", "bad_score", "blank_text", "bad_teacher")
DROP_REASONS = ("eval_query", "human_labeled", "teacher_labeled", "duplicate")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_EXAMPLES = 5  # invalid lines quoted in the log, per run


def text_key(text: str) -> str:
    """Identity of an item text: whitespace-collapsed, lower-cased (as queries are keyed)."""
    return normalize_text(text).lower()


def teacher_key(teacher: str, version: str | None) -> str:
    """The label key of a mirrored record's teacher (see the module docstring)."""
    if not version or version == "unknown" or teacher.endswith(f"-{version}"):
        return teacher
    return f"{teacher}-{version}"


def is_heldback(key: str, holdout: float, seed: int) -> bool:
    """Whether a query (its ``query_key``) belongs to the gate's held-back slice."""
    digest = hashlib.sha256(f"mirror-holdout:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < holdout


@dataclass
class ParsedRecords:
    """Valid records of the input files, and the invalid lines counted by reason."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def reject(self, reason: str, where: str, detail: str) -> None:
        self.invalid[reason] += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(f"{where}: {reason}: {detail}")


def _score(value: Any) -> float | None:
    """A score in [0, 1], or None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def parse_records(paths: Sequence[Path]) -> ParsedRecords:
    """Read and validate mirrored JSONL files (every line; bad ones counted, not fatal)."""
    parsed = ParsedRecords()
    for path in paths:
        if not Path(path).is_file():
            raise PipelineError(f"mirror file {path} does not exist")
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                parsed.lines += 1
                _parse_line(parsed, line, f"{path}:{number}")
    return parsed


def _parse_line(parsed: ParsedRecords, line: str, where: str) -> None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        parsed.reject("malformed", where, f"not JSON ({exc.msg})")
        return
    if not isinstance(record, dict):
        parsed.reject("malformed", where, "not a JSON object")
        return
    missing = [k for k in ("query", "text", "teacher_score", "teacher") if k not in record]
    if missing:
        parsed.reject("missing_field", where, f"no {', '.join(missing)}")
        return
    teacher_score = _score(record["teacher_score"])
    student = record.get("student_score")
    student_score = None if student is None else _score(student)
    if teacher_score is None or (student is not None and student_score is None):
        bad = "teacher_score" if teacher_score is None else "student_score"
        parsed.reject("bad_score", where, f"{bad}={record.get(bad)!r} is not in [0, 1]")
        return
    query, text = record["query"], record["text"]
    if (
        not isinstance(query, str)
        or not isinstance(text, str)
        or not query.strip()
        or not text.strip()
    ):
        parsed.reject("blank_text", where, "query and text must be non-blank strings")
        return
    version = record.get("teacher_version")
    teacher = record["teacher"]
    version = None if version is None else str(version)
    key = teacher_key(teacher, version) if isinstance(teacher, str) else ""
    if not _SAFE_NAME.match(key):
        parsed.reject("bad_teacher", where, f"teacher {teacher!r} cannot name a label directory")
        return
    item_id = record.get("item_id")
    parsed.rows.append(
        {
            "teacher_key": key,
            "query": normalize_text(query),
            "query_key": query_key(query),
            "product_id": str(item_id) if item_id is not None else "",
            "title": normalize_text(text),
            "text_key": text_key(text),
            "teacher_score": teacher_score,
            "student_score": math.nan if student_score is None else student_score,
        }
    )


def mirror_dir(config: TrainConfig, key: str) -> Path:
    return config.path("labels_dir") / key


def mirror_files(config: TrainConfig, key: str) -> list[Path]:
    """The ingested mirror label files of one teacher, by name."""
    return sorted(mirror_dir(config, key).glob(f"{MIRROR_PREFIX}*{MIRROR_SUFFIX}"))


def read_mirror(path: Path) -> pd.DataFrame:
    """One ingested mirror label file."""
    return pd.read_csv(
        path,
        dtype={"query": str, "query_key": str, "product_id": str, "title": str, "text_key": str},
        keep_default_na=False,
        na_values={"student_score": [""]},
    )


def _labeled_text_keys(config: TrainConfig, dataset: Dataset, key: str) -> set[tuple[str, str]]:
    """(query_key, text_key) of every pair the teacher ``key`` already labeled."""
    directory = mirror_dir(config, key)
    titles = dict(
        zip(dataset.products["product_id"], dataset.products["title"].map(text_key), strict=True)
    )
    done: set[tuple[str, str]] = set()
    for path in sorted(directory.glob("*.csv")):
        labels = read_labels(path)
        for qk, pid in zip(labels["query_key"], labels["product_id"], strict=True):
            if pid in titles:
                done.add((qk, titles[pid]))
    for path in mirror_files(config, key):
        frame = read_mirror(path)
        done.update(zip(frame["query_key"], frame["text_key"], strict=True))
    return done


def _dedupe(
    rows: pd.DataFrame,
    dataset: Dataset,
    already: set[tuple[str, str]],
    dropped: Counter[str],
) -> pd.DataFrame:
    """Rows of one teacher minus evaluation queries, human labels, known labels, repeats."""
    eval_queries = set(dataset.splits["validation"]["query_key"]) | set(
        dataset.splits["test"]["query_key"]
    )
    human = set(
        zip(dataset.labeled["query_key"], dataset.labeled["title"].map(text_key), strict=True)
    )
    pairs = list(zip(rows["query_key"], rows["text_key"], strict=True))
    is_eval = rows["query_key"].isin(eval_queries).to_numpy()
    is_human = pd.Series([p in human for p in pairs], index=rows.index).to_numpy() & ~is_eval
    is_known = (
        pd.Series([p in already for p in pairs], index=rows.index).to_numpy() & ~is_eval & ~is_human
    )
    dropped["eval_query"] += int(is_eval.sum())
    dropped["human_labeled"] += int(is_human.sum())
    dropped["teacher_labeled"] += int(is_known.sum())
    kept = rows[~(is_eval | is_human | is_known)]
    grouped = kept.groupby(["query_key", "text_key"], sort=True, as_index=False).agg(
        query=("query", "first"),
        product_id=("product_id", "first"),
        title=("title", "first"),
        teacher_score=("teacher_score", "mean"),
        student_score=("student_score", "mean"),
        count=("teacher_score", "size"),
    )
    dropped["duplicate"] += int(len(kept) - len(grouped))
    return grouped


def _version(key: str, frame: pd.DataFrame, dataset: Dataset, config: TrainConfig) -> str:
    identity = [
        key,
        dataset.sha256,
        config.mirror.holdout,
        config.mirror.seed,
        [
            (q, t, round(float(s), 6))
            for q, t, s in zip(
                frame["query_key"], frame["text_key"], frame["teacher_score"], strict=True
            )
        ],
    ]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]


def ingest_mirror(
    config: TrainConfig, paths: Sequence[Path], dataset: Dataset | None = None
) -> dict[str, Any]:
    """Ingest mirrored JSONL files; returns the report (also written beside each label file)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise PipelineError("ingest-mirror needs at least one mirrored JSONL file")
    dataset = dataset or load_dataset(config)
    parsed = parse_records(paths)
    for example in parsed.examples:
        logger.warning("skipped %s", example)
    try:
        configured: str | None = teacher_label_id(config)
    except PipelineError as exc:
        configured = None
        logger.warning("no configured teacher (%s): distill will use none of these pairs", exc)
    sources = [{"file": str(p), "sha256": sha256_file(p)} for p in paths]
    report: dict[str, Any] = {
        "lines": parsed.lines,
        "valid": len(parsed.rows),
        "invalid": {r: parsed.invalid.get(r, 0) for r in INVALID_REASONS},
        "dropped": dict.fromkeys(DROP_REASONS, 0),
        "configured_teacher": configured,
        "teachers": {},
        "sources": sources,
    }
    if not parsed.rows:
        logger.warning("no valid mirrored record in %s", [str(p) for p in paths])
        return report
    rows = pd.DataFrame(parsed.rows)
    total_dropped: Counter[str] = Counter()
    for key, group in rows.groupby("teacher_key", sort=True):
        dropped: Counter[str] = Counter()
        frame = _dedupe(group, dataset, _labeled_text_keys(config, dataset, key), dropped)
        total_dropped.update(dropped)
        frame["role"] = [
            "holdout" if is_heldback(k, config.mirror.holdout, config.mirror.seed) else "train"
            for k in frame["query_key"]
        ]
        entry: dict[str, Any] = {
            "records": len(group),
            "dropped": {r: dropped.get(r, 0) for r in DROP_REASONS},
            "pairs": len(frame),
            "train_pairs": int((frame["role"] == "train").sum()),
            "holdout_pairs": int((frame["role"] == "holdout").sum()),
            "queries": int(frame["query_key"].nunique()),
            "configured": key == configured,
            "file": None,
        }
        if len(frame):
            entry["file"] = str(_write(config, key, frame, dataset, entry, sources))
        report["teachers"][key] = entry
        logger.info(
            "teacher %s%s: %d records -> %d new pairs (%d train, %d held back; dropped %s) -> %s",
            key,
            "" if key == configured else " (not the configured teacher: kept apart)",
            len(group),
            entry["pairs"],
            entry["train_pairs"],
            entry["holdout_pairs"],
            entry["dropped"],
            entry["file"] or "nothing new",
        )
    report["dropped"] = {r: total_dropped.get(r, 0) for r in DROP_REASONS}
    return report


def _write(
    config: TrainConfig,
    key: str,
    frame: pd.DataFrame,
    dataset: Dataset,
    entry: dict[str, Any],
    sources: list[dict[str, str]],
) -> Path:
    version = _version(key, frame, dataset, config)
    directory = mirror_dir(config, key)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{MIRROR_PREFIX}{version}{MIRROR_SUFFIX}"
    # mtime 0: the same pairs give the same bytes, so the checksum names the content.
    with atomic_path(path) as tmp:
        frame.loc[:, list(MIRROR_COLUMNS)].to_csv(
            tmp, index=False, compression={"method": "gzip", "mtime": 0}
        )
    sidecar = {
        "version": version,
        "teacher": key,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data_sha256": dataset.sha256,
        "holdout": config.mirror.holdout,
        "seed": config.mirror.seed,
        "sha256": sha256_file(path),
        **{k: v for k, v in entry.items() if k != "file"},
        "sources": sources,
    }
    path.with_name(f"{MIRROR_PREFIX}{version}.json").write_text(
        json.dumps(sidecar, indent=2) + "\n"
    )
    return path


# --------------------------------------------------------------------------- readers


def _configured_files(config: TrainConfig) -> tuple[str, list[Path]] | None:
    try:
        key = teacher_label_id(config)
    except PipelineError:
        return None
    files = mirror_files(config, key)
    return (key, files) if files else None


def mirror_training_pairs(
    config: TrainConfig, dataset: Dataset
) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The configured teacher's ingested training pairs (never held-back ones) and their
    provenance; None when ``mirror.use`` is off or nothing is ingested."""
    found = _configured_files(config) if config.mirror.use else None
    if found is None:
        return None
    key, files = found
    eval_queries = set(dataset.splits["validation"]["query_key"]) | set(
        dataset.splits["test"]["query_key"]
    )
    parts, described = [], []
    for path in files:
        frame = read_mirror(path)
        train = frame[(frame["role"] == "train") & ~frame["query_key"].isin(eval_queries)]
        # Ingest dropped evaluation queries already; a changed data file or split can make
        # more of them, and those must not be trained on either.
        parts.append(train)
        described.append(
            {
                "file": f"{key}/{path.name}",
                "sha256": sha256_file(path),
                "train_pairs": len(train),
                "holdout_pairs": int((frame["role"] == "holdout").sum()),
            }
        )
    pairs = pd.concat(parts, ignore_index=True).drop_duplicates(["query_key", "text_key"])
    if pairs.empty:
        return None
    pairs = pairs.assign(source="mirror").loc[
        :, ["query", "query_key", "product_id", "title", "teacher_score", "source"]
    ]
    provenance = {"teacher_id": key, "pairs": len(pairs), "files": described}
    return pairs.reset_index(drop=True), provenance


def mirror_run_name(base: str, mirror_pairs: int) -> str:
    """A run that also trains on ``mirror_pairs`` ingested live pairs: ``<base>-mirror-n<N>``."""
    return f"{base}-mirror-n{mirror_pairs}"


def mirror_fingerprint(base: str, provenance: dict[str, Any]) -> str:
    """A run's fingerprint (``base``) extended by the mirror files it trains on; runs
    without mirror pairs keep theirs."""
    files = [[f["file"], f["sha256"]] for f in provenance["files"]]
    identity = json.dumps([base, provenance["teacher_id"], files])
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def heldback_pairs(config: TrainConfig, files: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """Held-back mirror pairs: of ``files`` (paths, or ``<teacher key>/<name>`` as the
    provenance names them), else of every file of the configured teacher."""
    if files is None:
        found = _configured_files(config)
        paths = found[1] if found else []
    else:
        labels_dir = config.path("labels_dir")
        paths = [Path(f) if Path(f).is_file() else labels_dir / f for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PipelineError(f"mirror label files not found: {missing}")
    frames = [read_mirror(p) for p in paths]
    if not frames:
        return pd.DataFrame(columns=list(MIRROR_COLUMNS))
    frame = pd.concat(frames, ignore_index=True)
    return frame[frame["role"] == "holdout"].drop_duplicates(["query_key", "text_key"])
