"""Admin actions; the router is mounted only when ``RELEVANCE_ADMIN_TOKEN`` is set.

Models (:mod:`service.models`): ``GET /admin/models``; ``PUT /admin/models/{name}`` with
``{"package"}`` loads a package of the models directory (by name, never a path) as
``name`` or hot-swaps the version serving it, answering once the new version serves;
``DELETE /admin/models/{name}`` unloads one; ``PUT``/``DELETE /admin/canary`` sets or
stops the canary's share. The teacher's mirror rate: ``PUT /admin/shadow``.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path

from service.api.deps import get_models, get_settings, get_shadow, require_json
from service.engine import ScoringEngine
from service.errors import Unauthorized
from service.models import ModelRegistry
from service.schemas import (
    ERROR_RESPONSES,
    NAME_PATTERN,
    CanaryUpdate,
    ErrorBody,
    ModelPackageUpdate,
    ShadowRateUpdate,
)
from service.settings import Settings
from service.shadow import TeacherShadow

ModelsDep = Annotated[ModelRegistry[ScoringEngine], Depends(get_models)]
NameParam = Annotated[str, Path(pattern=NAME_PATTERN, description="The serving name.")]


async def require_admin(
    settings: Annotated[Settings, Depends(get_settings)],
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """Bearer token check in constant time; no token configured means no admin at all."""
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not token or not secrets.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("authorization: a valid admin bearer token is required")


router = APIRouter(
    prefix="/admin",
    dependencies=[Depends(require_admin)],
    responses={
        401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
        409: {"model": ErrorBody, "description": "Conflicts with the current models."},
        **{code: ERROR_RESPONSES[code] for code in (404, 413, 415, 422, 503)},
    },
)


@router.put(
    "/shadow",
    summary="Change the share of /score traffic mirrored to the teacher",
    dependencies=[Depends(require_json)],
)
async def set_shadow_rate(
    body: ShadowRateUpdate, shadow: Annotated[TeacherShadow, Depends(get_shadow)]
) -> dict[str, Any]:
    shadow.mirror_rate = body.mirror_rate
    return shadow.info()


@router.get("/models", summary="Loaded models, draining versions, canary and packages on disk")
async def list_models(models: ModelsDep) -> dict[str, Any]:
    return models.describe(packages=True)


@router.put(
    "/models/{name}",
    summary="Load a package as a model name, or hot-swap the version serving it",
    description=(
        "`package` names a directory of `RELEVANCE_MODELS_DIR` (never a path). It is "
        "verified against its checksums, loaded and warmed up; then `name` switches to it "
        "at once, requests already scoring finish on the old version, and the old version "
        "is released once they have. Answers when the new version serves; 422 naming "
        "`package` when it is refused (the current version keeps serving), 404 when the "
        "models directory has no such package."
    ),
    dependencies=[Depends(require_json)],
)
async def put_model(name: NameParam, body: ModelPackageUpdate, models: ModelsDep) -> dict[str, Any]:
    previous = models.current(name).describe() if name in models.names else None
    served = await models.put(name, body.package)
    return {**served.describe(), "replaced": previous}


@router.delete(
    "/models/{name}",
    summary="Unload a model name (not the default, nor the canary)",
)
async def delete_model(name: NameParam, models: ModelsDep) -> dict[str, Any]:
    served = await models.unload(name)
    return {**served.describe(), "status": "draining"}


@router.put(
    "/canary",
    summary="Send a share of the requests naming no model to another loaded model",
    description="Sticky per query (a stable hash of the normalised query); `share` 0 keeps "
    "the canary loaded and sends it nothing. Requests that name a model are not split.",
    dependencies=[Depends(require_json)],
)
async def set_canary(body: CanaryUpdate, models: ModelsDep) -> dict[str, Any]:
    models.set_canary(body.model, body.share)
    return models.describe()


@router.delete("/canary", summary="Stop the canary (the default takes every request again)")
async def stop_canary(models: ModelsDep) -> dict[str, Any]:
    models.set_canary(None, 0.0)
    return models.describe()
