"""Hand-written hostile requests: unicode edge cases, huge inputs, nested junk, wrong types.

Each :class:`BadInput` names the statuses it may get; on top of that every answer must
be valid UTF-8 JSON, a 4xx must carry the common error body, and a 200 must score every
item with a finite score in [0, 1] and echo the ids unchanged. :func:`run_cases` sends
them through any ``httpx.AsyncClient`` (in-process ASGI in the tests, HTTP in the
reliability run), sized from the server's own limits (``GET /info``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

JSON = "application/json"
UNICODE_TEXTS = {
    "emoji": "🔨🪛 cordless drill 👍🏽 👨‍👩‍👧‍👦 🇺🇸",
    "rtl": "مثقاب كهربائي لاسلكي מקדחה \u202edrill\u202c \u200f\u200e",
    "combining": "e" + "\u0301" * 300 + " Z\u0335\u0351\u0353a\u0336\u0350l\u0337go",
    "cjk_fullwidth": "電動ドリル ＤＲＩＬＬ ２０Ｖ",
    "nul_and_controls": "dr\x00ill \x01\x07\x1b[31m red \x7f \x85\x9b",
    "zero_width_bom": "\ufeff\u200b\u200c\u200ddrill\u2060",
    "noncharacters_private_use": "\uffff\ufffe\ue000\U0010ffff drill",
    "astral_math": "𝔡𝔯𝔦𝔩𝔩 𝟐𝟎𝐕",
    "whitespace_only_text": " \t\n\u3000",
    "only_nul": "\x00",
}


@dataclass(frozen=True)
class BadInput:
    """One request and the statuses it may be answered with."""

    name: str
    path: str
    body: bytes
    expect: frozenset[int]
    content_type: str | None = JSON
    method: str = "POST"
    # Extra check on a 2xx body: returns a problem or None.
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)
    stream: bool = False  # send the body chunked, without Content-Length


@dataclass
class CaseResult:
    name: str
    status: int
    elapsed_s: float
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _scores_all(ids: list[str]) -> Callable[[Any], str | None]:
    def check(body: Any) -> str | None:
        scores = body.get("scores") if isinstance(body, dict) else None
        if not isinstance(scores, list) or len(scores) != len(ids):
            return f"expected {len(ids)} scores"
        if [s.get("id") for s in scores] != ids:
            return "ids not echoed unchanged"
        values = [s.get("score") for s in scores]
        if not all(isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1 for v in values):
            return f"scores not finite in [0, 1]: {values[:5]}"
        return None

    return check


def _truncated(count: int) -> Callable[[Any], str | None]:
    def check(body: Any) -> str | None:
        if not isinstance(body, dict) or body.get("truncated") != count:
            return f"expected truncated == {count}"
        return None

    return check


def cases(limits: dict[str, int]) -> list[BadInput]:
    """The hostile requests, sized from the server's limits (``/info``'s ``limits``)."""
    ok = frozenset({200})
    invalid = frozenset({422})
    too_large = frozenset({413})
    wrong_type = frozenset({415})
    max_items = limits["max_items"]
    max_text = limits["max_text_chars"]
    max_body = limits["max_body_bytes"]
    megabyte = "drill " * (1_000_000 // 6)
    out: list[BadInput] = []

    # Unicode: each edge case as the query, as a text and as an id; all must score, except
    # a blank text, which has nothing to score and is refused naming its field.
    for name, text in UNICODE_TEXTS.items():
        item_id = text[:100]  # ids are limited to 256 characters
        items = [{"id": item_id, "text": text}, {"id": "plain", "text": "DEWALT drill"}]
        blank = not text.strip()
        query = "drill" if blank else text
        out.append(
            BadInput(
                f"unicode {name}",
                "/score",
                _dumps({"query": query, "items": items}),
                invalid if blank else ok,
                check=None if blank else _scores_all([item_id, "plain"]),
            )
        )
        out.append(
            BadInput(
                f"unicode {name} (rerank, echoed)",
                "/rerank",
                _dumps({"query": query, "texts": [text, "x"], "return_text": True}),
                invalid if blank else ok,
            )
        )
    # JSON escapes: a valid surrogate pair decodes to one character; lone halves are refused.
    out += [
        BadInput(
            "surrogate pair escape",
            "/score",
            b'{"query": "drill \\ud83d\\ude00", "items": ["a \\ud83d\\udd28"]}',
            ok,
            check=_scores_all(["0"]),
        ),
        BadInput(
            "lone high surrogate in query",
            "/score",
            b'{"query": "drill \\ud800", "items": ["a"]}',
            invalid,
        ),
        BadInput(
            "lone low surrogate in text",
            "/score",
            b'{"query": "drill", "items": ["a \\udfff b"]}',
            invalid,
        ),
        BadInput(
            "lone surrogate in id",
            "/score",
            b'{"query": "drill", "items": [{"id": "\\udc00", "text": "x"}]}',
            invalid,
        ),
        BadInput(
            "lone surrogate in rerank text",
            "/rerank",
            b'{"query": "drill", "texts": ["\\ud800"], "return_text": true}',
            invalid,
        ),
        BadInput(
            "lone surrogate in an unknown key",
            "/score",
            b'{"query": "x", "items": ["a"], "\\ud800": 1}',
            invalid,
        ),
        BadInput(
            "invalid UTF-8 bytes", "/score", b'{"query": "\xff\xfe", "items": ["a"]}', invalid
        ),
        BadInput(
            "UTF-8 BOM before the JSON",
            "/score",
            b'\xef\xbb\xbf{"query": "x", "items": ["a"]}',
            frozenset({200, 422}),
        ),
    ]
    # Size: 1 MB texts and queries, item counts past the limit, bodies past the limit.
    out += [
        BadInput(
            "1 MB text, truncate on",
            "/score",
            _dumps({"query": "drill", "items": [megabyte, "short"]}),
            ok,
            check=_truncated(1),
        ),
        BadInput(
            "1 MB text, truncate off",
            "/score",
            _dumps({"query": "drill", "items": ["short", megabyte], "truncate": False}),
            too_large,
        ),
        BadInput(
            "1 MB query, truncate on",
            "/score",
            _dumps({"query": megabyte, "items": ["a", "b"]}),
            ok,
            check=_scores_all(["0", "1"]),
        ),
        BadInput(
            "1 MB query, truncate off",
            "/score",
            _dumps({"query": megabyte, "items": ["a"], "truncate": False}),
            too_large,
        ),
        BadInput(
            "1 MB text in rerank",
            "/rerank",
            _dumps({"query": "drill", "texts": [megabyte]}),
            ok,
        ),
        BadInput(
            f"{max_items + 1} items (limit + 1)",
            "/score",
            _dumps({"query": "drill", "items": ["x"] * (max_items + 1)}),
            too_large,
        ),
        BadInput(
            "10,000 items",
            "/score",
            _dumps({"query": "drill", "items": [f"item {i}" for i in range(10_000)]}),
            too_large if max_items < 10_000 else frozenset({200, 429, 504}),
        ),
        BadInput(
            "10,000 texts (rerank)",
            "/rerank",
            _dumps({"query": "drill", "texts": ["x"] * 10_000}),
            too_large if max_items < 10_000 else frozenset({200, 429, 504}),
        ),
        BadInput(
            "text of exactly the character limit, truncate off",
            "/score",
            _dumps({"query": "drill", "items": ["a" * max_text], "truncate": False}),
            frozenset({200, 413}),  # 413 when the model's token limit is lower
        ),
        BadInput(
            "body over the limit (Content-Length)",
            "/score",
            b'{"query": "x", "items": ["' + b"a" * max_body + b'"]}',
            too_large,
        ),
        BadInput(
            "body over the limit (chunked, no Content-Length)",
            "/score",
            b'{"query": "x", "items": ["' + b"a" * max_body + b'"]}',
            too_large,
            stream=True,
        ),
    ]
    # Nested junk and wrong shapes.
    deep = 100_000
    out += [
        BadInput("100,000 nested arrays", "/score", b"[" * deep + b"]" * deep, invalid),
        BadInput(
            "nested arrays as items",
            "/score",
            b'{"query": "x", "items": ' + b"[" * deep + b"]" * deep + b"}",
            invalid,
        ),
        BadInput(
            "nested objects as query",
            "/score",
            b'{"query": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b', "items": ["a"]}',
            invalid,
        ),
        BadInput(
            "operator object as text",
            "/score",
            b'{"query": "x", "items": [{"id": "1", "text": {"$gt": ""}}]}',
            invalid,
        ),
        BadInput("top-level array", "/score", b'["drill", ["a"]]', invalid),
        BadInput("top-level null", "/score", b"null", invalid),
        BadInput("top-level string", "/rerank", b'"drill"', invalid),
        BadInput("empty body", "/score", b"", invalid),
        BadInput("whitespace body", "/score", b"  \n ", invalid),
        BadInput("trailing garbage", "/score", b'{"query": "x", "items": ["a"]} xyz', invalid),
        BadInput("NaN literal", "/score", b'{"query": "x", "items": ["a"], "top_k": NaN}', invalid),
        BadInput(
            "1e999 (infinity)",
            "/score",
            b'{"query": "x", "items": ["a"], "deadline_ms": 1e999}',
            invalid,
        ),
        BadInput(
            "huge integer top_k",
            "/score",
            b'{"query": "x", "items": ["a"], "top_k": 1' + b"0" * 400 + b"}",
            ok,
        ),
        BadInput(
            "bool as top_k", "/score", b'{"query": "x", "items": ["a"], "top_k": true}', invalid
        ),
        BadInput(
            "string as truncate",
            "/score",
            b'{"query": "x", "items": ["a"], "truncate": "false"}',
            invalid,
        ),
        BadInput(
            "__proto__ key",
            "/score",
            b'{"query": "x", "items": ["a"], "__proto__": {"admin": true}}',
            invalid,
        ),
        BadInput(
            "duplicate keys (last wins)",
            "/score",
            b'{"query": "x", "query": "drill", "items": ["a"]}',
            ok,
        ),
        BadInput(
            "admin body on /score",
            "/score",
            b'{"query": "x", "items": ["a"], "mirror_rate": 1}',
            invalid,
        ),
    ]
    # Content types: only JSON (or a missing header, as curl -d sends) is read.
    body = b'{"query": "drill", "items": ["a"]}'
    for ctype, expect in (
        ("text/plain", wrong_type),
        ("application/x-www-form-urlencoded", wrong_type),
        ("multipart/form-data; boundary=x", wrong_type),
        ("application/xml", wrong_type),
        ("!!!", wrong_type),
        ("application/json; charset=utf-8", ok),
        ("APPLICATION/JSON", ok),
        ("application/vnd.api+json", ok),
        (None, ok),
    ):
        out.append(BadInput(f"content-type {ctype}", "/score", body, expect, content_type=ctype))
    out += [
        BadInput("form-encoded body", "/score", b"query=drill&items=a", wrong_type, "text/plain"),
        BadInput("GET on /score", "/score", b"", frozenset({405}), None, method="GET"),
        BadInput("DELETE on /healthz", "/healthz", b"", frozenset({405}), None, method="DELETE"),
        BadInput("unknown path", "/../../etc/passwd", b"", frozenset({404}), None, method="GET"),
        BadInput(
            "path traversal on static-looking path",
            "/docs/..%2f..%2fetc",
            b"",
            frozenset({404}),
            None,
            method="GET",
        ),
    ]
    return out


async def _chunks(body: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def judge(case: BadInput, status: int, raw: bytes) -> str | None:
    """What is wrong with an answer, or None."""
    if status not in case.expect:
        return f"status {status}, expected {sorted(case.expect)}: {raw[:200]!r}"
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"answer is not UTF-8 JSON: {exc}"
    if 400 <= status < 500:
        if not (isinstance(body, dict) and body.get("error") and body.get("error_type")):
            return f"error body without error/error_type: {raw[:200]!r}"
        if status != 405 and status != 404 and len(raw) > 4096:
            return f"error body of {len(raw)} bytes (echoes input?)"
    if status == 200 and case.check is not None:
        return case.check(body)
    return None


async def run_cases(
    client: httpx.AsyncClient, limits: dict[str, int], *, timeout_s: float = 30.0
) -> list[CaseResult]:
    """Send every case once, one after the other; judge each answer."""
    results = []
    for case in cases(limits):
        headers = {"content-type": case.content_type} if case.content_type is not None else {}
        content: bytes | AsyncIterator[bytes] = _chunks(case.body) if case.stream else case.body
        started = time.monotonic()
        try:
            response = await client.request(
                case.method, case.path, content=content, headers=headers, timeout=timeout_s
            )
            raw = await response.aread()
            status = response.status_code
            problem = judge(case, status, raw)
        except httpx.HTTPError as exc:
            status, problem = 0, f"no answer: {exc!r}"
        results.append(CaseResult(case.name, status, time.monotonic() - started, problem))
    return results
