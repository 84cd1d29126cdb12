"""The model registry: choice (named, canary, default), leases across a swap, names.

Fake engines here: the registry is generic over the engine, and what is under test is
when an engine is started, switched to and stopped. The real engines' swap under
requests is in tests/service/api/test_models.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.errors import (
    Conflict,
    InvalidInput,
    ModelNotFound,
    PackageNotFound,
    PackageRefused,
)
from service.metrics import Metrics
from service.model_package import ModelPackageError
from service.models import ModelRegistry, canary_bucket, normalise_query


class FakeEngine:
    """Starts, warms up (at once, or never), stops; remembers which package it is."""

    def __init__(self, package: str, *, warms_up: bool = True) -> None:
        self.package = package
        self.status = "loaded"
        self._warms_up = warms_up
        self.stopped = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    async def start(self) -> None:
        self.status = "ready" if self._warms_up else "warmup_failed"

    async def wait_ready(self, timeout_s: float = 60.0) -> bool:
        return self.ready

    async def stop(self, timeout_s: float = 30.0) -> None:
        self.status = "stopped"
        self.stopped.set()

    def info(self) -> dict[str, Any]:
        return {"package": self.package}


def make_zoo(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).mkdir()
        (root / name / "manifest.json").write_text("{}")
    return root


def fake_loader(path: Path, previous: FakeEngine | None) -> tuple[FakeEngine, str]:
    if path.name == "corrupt":
        raise ModelPackageError(f"{path}/model.int8.onnx: SHA-256 mismatch")
    return FakeEngine(path.name, warms_up=path.name != "cold"), f"v-{path.name}"


def registry(root: Path, **kwargs: Any) -> ModelRegistry[FakeEngine]:
    metrics = Metrics(CollectorRegistry())
    return ModelRegistry(root, fake_loader, metrics, **kwargs)


def run(body: Any) -> Any:
    return asyncio.run(body())


def test_canary_bucket_is_stable_across_processes_and_normalised() -> None:
    query = "Cordless  DRILL ﬁxture"  # "ﬁ": a ligature NFKC spells "fi"
    assert normalise_query(query) == "cordless drill fixture"
    assert canary_bucket(query) == canary_bucket(" cordless drill FIXTURE ")
    code = "from service.models import canary_bucket; print(repr(canary_bucket('angle bracket')))"
    values = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert values == {repr(canary_bucket("angle bracket"))}


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5])
def test_canary_split_is_within_two_points_of_its_share(tmp_path: Path, share: float) -> None:
    models = registry(make_zoo(tmp_path, "a", "b"))

    async def body() -> None:
        await models.start(
            [("a", tmp_path / "a", "a"), ("b", tmp_path / "b", "b")], canary="b", canary_share=share
        )
        queries = [f"query {i} {i * 7919 % 1013}" for i in range(20_000)]
        routes = [models.choose(None, q) for q in queries]
        canary = sum(route == "canary" for _, route in routes)
        assert abs(canary / len(queries) - share) <= 0.02
        assert all(served.name == ("b" if route == "canary" else "a") for served, route in routes)
        # Sticky: the same query (however spaced or cased) always gets the same model.
        for q in queries[:200]:
            first = models.choose(None, q)[0].name
            assert models.choose(None, q.upper() + "  ")[0].name == first
        # Naming a model bypasses the split.
        assert {models.choose("a", q)[1] for q in queries[:200]} == {"named"}
        assert {models.choose("a", q)[0].name for q in queries[:200]} == {"a"}

    run(body)


def test_a_swap_waits_for_the_old_versions_leases_before_stopping_it(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    models = ModelRegistry(make_zoo(tmp_path, "one", "two"), fake_loader, metrics)

    async def body() -> None:
        await models.start([("m", tmp_path / "one", "one")])
        old = models.current("m")
        held = models.lease(None, "q")
        with held:
            served = await models.put("m", "two")
            # Switched: new requests get the new version, the held one keeps the old.
            assert models.current("m") is served and served.version == "v-two"
            assert models.choose(None, "q")[0] is served
            assert held.engine is old.engine and old.retired
            await asyncio.sleep(0.05)
            assert not old.engine.stopped.is_set()  # still in use
            assert [d["version"] for d in models.describe()["draining"]] == ["v-one"]
        await asyncio.wait_for(old.engine.stopped.wait(), 5)
        await asyncio.sleep(0)
        assert models.describe()["draining"] == []
        assert not served.engine.stopped.is_set()
        sample = metrics.registry.get_sample_value
        info = "relevance_served_model_info"
        assert sample(info, {"model": "m", "version": "v-one", "package": "one"}) is None
        assert sample(info, {"model": "m", "version": "v-two", "package": "two"}) == 1
        requests = {"model": "m", "version": "v-one", "route": "default"}
        assert sample("relevance_model_requests_total", requests) == 1
        await models.stop()

    run(body)


@pytest.mark.parametrize("package", ["corrupt", "cold"])
def test_a_refused_package_changes_nothing(tmp_path: Path, package: str) -> None:
    models = registry(make_zoo(tmp_path, "one", "corrupt", "cold"))

    async def body() -> None:
        await models.start([("m", tmp_path / "one", "one")])
        before = models.current("m")
        with pytest.raises(PackageRefused) as refused:
            await models.put("m", package)
        assert refused.value.field == "package"
        assert models.current("m") is before and before.engine.ready
        assert models.describe()["draining"] == []

    run(body)


@pytest.mark.parametrize(
    ("package", "refusal"),
    [
        *[(p, InvalidInput) for p in ("../one", "one/..", "/etc", "a/b", ".", "..", ".hidden")],
        *[(p, PackageNotFound) for p in ("missing", "afile", "out")],
    ],
)
def test_packages_are_names_of_directories_in_the_models_dir(
    tmp_path: Path, package: str, refusal: type[Exception]
) -> None:
    (tmp_path / "zoo").mkdir()
    zoo = make_zoo(tmp_path / "zoo", "one")
    (zoo / "afile").write_text("not a package")
    (tmp_path / "elsewhere").mkdir()
    (zoo / "out").symlink_to(tmp_path / "elsewhere")  # a directory, but not in the zoo
    models = registry(zoo)
    with pytest.raises(refusal) as refused:
        models.package_path(package)
    assert getattr(refused.value, "field", None) == "package"
    assert models.package_path("one") == zoo / "one"
    assert models.packages() == ["one"]


def test_unknown_names_are_404_listing_what_is_loaded(tmp_path: Path) -> None:
    models = registry(make_zoo(tmp_path, "one", "two"), aliases={"rerank-english-v3.0": "m"})

    async def body() -> None:
        await models.start([("m", tmp_path / "one", "one"), ("n", tmp_path / "two", "two")])
        with pytest.raises(ModelNotFound) as missing:
            models.choose("gpt-4", "q")
        assert missing.value.field == "model"
        assert "'gpt-4'" in missing.value.message and "['m', 'n']" in missing.value.message
        assert models.choose("rerank-english-v3.0", "q")[0].name == "m"
        with pytest.raises(Conflict):
            await models.unload("m")  # the default
        models.set_canary("n", 0.3)
        with pytest.raises(Conflict):
            await models.unload("n")  # the canary
        with pytest.raises(Conflict):
            models.set_canary("m", 0.3)  # the default cannot be its own canary
        models.set_canary(None, 0)
        removed = await models.unload("n")
        await asyncio.wait_for(removed.engine.stopped.wait(), 5)
        assert models.names == ["m"]

    run(body)
