"""How errors become HTTP answers: domain errors, validation errors and unexpected ones
all get the common body ``{"error", "error_type", "field"}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError
from service.rerank_schemas import UNION_TAGS

log = logging.getLogger(__name__)

MAX_FIELD_NAME_CHARS = 100


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "items", 3, "text")`` → ``"items[3].text"``; bare ``("body",)`` → ``"body"``.

    An unknown key is client input: it is cut short and made encodable (a lone surrogate
    in a key would otherwise break the UTF-8 error response). The tag of a union's member
    (a document given as a string or an object) is no field: ``documents[2].text``.
    """
    parts = [p for p in loc if p != "body" and p not in UNION_TAGS]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    if len(name) > MAX_FIELD_NAME_CHARS:
        name = name[:MAX_FIELD_NAME_CHARS] + "..."
    return name.encode("utf-8", "backslashreplace").decode("utf-8") or "body"


def validation_error_body(exc: RequestValidationError) -> dict[str, Any]:
    """Condense pydantic errors into one message naming each field, without echoing input."""
    problems = []
    fields = []
    for err in exc.errors():
        field = _field_name(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            field = "body"
            msg = f"invalid JSON ({err.get('ctx', {}).get('error', 'cannot parse')})"
        else:
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        fields.append(field)
        problems.append(f"{field}: {msg}")
    # Union fallbacks (item as object or as string) can repeat a message; keep the first.
    unique = list(dict.fromkeys(problems))
    message = "; ".join(unique[:10])
    if len(unique) > 10:
        message += f"; and {len(unique) - 10} more"
    return {
        "error": message,
        "error_type": "validation",
        "field": fields[0] if fields else None,
    }


def _count(request: Request, reason: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rejections.labels(reason=reason).inc()


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and unexpected ones to the common error body."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        _count(request, exc.metric_reason)
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        _count(request, "validation")
        return JSONResponse(validation_error_body(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # the body limit, raised while FastAPI reads the body
            body = {"error": str(exc.detail), "error_type": "payload_too_large", "field": "body"}
            _count(request, "payload_too_large")
        elif exc.status_code == 400:
            # FastAPI's only 400: a body it cannot decode at all (not UTF-8, nested past
            # Python's recursion limit). To a client that is malformed JSON like any other.
            _count(request, "validation")
            body = {
                "error": "body: invalid JSON (not UTF-8, or nested too deeply)",
                "error_type": "validation",
                "field": "body",
            }
            return JSONResponse(body, status_code=422)
        else:
            body = {"error": str(exc.detail), "error_type": "http", "field": None}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        _count(request, "internal")
        body = {"error": "internal error", "error_type": "internal", "field": None}
        return JSONResponse(body, status_code=500)
