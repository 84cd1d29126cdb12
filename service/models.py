"""Loaded model packages by name: the default, a canary share, hot swap with drain.

A :class:`ModelRegistry` maps serving names (what a request's ``model`` says) to the
engine loaded for each, one version at a time. It is generic over the engine: anything
with ``start``/``stop``/``ready``/``status``/``wait_ready``/``info`` (:class:`Engine`);
scoring itself is the caller's business (the routes call the engine they are lent).

* **Choice**: a request naming a model (or one of its aliases) gets that model; one naming
  none gets the default, or the canary when the query's stable bucket
  (:func:`canary_bucket`, BLAKE2b of the normalised query) falls below the canary's share,
  so one query always lands on the same model.
* **Leases**: a request holds a :class:`Lease` on the version it was given from the moment
  it is chosen until it is answered. A swap replaces the current version at once (one
  assignment on the event loop: every later choice sees the new one), and the old
  version is stopped only when its last lease is returned, so requests in flight finish
  on the version they started on and nothing fails because of the swap.
* **Swap** (:meth:`ModelRegistry.put`): the package is named, never given as a path, and
  must be a directory of the models directory; it is verified (checksums), loaded, started
  and warmed up before the switch; any failure leaves the current version serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

from service.errors import (
    Conflict,
    InvalidInput,
    ModelNotFound,
    NotReady,
    PackageNotFound,
    PackageRefused,
)
from service.metrics import Metrics
from service.model_package import ModelPackageError

log = logging.getLogger(__name__)

# Serving names and package names: one path segment, no dot first (so no "." or "..");
# the admin API's schema publishes the same pattern (service.schemas.NAME_PATTERN).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
Route = Literal["default", "canary", "named"]


class Engine(Protocol):
    """What the registry needs from an engine (the cross-encoder's or another backend's)."""

    status: str

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def wait_ready(self, timeout_s: float = 60.0) -> bool: ...

    async def stop(self, timeout_s: float = 30.0) -> None: ...

    def info(self) -> dict[str, Any]: ...


E = TypeVar("E", bound=Engine)

# Blocking (run on a thread): verify and load the package at the path, build its engine;
# given the engine it replaces, if any (to reuse what was measured on this machine).
# Returns the engine and the package's version.
Loader = Callable[[Path, "E | None"], tuple[E, str]]


def check_name(value: str, field_name: str) -> str:
    """``value`` if it is a plain name (letters, digits, ``._-``, no path), else 422."""
    if not NAME_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"{field_name}: {value[:100]!r} is not a name (1-128 letters, digits, '.', '_' "
            "or '-', not starting with '.', '_' or '-'; never a path)",
            field=field_name,
        )
    return value


def normalise_query(query: str) -> str:
    """The query as the canary split sees it: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def canary_bucket(query: str) -> float:
    """A stable position of the query in [0, 1): the same on every process and run
    (BLAKE2b, unlike Python's salted ``hash``)."""
    digest = hashlib.blake2b(normalise_query(query).encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


@dataclass(eq=False)
class Served(Generic[E]):
    """One loaded version of a serving name, and the requests holding it."""

    name: str
    package: str
    version: str
    engine: E
    loaded_at: float = field(default_factory=time.time)
    inflight: int = 0
    retired: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "status": self.engine.status,
            "ready": self.engine.ready,
            "inflight_requests": self.inflight,
            "loaded_at": self.loaded_at,
        }


class Lease(Generic[E]):
    """A request's hold on the version chosen for it; a context manager."""

    def __init__(self, served: Served[E], route: Route, metrics: Metrics | None) -> None:
        self.served = served
        self.route = route
        self._metrics = metrics
        self._started = time.monotonic()
        self._open = False

    @property
    def engine(self) -> E:
        return self.served.engine

    def __enter__(self) -> Lease[E]:
        served = self.served
        served.inflight += 1
        served.idle.clear()
        self._open = True
        if self._metrics is not None:
            self._metrics.model_requests.labels(served.name, served.version, self.route).inc()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._open:
            return
        self._open = False
        served = self.served
        served.inflight -= 1
        if served.inflight == 0:
            served.idle.set()

    def scored(self, scores: Iterable[float]) -> None:
        """Count a scored request: its latency so far and its scores' distribution."""
        if self._metrics is None:
            return
        labels = (self.served.name, self.served.version)
        self._metrics.model_latency.labels(*labels).observe(time.monotonic() - self._started)
        histogram = self._metrics.model_scores.labels(*labels)
        for score in scores:
            histogram.observe(float(score))


