"""Catalogue preload for the representation student's item store.

``RELEVANCE_ITEM_PRELOAD=catalogue.csv|.jsonl`` makes the service encode a catalogue into
its item store during warm-up, with a progress bar on stderr; ``/readyz`` answers ready
only once it is done. ``python -m service.preload CATALOGUE --model DIR`` does the same
in a process of its own and prints what it cost (items, seconds, bytes held, bytes per
item): a dry run that sizes ``RELEVANCE_ITEM_STORE_MB`` before a deployment.

Catalogue formats (one item per row; an item found twice is encoded once):

- CSV with a header: the text from ``text`` (else ``product_title``, else ``title``); the
  id from ``product_uid`` (else ``id``, else none). The Home Depot ``train.csv`` works
  as is (``product_uid``, ``product_title``; its ``id`` is a row number, not a product).
- JSONL: one JSON object per line, ``{"text": ..., "id": ...}`` (``id`` optional), or a
  plain JSON string: the shape of ``/score``'s items.

Items are stored under (package, id, text), as requests look them up: a preloaded item is
found by a request that sends the same id and text (``/score`` items), or the same text
and no id (the rerank routes, ``/score`` plain strings) when the catalogue has no ids.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

TEXT_COLUMNS = ("text", "product_title", "title")
ID_COLUMNS = ("product_uid", "id")


class CatalogueError(ValueError):
    """A catalogue file that cannot be read; the message names the file and line."""


def read_catalogue(path: str | Path) -> list[tuple[str | None, str]]:
    """``(id or None, text)`` of each distinct item of a ``.csv`` or ``.jsonl`` file."""
    path = Path(path)
    if not path.is_file():
        raise CatalogueError(f"{path}: catalogue file does not exist")
    if path.suffix.lower() == ".csv":
        rows = _read_csv(path)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = _read_jsonl(path)
    else:
        raise CatalogueError(f"{path}: expected a .csv or .jsonl catalogue")
    return list(dict.fromkeys(rows))


def _read_csv(path: Path) -> list[tuple[str | None, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        text_col = next((c for c in TEXT_COLUMNS if c in header), None)
        if text_col is None:
            raise CatalogueError(f"{path}: no text column (one of {list(TEXT_COLUMNS)})")
        id_col = next((c for c in ID_COLUMNS if c in header), None)
        rows = []
        for line, row in enumerate(reader, start=2):
            text = (row.get(text_col) or "").strip()
            if not text:
                raise CatalogueError(f"{path}:{line}: empty {text_col}")
            item_id = (row.get(id_col) or None) if id_col else None
            rows.append((item_id, text))
    return rows


def _read_jsonl(path: Path) -> list[tuple[str | None, str]]:
    rows: list[tuple[str | None, str]] = []
    with open(path, encoding="utf-8") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise CatalogueError(f"{path}:{line}: not JSON ({exc})") from None
            if isinstance(value, str):
                value = {"text": value}
            text = value.get("text") if isinstance(value, dict) else None
            item_id = value.get("id") if isinstance(value, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise CatalogueError(f"{path}:{line}: expected a non-empty string 'text'")
            if item_id is not None and not isinstance(item_id, str):
                raise CatalogueError(f"{path}:{line}: 'id' must be a string")
            rows.append((item_id, text))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Encode a catalogue into a fresh item store and print what it cost."""
    from prometheus_client import CollectorRegistry

    from service.metrics import Metrics
    from service.representation_engine import RepresentationEngine
    from service.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m service.preload", description=__doc__)
    parser.add_argument("catalogue", type=Path, help=".csv or .jsonl catalogue")
    parser.add_argument("--model", type=Path, help="representation package (RELEVANCE_MODEL_DIR)")
    args = parser.parse_args(argv)
    settings = Settings(**({"model_dir": args.model} if args.model else {}))
    items = read_catalogue(args.catalogue)
    engine = RepresentationEngine.from_package_dir(
        settings.model_dir,
        Metrics(CollectorRegistry()),
        variant=settings.variant,
        intra_op_threads=settings.intra_op_threads or 0,
        store_bytes=int(settings.item_store_mb * 1024 * 1024),
        warmup=False,
    )

    async def run() -> tuple[int, float]:
        await engine.start()
        try:
            began = time.monotonic()
            count = await engine.preload(items, progress=True)
            return count, time.monotonic() - began
        finally:
            await engine.stop()

    count, seconds = asyncio.run(run())
    store = engine.store
    print(
        json.dumps(
            {
                "catalogue": str(args.catalogue),
                "items": len(items),
                "encoded": count,
                "seconds": round(seconds, 2),
                "items_per_s": round(count / seconds, 1) if seconds else None,
                "stored": len(store),
                "store_bytes": store.bytes,
                "bytes_per_item": round(store.bytes / len(store), 1) if len(store) else None,
                "max_bytes": store.max_bytes,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
