"""Domain errors: each names the HTTP status and the error body it ends in.

Every error body has one shape, a superset of text-embeddings-inference's
``{"error", "error_type"}``: ``{"error": message, "error_type": kind, "field": name | null}``,
so a client always learns which field was wrong. The handlers that send them live in
:mod:`service.api.errors`; this module imports no web framework (training imports
:mod:`service.features`, which raises these).
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of the errors a request can end in; ``status_code`` is the HTTP answer."""

    status_code = 500
    error_type = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def headers(self) -> dict[str, str]:
        return {}

    @property
    def metric_reason(self) -> str:
        """The ``reason`` label of ``relevance_rejected_requests_total``."""
        return self.error_type

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "error_type": self.error_type, "field": self.field}


class InvalidInput(ServiceError):
    status_code = 422
    error_type = "validation"


class PayloadTooLarge(ServiceError):
    """Too many items, a text over the limit with ``truncate`` off, or an oversized body."""

    status_code = 413
    error_type = "payload_too_large"


class InputTooLong(PayloadTooLarge):
    """The query (``index`` None) or text ``index`` is over a limit and truncation is off.

    Raised where truncation is decided (:mod:`service.features`), which knows positions,
    not JSON: the request pipeline renames it for its endpoint (``items[3].text``).
    """

    def __init__(self, detail: str, *, index: int | None = None) -> None:
        where = "query" if index is None else f"text {index}"
        super().__init__(f"{where}: {detail}", field="query" if index is None else None)
        self.detail = detail
        self.index = index

    def named(self, text_field: str) -> PayloadTooLarge:
        """The same refusal naming the field as the endpoint spells it (``texts[{}]``)."""
        name = "query" if self.index is None else text_field.format(self.index)
        return PayloadTooLarge(f"{name}: {self.detail}", field=name)


class UnsupportedMediaType(ServiceError):
    status_code = 415
    error_type = "unsupported_media_type"


class Overloaded(ServiceError):
    """The queue cannot take the request's pairs now; the client should retry later."""

    status_code = 429
    error_type = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class DeadlineExceeded(ServiceError):
    """504. ``client_deadline``: the client's own ``deadline_ms`` ran out, not the server's
    default; counted apart so that alerts page on the server's misses only."""

    status_code = 504
    error_type = "deadline_exceeded"
    client_deadline = False

    @property
    def metric_reason(self) -> str:
        return "deadline_exceeded_client" if self.client_deadline else self.error_type


class NotReady(ServiceError):
    """Model not loaded yet, or the server is draining for shutdown."""

    status_code = 503
    error_type = "unavailable"


class InferenceFailed(ServiceError):
    status_code = 500
    error_type = "inference"


class ShadowUnavailable(ServiceError):
    status_code = 503
    error_type = "shadow_unavailable"


class ShadowFailed(ServiceError):
    """The teacher raised: the shadow is a dependency that failed, not a server bug."""

    status_code = 503
    error_type = "shadow_failed"


class ShadowBusy(Overloaded):
    error_type = "shadow_busy"


class ShadowTimeout(DeadlineExceeded):
    error_type = "shadow_timeout"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "unauthorized"


class ModelNotFound(ServiceError):
    """A request named a model that is not loaded (404, as vLLM and OpenAI answer it)."""

    status_code = 404
    error_type = "model_not_found"


class PackageNotFound(ServiceError):
    """Admin: no package directory of that name in the models directory."""

    status_code = 404
    error_type = "package_not_found"


class PackageRefused(InvalidInput):
    """Admin: a package failed its checksums, could not be loaded or did not warm up."""

    error_type = "package_refused"


class Conflict(ServiceError):
    """Admin: the change contradicts the current state (unloading the default model)."""

    status_code = 409
    error_type = "conflict"
