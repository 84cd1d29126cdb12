"""Schema-driven fuzzing of every endpoint with schemathesis, in-process (ASGI) or over HTTP.

Each operation of the service's OpenAPI schema is fed generated requests, schema-valid
("positive") and schema-invalid ("negative", for operations that take input). Every answer
is checked against the schema (status documented, content type, headers, body) and
against these rules, which are this service's, not schemathesis' defaults:

* no 5xx, except a 504 for a request that chose its own ``deadline_ms`` and got it no
  earlier than that deadline (a 1 ms deadline cannot be met: answering 504 is correct);
* schema-invalid input is refused with 4xx (422, or 413/415 when size or content type is
  what the mutation broke);
* schema-valid input is accepted, except for limits no JSON Schema can state: 413 (a text
  over the model's token length with ``truncate: false``), 422 for duplicate item ids,
  404 for a ``model`` that is not loaded or a ``package`` the models directory lacks
  (both change at run time),
  401 on an admin endpoint without the token, 429 when the queue is full.

Failures are collected, not raised, so one run counts all of them; callers assert on
:attr:`FuzzReport.failures`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

NEGATIVE_EXPECTED = ["400", "401", "403", "404", "405", "406", "413", "415", "422", "428"]
POSITIVE_EXPECTED = ["2xx", "401", "413", "429", "504"]  # 504: judged by the deadline rule
# A 504 may come this much before the chosen deadline (clock granularity, rounding).
DEADLINE_SLACK_S = 0.005


@dataclass
class Finding:
    """One response that broke a rule."""

    operation: str
    mode: str
    status: int
    rule: str
    message: str
    request: str

    def line(self) -> str:
        return f"{self.operation} [{self.mode}] {self.status} {self.rule}: {self.message[:200]}"


@dataclass
class FuzzReport:
    """What a fuzz run sent and what came back."""

    cases: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    deadline_504: int = 0
    max_latency_s: float = 0.0
    elapsed_s: float = 0.0
    failures: list[Finding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        """5xx answers other than the allowed deadline 504s."""
        fives = sum(n for status, n in self.statuses.items() if status.startswith("5"))
        return fives - self.deadline_504

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "operations": dict(sorted(self.by_operation.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "server_errors": self.server_errors,
            "deadline_504": self.deadline_504,
            "failures": len(self.failures),
            "failure_lines": [f.line() for f in self.failures[:20]],
            "max_latency_ms": round(self.max_latency_s * 1000, 1),
            "elapsed_s": round(self.elapsed_s, 1),
            "skipped": self.skipped,
        }


def _config() -> Any:
    from schemathesis.config import SchemathesisConfig

    return SchemathesisConfig.from_dict(
        {
            "checks": {
                "negative_data_rejection": {"expected-statuses": NEGATIVE_EXPECTED},
                "positive_data_acceptance": {"expected-statuses": POSITIVE_EXPECTED},
            }
        }
    )


def load_schema(*, app: Any = None, base_url: str | None = None) -> Any:
    """The service's schema, read from ``app`` in-process or from a running ``base_url``."""
    import schemathesis

    if app is not None:
        return schemathesis.openapi.from_asgi("/openapi.json", app, config=_config())
    if base_url is None:
        raise ValueError("give app or base_url")
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=_config())


def _checks() -> list[Callable[..., Any]]:
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        positive_data_acceptance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
        positive_data_acceptance,
    ]


def _chosen_deadline_s(body: Any) -> float | None:
    if isinstance(body, dict):
        value = body.get("deadline_ms")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return value / 1000
    return None


def _tolerated(failure: Any, status: int, text: str) -> bool:
    """Semantic refusals the schema cannot express (see the module docstring)."""
    code = getattr(failure, "code", "")
    if code != "ST202":
        return False
    return (status == 422 and "duplicate id" in text) or (
        status == 404 and ('"model_not_found"' in text or '"package_not_found"' in text)
    )


def fuzz(
    schema: Any,
    *,
    examples: int,
    base_url: str | None = None,
    admin_token: str | None = None,
    timeout_s: float = 70.0,
    operations: Callable[[str], bool] | None = None,
) -> FuzzReport:
    """Send ``examples`` generated requests per operation and mode; return what happened.

    ``base_url`` sends over HTTP (the schema from :func:`load_schema` with a URL), else
    in-process through the schema's ASGI app. With ``admin_token``, half of the admin
    requests carry the right token so that the authorised path is fuzzed too.
    """
    import requests
    from schemathesis.core.failures import Failure, FailureGroup
    from schemathesis.generation import GenerationMode

    report = FuzzReport()
    checks = _checks()
    session = requests.Session()
    session.trust_env = False  # never send fuzz input through a proxy
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = operation.label
        if operations is not None and not operations(label):
            continue
        takes_input = bool(
            len(operation.body)
            or len(operation.headers)
            or len(operation.query)
            or len(operation.path_parameters)
        )
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes_input else [])
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode)
            run = _one_mode(
                report, label, mode.value, checks, session, base_url, admin_token, timeout_s
            )
            test = settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )(given(case=strategy, with_token=st.booleans())(run))
            try:
                test()
            except Unsatisfiable:
                report.skipped.append(f"{label} [{mode.value}]: no input to generate")
            except (Failure, FailureGroup) as exc:  # not expected: _one_mode collects them
                report.failures.append(Finding(label, mode.value, 0, "harness", str(exc), ""))
    report.elapsed_s = time.monotonic() - started
    return report


def _one_mode(
    report: FuzzReport,
    label: str,
    mode: str,
    checks: list[Callable[..., Any]],
    session: Any,
    base_url: str | None,
    admin_token: str | None,
    timeout_s: float,
) -> Callable[..., None]:
    from schemathesis.core.failures import Failure, FailureGroup

    def run(case: Any, with_token: bool) -> None:
        if admin_token and case.operation.path.startswith("/admin") and with_token:
            case.headers = {**(case.headers or {}), "authorization": f"Bearer {admin_token}"}
        t0 = time.monotonic()
        kwargs: dict[str, Any] = {"timeout": timeout_s}
        if base_url is not None:
            kwargs.update(base_url=base_url, session=session)
        try:
            response = case.call(**kwargs)
        except Exception as exc:  # no answer at all (timeout, connection reset)
            report.cases += 1
            report.statuses["none"] += 1
            report.failures.append(
                Finding(label, mode, 0, "no answer", repr(exc), repr(case.body)[:300])
            )
            return
        elapsed = time.monotonic() - t0
        status = response.status_code
        report.cases += 1
        report.by_operation[label] += 1
        report.statuses[str(status)] += 1
        report.max_latency_s = max(report.max_latency_s, elapsed)
        request = repr(case.body)[:300]
        if status >= 500:
            deadline = _chosen_deadline_s(case.body)
            if status == 504 and deadline is not None and elapsed >= deadline - DEADLINE_SLACK_S:
                report.deadline_504 += 1
            else:
                report.failures.append(
                    Finding(label, mode, status, "server error", response.text[:300], request)
                )
        try:
            case.validate_response(response, checks=checks)
        except (Failure, FailureGroup) as exc:
            found = exc.exceptions if isinstance(exc, FailureGroup) else (exc,)
            for failure in found:
                if _tolerated(failure, status, response.text):
                    continue
                title = getattr(failure, "title", type(failure).__name__)
                report.failures.append(
                    Finding(label, mode, status, str(title), str(failure)[:400], request)
                )

    return run