class ModelRegistry(Generic[E]):
    """Serving names → the engine version loaded for each; default, canary, swaps."""

    def __init__(
        self,
        models_dir: Path,
        loader: Loader[E],
        metrics: Metrics | None = None,
        *,
        aliases: Mapping[str, str] | None = None,
        drain_timeout_s: float = 30.0,
        warmup_timeout_s: float = 120.0,
        on_change: Callable[[], None] | None = None,
        on_release: Callable[[Served[E]], None] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self._loader = loader
        self._metrics = metrics
        self.aliases = dict(aliases or {})
        self.drain_timeout_s = drain_timeout_s
        self.warmup_timeout_s = warmup_timeout_s
        self._on_change = on_change
        self._on_release = on_release
        self._current: dict[str, Served[E]] = {}
        self._draining: dict[Served[E], asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._starting: asyncio.Task[None] | None = None
        self.default = ""
        self.canary: str | None = None
        self.canary_share = 0.0
        self._closing = False

    # ------------------------------------------------------------------ names
    def package_path(self, package: str) -> Path:
        """The directory of the package named ``package`` in the models directory.

        Never a path from the request: a plain name (else 422), and the directory it names
        must sit directly in the models directory (else 404; a symlink out of it too).
        """
        check_name(package, "package")
        root = self.models_dir.resolve()
        path = self.models_dir / package
        if not path.is_dir() or path.resolve().parent != root:
            raise PackageNotFound(
                f"package: no package directory {package!r} in the models directory "
                f"(has {self.packages()})",
                field="package",
            )
        return path

    def packages(self) -> list[str]:
        """Package names the models directory offers (directories with a manifest)."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.models_dir.iterdir()
            if p.is_dir() and NAME_PATTERN.fullmatch(p.name) and (p / "manifest.json").is_file()
        )

    @property
    def names(self) -> list[str]:
        return list(self._current)

    def current(self, name: str) -> Served[E]:
        """The version serving ``name`` (an alias too), or 404 naming the field ``model``."""
        served = self._current.get(self.aliases.get(name, name))
        if served is None:
            aliases = f"; aliases: {sorted(self.aliases)}" if self.aliases else ""
            raise ModelNotFound(
                f"model: {name[:100]!r} is not loaded; loaded: {self.names}{aliases}",
                field="model",
            )
        return served

    # ------------------------------------------------------------------ choice
    def choose(self, model: str | None, query: str) -> tuple[Served[E], Route]:
        """The version a request is served by: named, else canary by query, else default."""
        if self._closing or not self._current:
            raise NotReady("the model is not loaded or the server is shutting down")
        if model is not None:
            return self.current(model), "named"
        canary = self._current.get(self.canary) if self.canary else None
        if canary is not None and canary_bucket(query) < self.canary_share:
            return canary, "canary"
        return self._current[self.default], "default"

    def lease(self, model: str | None, query: str) -> Lease[E]:
        """Choose and hold a version for one request (``with registry.lease(...) as l:``)."""
        served, route = self.choose(model, query)
        return Lease(served, route, self._metrics)

    # ------------------------------------------------------------------ lifecycle
    async def start(
        self,
        initial: Iterable[tuple[str, Path, str]],
        *,
        default: str | None = None,
        canary: str | None = None,
        canary_share: float = 0.0,
    ) -> None:
        """Load ``(name, path, package)`` entries, the first (or ``default``) the default.

        Every package is loaded before this returns (a bad one fails start-up); engines
        then start one after another in the background, each warming up alone so that
        its measurements are not shared with another's.
        """
        loaded: list[Served[E]] = []
        try:
            for name, path, package in initial:
                check_name(name, "model")
                engine, version = await asyncio.to_thread(self._loader, path, None)
                loaded.append(Served(name, package, version, engine))
        except BaseException:
            for served in loaded:
                await served.engine.stop(0)
            raise
        if not loaded:
            raise ValueError("no model to load")
        self._current = {s.name: s for s in loaded}
        self.default = default or loaded[0].name
        if self.default not in self._current:
            raise ValueError(f"default model {self.default!r} is not among {self.names}")
        if canary:
            self.set_canary(canary, canary_share)
        else:
            self._publish()
        first = self._current[self.default]
        await first.engine.start()
        rest = [s for s in loaded if s is not first]
        if rest:
            self._starting = asyncio.create_task(self._start_after(first, rest))
        self._changed()

    async def _start_after(self, first: Served[E], rest: list[Served[E]]) -> None:
        await first.engine.wait_ready(self.warmup_timeout_s)
        for served in rest:
            await served.engine.start()
            await served.engine.wait_ready(self.warmup_timeout_s)

    async def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Wait for every engine's warm-up (tests and the CLI)."""
        deadline = time.monotonic() + timeout_s
        if self._starting is not None:
            await asyncio.wait({self._starting}, timeout=timeout_s)
        for served in list(self._current.values()):
            await served.engine.wait_ready(max(0.0, deadline - time.monotonic()))
        return self.ready

    @property
    def ready(self) -> bool:
        """Every current version is warmed up and the registry is not closing."""
        return (
            bool(self._current)
            and not self._closing
            and all(s.engine.ready for s in self._current.values())
        )

    @property
    def status(self) -> str:
        if self._closing:
            return "draining"
        if not self._current:
            return "loading"
        default = self._current[self.default].engine
        if not default.ready:
            return default.status
        for served in self._current.values():
            if not served.engine.ready:
                return served.engine.status
        return "ready"

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, let every engine (draining ones too) finish, release them."""
        self._closing = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        current = list(self._current.values())
        await asyncio.gather(*(s.engine.stop(timeout_s) for s in current))
        for served in current:
            self._released(served)
        if self._draining:
            await asyncio.wait(set(self._draining.values()), timeout=timeout_s)

    # ------------------------------------------------------------------ admin
    async def put(self, name: str, package: str) -> Served[E]:
        """Load ``package`` as ``name`` (new, or replacing its version): verify, load, warm
        up, then switch; the old version drains in the background.

        Raises :class:`~service.errors.PackageRefused` (422, field ``package``) when the
        package fails its checksums, cannot be loaded or does not warm up; then nothing
        changed.
        """
        check_name(name, "name")
        if name in self.aliases:
            raise Conflict(f"name: {name!r} is an alias of {self.aliases[name]!r}", field="name")
        path = self.package_path(package)
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self._closing:
                raise NotReady("the server is shutting down")
            previous = self._current.get(name)
            engine, version = await self._load(path, package, previous)
            if not await self._warm(engine):
                await engine.stop(0)
                raise PackageRefused(
                    f"package: {package!r} did not warm up ({engine.status}); "
                    f"{'the current version keeps serving' if previous else 'nothing changed'}",
                    field="package",
                )
            served = Served(name, package, version, engine)
            # The switch: from here every choice of `name` gets the new version.
            self._current[name] = served
            if previous is not None:
                self._retire(previous)
            log.info(
                "model %s: now %s %s%s",
                name,
                package,
                version,
                f" (was {previous.package} {previous.version})" if previous else "",
            )
            self._publish()
            self._changed()
            return served

    async def _load(self, path: Path, package: str, previous: Served[E] | None) -> tuple[E, str]:
        try:
            return await asyncio.to_thread(
                self._loader, path, previous.engine if previous else None
            )
        except ModelPackageError as exc:
            raise PackageRefused(f"package: {exc}", field="package") from None
        except Exception as exc:
            log.exception("cannot load package %s", package)
            raise PackageRefused(
                f"package: {package!r} cannot be loaded ({type(exc).__name__}: {exc})",
                field="package",
            ) from None

    async def _warm(self, engine: E) -> bool:
        await engine.start()
        return await engine.wait_ready(self.warmup_timeout_s)

    async def unload(self, name: str) -> Served[E]:
        """Unload ``name``; the default and the canary cannot be (409)."""
        served = self.current(name)
        if served.name == self.default:
            raise Conflict(f"name: {name!r} is the default model; swap it instead", field="name")
        if served.name == self.canary:
            raise Conflict(f"name: {name!r} is the canary; stop the canary first", field="name")
        async with self._locks.setdefault(served.name, asyncio.Lock()):
            del self._current[served.name]
            self._retire(served)
        self._publish()
        self._changed()
        return served

    def set_canary(self, model: str | None, share: float) -> None:
        """Send ``share`` of the requests that name no model to ``model``; None stops it."""
        if model is None:
            self.canary, self.canary_share = None, 0.0
        else:
            served = self.current(model)
            if served.name == self.default:
                raise Conflict(
                    f"model: {model!r} is the default model; a canary must be another",
                    field="model",
                )
            if not 0.0 <= share <= 1.0:
                raise InvalidInput("share: must be within [0, 1]", field="share")
            self.canary, self.canary_share = served.name, float(share)
        self._publish()

    def describe(self, *, packages: bool = False) -> dict[str, Any]:
        """Every loaded version, what is draining, the default and the canary (and, with
        ``packages``, the package names the models directory offers)."""
        described: dict[str, Any] = {
            "default": self.default,
            "canary": {"model": self.canary, "share": self.canary_share} if self.canary else None,
            "aliases": dict(self.aliases),
            "models": [s.describe() for s in self._current.values()],
            "draining": [s.describe() for s in self._draining],
        }
        if packages:
            described["packages"] = self.packages()
        return described

    # ------------------------------------------------------------------ internals
    def _retire(self, served: Served[E]) -> None:
        served.retired = True
        self._draining[served] = asyncio.create_task(
            self._drain(served), name=f"relevance-drain-{served.name}"
        )

    async def _drain(self, served: Served[E]) -> None:
        """Wait for the old version's last lease, then stop and release its engine."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(served.idle.wait(), self.drain_timeout_s)
            if served.inflight:
                log.warning(
                    "model %s %s: %d requests still in flight after %.0f s; stopping",
                    served.name,
                    served.version,
                    served.inflight,
                    self.drain_timeout_s,
                )
            await served.engine.stop(self.drain_timeout_s)
            log.info("model %s %s drained and released", served.name, served.version)
        finally:
            self._draining.pop(served, None)
            self._released(served)

    def _released(self, served: Served[E]) -> None:
        if self._metrics is not None:
            with contextlib.suppress(KeyError):
                self._metrics.served_models.remove(served.name, served.version, served.package)
        if self._on_release is not None:
            self._on_release(served)

    def _publish(self) -> None:
        """Bring the registry's gauges up to date (served versions, canary share)."""
        m = self._metrics
        if m is None:
            return
        for served in self._current.values():
            m.served_models.labels(served.name, served.version, served.package).set(1)
        m.canary_share.set(self.canary_share if self.canary else 0.0)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
