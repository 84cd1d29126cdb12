"""``create_app()``: wires settings, metrics, routers and middleware; the lifespan owns the engine.

Nothing heavy happens at import or in ``create_app``: the model package is loaded, the
ONNX session opened and the teacher loaded in the lifespan, and released on shutdown.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from service.admission import AdmissionConfig
from service.api import admin, health, rerank, score
from service.api.errors import install_error_handlers
from service.batcher import BatcherConfig
from service.engine import ScoringEngine
from service.features import TextLimits
from service.metrics import Metrics
from service.middleware import BodySizeLimit, LoadShedding, LoopLag, RequestMetrics
from service.model_package import ModelPackageError
from service.models import Loader, ModelRegistry, Served
from service.preload import read_catalogue
from service.representation_engine import RepresentationEngine
from service.representation_package import (
    CROSS_ENCODER,
    REPRESENTATION,
    load_any_package,
    package_kind,
)
from service.settings import DEFAULT_MAX_BATCH_SIZE, Settings
from service.shadow import ShadowScorer, TeacherShadow, load_teacher_scorer
from service.warmup import LadderConfig

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings, Metrics], ScoringEngine]

DESCRIPTION = """\
Relevance scores for (query, item) pairs from a small cross-encoder distilled from an LLM
teacher, behind a dynamic micro-batcher. `POST /score` is the main endpoint; the rerank
shapes of other servers are spoken too, all scored by the same model and batcher:
`POST /rerank` (text-embeddings-inference's `texts`, or vLLM's `documents`),
`POST /infinity/rerank` (Infinity's), `POST /v1/rerank` (Cohere v1 and Jina) and
`POST /v2/rerank` (Cohere v2). `POST /shadow/score` asks the teacher. Several model
versions may be loaded (`GET /v1/models`); a request's `model` picks one, else the
default (or a canary for a share of queries) scores it.
Errors always have the body `{"error", "error_type", "field"}`.
"""
# Swagger UI's files, served by the app itself: /docs works without internet (FastAPI's
# default page loads them from a CDN). fastapi-offline ships Swagger UI 5, which renders
# the OpenAPI 3.1 that FastAPI publishes.
DOCS_ASSETS_URL = "/docs-assets"


def _version() -> str:
    try:
        return metadata.version("relevance-service")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def batcher_config(settings: Settings) -> BatcherConfig:
    """The batcher's limits from the settings (the batch size until the ladder picks one)."""
    return BatcherConfig(
        max_batch_size=settings.max_batch_size or DEFAULT_MAX_BATCH_SIZE,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_ms=settings.max_wait_ms,
        window_batches=settings.pack_window_batches,
    )


def admission_config(settings: Settings) -> AdmissionConfig:
    """Admission's limits from the settings (its latency budget from the SLO)."""
    return AdmissionConfig(
        max_queue_pairs=settings.max_queue_pairs,
        latency_s=settings.slo_latency_ms / 1000 * settings.admission_slo_factor,
        latency_items=settings.slo_items,
        slo_factor=settings.admission_slo_factor,
        tail_quantile=settings.admission_tail_quantile,
        batch_pairs=settings.max_batch_size or DEFAULT_MAX_BATCH_SIZE,
    )


def ladder_config(settings: Settings) -> LadderConfig | None:
    """What the warm-up ladder may tune: the knobs the settings leave unset."""
    if not settings.warmup or settings.tune_budget_s <= 0:
        return None
    return LadderConfig(
        budget_s=settings.tune_budget_s,
        max_batch_tokens=settings.max_batch_tokens,
        fixed_batch_size=settings.max_batch_size,
        fixed_threads=settings.intra_op_threads,
        fixed_spinning=settings.intra_op_spinning,
        fixed_instances=settings.model_instances,
        threads=settings.intra_op_threads or 0,
        spinning=bool(settings.intra_op_spinning),
    )


def text_limits(settings: Settings) -> TextLimits:
    """The character limits every scoring request is held to before tokenization."""
    return TextLimits(settings.max_query_chars, settings.max_text_chars)


def engine_options(settings: Settings) -> dict[str, Any]:
    """What every engine kind takes from the settings: runtime, limits, batching, admission."""
    return {
        "provider": settings.provider,
        "variant": settings.variant,
        "intra_op_threads": settings.intra_op_threads or 0,
        "intra_op_spinning": bool(settings.intra_op_spinning),
        "limits": text_limits(settings),
        "batching": batcher_config(settings),
        "admission": admission_config(settings),
        "tokenizer_threads": settings.tokenizer_threads,
        "warmup": settings.warmup,
    }


def load_engine(settings: Settings, metrics: Metrics) -> ScoringEngine:
    """The production engine: the settings unpacked into plain values. A representation
    package (its manifest's ``kind``) gets a :class:`RepresentationEngine`, which has the
    same interface."""
    if package_kind(settings.model_dir) == REPRESENTATION:
        return load_representation_engine(settings, metrics)  # type: ignore[return-value]
    return ScoringEngine.from_package_dir(
        settings.model_dir,
        metrics,
        **engine_options(settings),
        ladder=ladder_config(settings),
        cache_bytes=int(settings.score_cache_mb * 1024 * 1024),
        model_instances=settings.model_instances or 1,
    )


def load_representation_engine(settings: Settings, metrics: Metrics) -> RepresentationEngine:
    """A representation package's engine, with its item store, preload and cascade.

    The cascade's cross-encoder is an engine of its own, built from the same settings on
    ``cascade_model_dir``; its metrics go to a registry of their own (its batcher and
    admission gauges would otherwise overwrite the student's), and ``/info`` shows it.
    """
    cascade = None
    if settings.cascade_model_dir is not None:
        if package_kind(settings.cascade_model_dir) != CROSS_ENCODER:
            raise ModelPackageError(
                f"{settings.cascade_model_dir}: cascade_model_dir must be a cross-encoder package"
            )
        cascade = load_engine(
            settings.model_copy(update={"model_dir": settings.cascade_model_dir}),
            Metrics(CollectorRegistry(), settings.slo_window_s),
        )
    return RepresentationEngine.from_package_dir(
        settings.model_dir,
        metrics,
        **engine_options(settings),
        store_bytes=int(settings.item_store_mb * 1024 * 1024),
        preload=read_catalogue(settings.item_preload) if settings.item_preload else None,
        cascade=cascade,
        cascade_top_k=settings.cascade_top_k,
    )


def package_loader(
    settings: Settings, metrics: Metrics, factory: EngineFactory
) -> Loader[ScoringEngine]:
    """Build the engine of the package at a path with the app's engine factory.

    A version replacing another (a hot swap) reuses the batch size and threading the
    warm-up ladder chose for it: they were measured on this machine, and re-running the
    ladder next to live traffic would both slow that traffic and measure a busy machine.
    """

    def load(path: Path, previous: ScoringEngine | None) -> tuple[ScoringEngine, str]:
        overrides: dict[str, Any] = {"model_dir": path}
        tuning = getattr(previous, "tuning", None)
        if tuning is not None:
            overrides.update(
                max_batch_size=tuning.max_batch_size,
                intra_op_threads=tuning.intra_op_threads,
                intra_op_spinning=tuning.intra_op_spinning,
                model_instances=tuning.model_instances,
            )
        engine = factory(settings.model_copy(update=overrides), metrics)
        return engine, engine.package.manifest.version

    return load


def startup_models(settings: Settings, models: ModelRegistry[Any]) -> list[tuple[str, Path, str]]:
    """(name, path, package) of the models to load: RELEVANCE_MODELS from the models
    directory, else RELEVANCE_MODEL_DIR alone under its manifest's name (as before)."""
    if settings.models:
        return [(name, models.package_path(p), p) for name, p in settings.models.items()]
    name = load_any_package(settings.model_dir).manifest.name
    return [(name, settings.model_dir, settings.model_dir.name)]


def drop_model_info(
    metrics: Metrics, models: ModelRegistry[ScoringEngine], served: Served[ScoringEngine]
) -> None:
    """Drop a released version's ``relevance_model_info`` series unless another serves it."""

    def labels(engine: ScoringEngine) -> tuple[str, str, str, str]:
        m = engine.package.manifest
        return (m.name, m.version, engine.scorer.variant, engine.scorer.provider)

    gone = labels(served.engine)
    if all(labels(models.current(n).engine) != gone for n in models.names):
        with contextlib.suppress(KeyError):
            metrics.model_info.remove(*gone)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics

    def on_change() -> None:
        # The default model's engine, for what has one engine in mind (/info's load, tests).
        engine = models.current(models.default).engine
        app.state.engine = engine
        # The middleware sheds at the door when even one pair would miss its budget. A
        # representation engine's admission guards only item encoding: a request whose
        # items are all stored needs none of it, so that engine refuses per request only.
        representation = getattr(engine, "kind", None) == "representation"
        app.state.admission = None if representation else engine.admission

    models: ModelRegistry[ScoringEngine] = ModelRegistry(
        settings.models_dir,
        package_loader(settings, metrics, app.state.engine_factory),
        metrics,
        aliases=settings.model_aliases,
        drain_timeout_s=settings.shutdown_timeout_s,
        warmup_timeout_s=settings.swap_warmup_timeout_s,
        on_change=on_change,
        on_release=lambda served: drop_model_info(metrics, models, served),
    )
    try:
        await models.start(
            startup_models(settings, models),
            default=settings.default_model,
            canary=settings.canary_model,
            canary_share=settings.canary_share,
        )
    except Exception as exc:
        log.error("cannot load the models: %s", exc)
        raise
    for alias, target in settings.model_aliases.items():
        if target not in models.names:
            log.warning("model alias %s names %s, which is not loaded", alias, target)
    # Ready when every loaded version is (engines set this gauge too; the registry decides).
    metrics.ready.set_function(lambda: float(models.ready))
    shadow = TeacherShadow(
        metrics,
        loader=app.state.teacher_loader,
        name=settings.teacher_dir.name if settings.teacher_dir else "teacher",
        concurrency=settings.shadow_concurrency,
        timeout_s=settings.shadow_timeout_s,
        mirror_rate=settings.shadow_mirror_rate,
        queue_size=settings.shadow_queue_size,
        output_path=settings.shadow_output,
    )
    await shadow.start()
    loop_lag = LoopLag()
    loop_lag.start()
    app.state.models = models
    app.state.shadow = shadow
    app.state.loop_lag = loop_lag
    try:
        yield
    finally:
        await loop_lag.stop()
        app.state.loop_lag = None
        # uvicorn has stopped accepting and let open requests finish; drain what is left.
        log.info("shutting down: finishing %d queued pairs", app.state.engine.pending_pairs)
        await models.stop(settings.shutdown_timeout_s)
        await shadow.stop()
        app.state.models = None
        app.state.engine = None
        app.state.admission = None
        app.state.shadow = None


def publish_limits(app: FastAPI, settings: Settings) -> None:
    """Write the configured limits into the OpenAPI schema (item counts, deadline).

    The request models are defined before the settings exist; without this the schema
    would call requests valid that the server refuses, and clients and fuzzers generated
    from it would be wrong.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        schemas = spec.get("components", {}).get("schemas", {})
        limits = {
            ("ScoreRequest", "items"): {"maxItems": settings.max_items},
            ("ShadowScoreRequest", "items"): {
                "maxItems": min(settings.max_items, settings.shadow_max_items)
            },
            ("RerankRequest", "texts"): {"maxItems": settings.max_items},
            ("RerankRequest", "documents"): {"maxItems": settings.max_items},
            ("CohereRerankRequest", "documents"): {"maxItems": settings.max_items},
            ("CohereV2RerankRequest", "documents"): {"maxItems": settings.max_items},
            ("InfinityRerankRequest", "documents"): {"maxItems": settings.max_items},
        }
        for (model, field), extra in limits.items():
            if field in schemas.get(model, {}).get("properties", {}):
                schemas[model]["properties"][field].update(extra)
        for model in ("ScoreRequest", "ShadowScoreRequest"):
            deadline = schemas.get(model, {}).get("properties", {}).get("deadline_ms", {})
            for option in deadline.get("anyOf", []):
                if option.get("type") == "integer":
                    option["maximum"] = settings.max_deadline_ms
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def serve_docs_offline(app: FastAPI) -> None:
    """``/docs`` from Swagger UI's files on disk (FastAPI's self-hosting recipe)."""
    assets = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=app.title + " - Swagger UI",
            oauth2_redirect_url=root + redirect_url,
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def create_app(
    settings: Settings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    engine_factory: EngineFactory | None = None,
    teacher_loader: Callable[[], ShadowScorer] | None = None,
) -> FastAPI:
    """Build the app. Tests pass their own settings, registry, engine or teacher."""
    settings = settings or Settings()
    if registry is None:
        registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
    metrics = Metrics(registry, settings.slo_window_s)
    metrics.queue_capacity.set(settings.max_queue_pairs)
    if teacher_loader is None and settings.teacher_dir is not None:
        teacher_dir, threads = settings.teacher_dir, settings.teacher_threads

        def teacher_loader() -> ShadowScorer:
            return load_teacher_scorer(teacher_dir, threads)

    app = FastAPI(
        title="Relevance scoring service",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        # A body without Content-Type is read as JSON (what require_json promises); FastAPI's
        # strict default would hand the handler raw bytes and answer a puzzling 422.
        strict_content_type=False,
        # /docs is served from local files below; ReDoc's page would load from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.text_limits = text_limits(settings)
    app.state.models = None
    app.state.engine = None
    app.state.admission = None
    app.state.shadow = None
    app.state.loop_lag = None
    app.state.engine_factory = engine_factory or load_engine
    app.state.teacher_loader = teacher_loader
    install_error_handlers(app)
    app.include_router(score.router)
    app.include_router(rerank.router)
    app.include_router(health.router)
    if settings.admin_token is not None:
        app.include_router(admin.router)
    publish_limits(app, settings)
    serve_docs_offline(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    # Outside the body limit: shed load before reading bodies at all.
    app.add_middleware(
        LoadShedding,
        max_in_flight=settings.max_concurrent_requests,
        max_loop_lag_s=settings.max_loop_lag_ms / 1000,
    )
    # Added last, so outermost: it also times requests the body limit refuses.
    app.add_middleware(
        RequestMetrics,
        metrics=metrics,
        slo_latency_s=settings.slo_latency_ms / 1000,
        slo_items=settings.slo_items,
    )
    return app
