"""Resident memory of a representation server after preloading N catalogue items.

``python -m loadtest.preload_memory --items 20000 [--env NAME=VALUE ...]`` starts the
service on the representation package (score cache off, no cascade) with the first N
distinct Home Depot titles as its preload catalogue (none for ``--items 0``), waits for
``/readyz`` and prints its RSS and the item store's own estimate. Run it with 0 and with N
items to see what a catalogue costs beyond the store (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from loadtest.procstats import snapshot
from loadtest.representation_bench import start_service, unique_titles, write_catalogue
from loadtest.servers import running
from loadtest.workload import Catalogue


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.preload_memory")
    parser.add_argument(
        "--model", type=Path, default=Path("models/minilm-homedepot-representation")
    )
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--data", type=Path, default=None, help="Home Depot train.csv")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    work = Path(tempfile.mkdtemp(prefix="preload-memory-"))
    env = {"RELEVANCE_ITEM_STORE_MB": "4096", **extra}
    if args.items:
        titles = unique_titles(Catalogue.load(args.data), args.items)
        env["RELEVANCE_ITEM_PRELOAD"] = str(write_catalogue(work / "catalogue.jsonl", titles))
    server = start_service(args.model, env, work, "preload")
    with running(server, "/readyz", 600 + args.items / 50) as live:
        time.sleep(2)
        rss = snapshot(live.process.pid)
        store = httpx.get(live.url + "/info", trust_env=False).json()["model"]["item_store"]
    print(
        json.dumps(
            {
                "items": args.items,
                "env": extra,
                "rss_mib": rss.rss_mib if rss else None,
                "store_mb": round(store["bytes"] / 1e6, 1),
                "store_entries": store["entries"],
            }
        )
    )


if __name__ == "__main__":
    main()
