"""``python -m service --host H --port P --model DIR``: serve a model package with uvicorn.

Flags override the ``RELEVANCE_*`` environment; everything else is set through it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from service.app import create_app
from service.settings import Settings


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the relevance model. Every setting is also an env var "
        "RELEVANCE_<NAME> (e.g. RELEVANCE_PROVIDER=cuda); flags win over the environment.",
    )
    parser.add_argument("--host", help="bind address (RELEVANCE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (RELEVANCE_PORT, default 8000)")
    parser.add_argument(
        "--model",
        type=Path,
        help="model package directory (RELEVANCE_MODEL_DIR, default models/minilm-homedepot)",
    )
    args = parser.parse_args(argv)
    flags = {"host": args.host, "port": args.port, "model_dir": args.model}
    return Settings(**{k: v for k, v in flags.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
    )


if __name__ == "__main__":
    main()
