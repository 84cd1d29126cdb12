"""``python -m service --host H --port P --model DIR``: serve a model package with uvicorn.

Flags override the ``RELEVANCE_*`` environment; everything else is set through it.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.model_package import ModelPackageError
from service.representation_package import load_any_package
from service.settings import Settings

# uvicorn's exit status for a failed startup; kept for a package refused before it.
EXIT_STARTUP_FAILED = 3


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


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def verify_package(settings: Settings) -> None:
    """Refuse to start, with one clear line and no traceback, when a package is unusable
    (each of RELEVANCE_MODELS in the models directory, else RELEVANCE_MODEL_DIR)."""
    dirs = [settings.models_dir / p for p in settings.models.values()] or [settings.model_dir]
    try:
        for path in dirs:
            load_any_package(path)
    except ModelPackageError as exc:
        logging.getLogger("service").error("cannot load the model package: %s", exc)
        sys.exit(EXIT_STARTUP_FAILED)


def serve(app: FastAPI, settings: Settings) -> None:
    """Run ``app`` under uvicorn with the settings' address, logging and graceful shutdown."""
    configure_logging(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # uvicorn takes whole seconds; rounding down would turn 0.5 s into "cancel at once".
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
    )


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv)
    configure_logging(settings)
    verify_package(settings)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
