"""Labeled query-product pairs: typed loading, cleaning and a deterministic split by query."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DATA_PATH = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "homedepot" / "train.csv"
)
REQUIRED_COLUMNS = ("product_uid", "product_title", "search_term", "relevance")
SPLITS = ("train", "validation", "test")
MIN_GRADE, MAX_GRADE = 1.0, 3.0

_WHITESPACE = re.compile(r"\s+")


class DataError(ValueError):
    """The labeled data file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class SplitFractions:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1


def normalize_text(text: str) -> str:
    """Collapse whitespace; queries are also compared lower-cased (see :func:`query_key`)."""
    return _WHITESPACE.sub(" ", str(text)).strip()


def query_key(query: str) -> str:
    """The identity of a query for splitting and caching: lower-cased, whitespace-collapsed."""
    return normalize_text(query).lower()


def grade_to_score(grade: np.ndarray | pd.Series | float) -> np.ndarray | pd.Series | float:
    """Map the 1..3 human grade to the [0, 1] score scale the models predict."""
    return (grade - MIN_GRADE) / (MAX_GRADE - MIN_GRADE)


def load_labeled(path: str | Path = DEFAULT_DATA_PATH) -> pd.DataFrame:
    """Load and clean the human-labeled pairs.

    Returns columns ``query``, ``query_key``, ``product_id`` (str), ``title``, ``grade``
    (float in [1, 3]). Rows with empty text or an unparseable grade are dropped; repeated
    (query, product) judgements are averaged.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labeled data file not found: {path}")
    try:
        raw = pd.read_csv(path, dtype={"product_uid": str}, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot parse labeled data file {path}: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"labeled data file {path} lacks columns {missing}")
    frame = pd.DataFrame(
        {
            "query": raw["search_term"].fillna("").map(normalize_text),
            "product_id": raw["product_uid"].fillna("").map(normalize_text),
            "title": raw["product_title"].fillna("").map(normalize_text),
            "grade": pd.to_numeric(raw["relevance"], errors="coerce"),
        }
    )
    frame = frame[(frame["query"] != "") & (frame["title"] != "") & (frame["product_id"] != "")]
    frame = frame[frame["grade"].between(MIN_GRADE, MAX_GRADE)]
    if frame.empty:
        raise DataError(f"labeled data file {path} has no usable rows")
    frame = frame.assign(query_key=frame["query"].map(query_key))
    frame = (
        frame.groupby(["query_key", "product_id"], sort=True, as_index=False)
        .agg(query=("query", "first"), title=("title", "first"), grade=("grade", "mean"))
        .loc[:, ["query", "query_key", "product_id", "title", "grade"]]
    )
    return frame.reset_index(drop=True)


def assign_split(key: str, seed: int, fractions: SplitFractions = SplitFractions()) -> str:
    """Deterministic split of one query: a hash of the query, not its row position."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < fractions.train:
        return "train"
    if position < fractions.train + fractions.validation:
        return "validation"
    return "test"


def split_by_query(
    frame: pd.DataFrame, seed: int = 13, fractions: SplitFractions = SplitFractions()
) -> dict[str, pd.DataFrame]:
    """Split labeled pairs into train/validation/test so that no query is in two splits."""
    splits = frame["query_key"].map(lambda key: assign_split(key, seed, fractions))
    return {name: frame[splits == name].reset_index(drop=True) for name in SPLITS}


def catalogue(frame: pd.DataFrame) -> pd.DataFrame:
    """Every distinct product (id, title), labeled or not: what augmentation draws from."""
    return (
        frame.drop_duplicates("product_id")
        .loc[:, ["product_id", "title"]]
        .sort_values("product_id")
        .reset_index(drop=True)
    )


def query_subset(frame: pd.DataFrame, n_queries: int, seed: int = 13) -> pd.DataFrame:
    """A deterministic sample of whole queries (the slow teacher scores only these)."""
    keys = sorted(
        frame["query_key"].unique(),
        key=lambda k: hashlib.sha256(f"subset:{seed}:{k}".encode()).hexdigest(),
    )[:n_queries]
    return frame[frame["query_key"].isin(set(keys))].reset_index(drop=True)
