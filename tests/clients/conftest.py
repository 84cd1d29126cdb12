"""The real service on a loopback port, for the client libraries' own HTTP stacks:
one ``python -m service`` on the tiny package per test module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.servers import free_port, running, service_argv, start_server

# Nothing reaches out: litellm reads its bundled model cost map instead of fetching one at
# import, and Haystack sends no telemetry.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"


@pytest.fixture(scope="module")
def service_url(
    tiny_model_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Base URL of ``python -m service`` serving the tiny package on 127.0.0.1."""
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith("RELEVANCE_"):
                env.delenv(name)
        server = start_server(
            "service",
            service_argv(tiny_model_package, port),
            port,
            log_dir=tmp_path_factory.mktemp("client-service"),
            # The clients name the production model; here the tiny package answers to it.
            env={"RELEVANCE_MODEL_ALIASES": "minilm-homedepot=tiny"},
        )
    with running(server, "/readyz", timeout_s=120):
        yield server.url
