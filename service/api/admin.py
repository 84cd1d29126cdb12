"""Admin actions; the router is mounted only when ``RELEVANCE_ADMIN_TOKEN`` is set."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header

from service.api.deps import get_settings, get_shadow, require_json
from service.errors import Unauthorized
from service.schemas import ERROR_RESPONSES, ErrorBody, ShadowRateUpdate
from service.settings import Settings
from service.shadow import TeacherShadow


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
        **{code: ERROR_RESPONSES[code] for code in (413, 415, 422, 503)},
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
