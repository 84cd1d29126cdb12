"""Security checks: what the image, the dependencies and the HTTP surface allow.

Static checks read the repository (Dockerfiles, ``pyproject.toml``, the service's source)
and the OpenAPI schema; dynamic checks talk to a running service through any
``httpx.AsyncClient``. Each returns :class:`Check` rows for the report; the tests in
``tests/reliability/test_security.py`` assert that every one passes.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("docker/Dockerfile", "docker/Dockerfile.gpu")
# Request fields that would let a client name a file, a directory or a remote resource.
PATH_LIKE = re.compile(r"(path|file|dir|directory|folder|output|url|uri|location)s?$", re.I)
# Calls that touch the file system.
FILE_CALLS = {
    "open",
    "read_text",
    "read_bytes",
    "write_text",
    "write_bytes",
    "mkdir",
    "unlink",
    "rmdir",
    "rename",
    "replace",
    "remove",
    "listdir",
    "iterdir",
    "glob",
    "rglob",
    "from_file",  # tokenizers.Tokenizer
    "InferenceSession",  # onnxruntime
}


@dataclass(frozen=True)
class Check:
    """One security property: whether it held, and the evidence."""

    name: str
    ok: bool
    detail: str


# ---------------------------------------------------------------------- the image


def final_stage_user(dockerfile: Path) -> str | None:
    """The ``USER`` in force in the last stage of a Dockerfile (None: root by default)."""
    user: str | None = None
    for raw in _joined_lines(dockerfile.read_text()):
        parts = raw.split(None, 1)
        if not parts:
            continue
        instruction = parts[0].upper()
        if instruction == "FROM":
            user = None  # each stage starts as root again
        elif instruction == "USER" and len(parts) == 2:
            user = parts[1].strip()
    return user


def _joined_lines(text: str) -> Iterator[str]:
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield pending + stripped
        pending = ""


def is_root(user: str | None) -> bool:
    if user is None:
        return True
    name, _, group = user.partition(":")
    return name in ("root", "0") or group in ("root", "0")


def image_checks(root: Path = REPO_ROOT) -> list[Check]:
    out = []
    for rel in DOCKERFILES:
        path = root / rel
        if not path.is_file():
            out.append(Check(f"{rel} runs as non-root", False, "file missing"))
            continue
        user = final_stage_user(path)
        out.append(Check(f"{rel} runs as non-root", not is_root(user), f"final stage USER {user}"))
    return out


# ---------------------------------------------------------------------- dependencies


@dataclass(frozen=True)
class Bound:
    requirement: str
    lower: str | None
    upper: str | None
    exact: bool

    @property
    def ok(self) -> bool:
        """A range that takes fixes: a floor, a ceiling, and not a single exact version."""
        return self.lower is not None and self.upper is not None and not self.exact


def dependency_bounds(pyproject: Path) -> list[Bound]:
    """Every requirement of ``pyproject.toml`` (runtime and extras) with its bounds."""
    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    out = []
    for text in requirements:
        spec = Requirement(text).specifier
        lower = next((s.version for s in spec if s.operator in (">=", ">", "~=")), None)
        upper = next((s.version for s in spec if s.operator in ("<", "<=", "~=")), None)
        exact = any(s.operator in ("==", "===") and "*" not in s.version for s in spec)
        out.append(Bound(text, lower, upper, exact))
    return out


def dependency_checks(root: Path = REPO_ROOT) -> list[Check]:
    bounds = dependency_bounds(root / "pyproject.toml")
    bad = [b.requirement for b in bounds if not b.ok]
    return [
        Check(
            "dependencies pinned to ranges that take fixes",
            not bad,
            f"{len(bounds) - len(bad)}/{len(bounds)} requirements have a floor and a ceiling "
            "and are not exact pins" + (f"; not: {', '.join(bad)}" if bad else ""),
        )
    ]


# ---------------------------------------------------------------------- HTTP surface


def request_properties(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(operation, property path) of every property any request body can carry."""
    schemas = spec.get("components", {}).get("schemas", {})

    def walk(schema: dict[str, Any], prefix: str, seen: frozenset[str]) -> Iterator[str]:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                yield from walk(schemas.get(name, {}), prefix, seen | {name})
            return
        for key in ("anyOf", "oneOf", "allOf"):
            for option in schema.get(key, []):
                yield from walk(option, prefix, seen)
        if isinstance(schema.get("items"), dict):
            yield from walk(schema["items"], prefix + "[]", seen)
        for name, sub in schema.get("properties", {}).items():
            path = f"{prefix}.{name}" if prefix else name
            yield path
            yield from walk(sub, path, seen)

    for route, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            label = f"{method.upper()} {route}"
            for param in op.get("parameters", []):
                yield label, f"{param.get('in')}:{param.get('name')}"
            content = op.get("requestBody", {}).get("content", {})
            for media in content.values():
                for prop in walk(media.get("schema", {}), "", frozenset()):
                    yield label, prop


def surface_checks(spec: dict[str, Any], *, admin_expected: bool) -> list[Check]:
    """No path parameters, no request field naming a file or URL; admin only if enabled."""
    operations = sorted(
        f"{m.upper()} {p}" for p, methods in spec.get("paths", {}).items() for m in methods
    )
    path_params = [
        f"{label} {name}" for label, name in request_properties(spec) if name.startswith("path:")
    ]
    props = list(request_properties(spec))
    path_like = [
        f"{label} {name}"
        for label, name in props
        if PATH_LIKE.search(name.split(".")[-1].split(":")[-1].rstrip("[]"))
    ]
    admin = [op for op in operations if " /admin" in op]
    return [
        Check(
            "no endpoint takes a file path, directory or URL",
            not path_params and not path_like,
            f"{len(operations)} operations ({', '.join(operations)}); {len(props)} request "
            f"fields and parameters, none path-like"
            if not path_params and not path_like
            else f"path-like: {path_params + path_like}",
        ),
        Check(
            "admin endpoints "
            + ("exist only with a token" if admin_expected else "off by default"),
            bool(admin) == admin_expected,
            f"admin operations in the schema: {admin or 'none'}",
        ),
    ]


def file_access_sites(package: Path = REPO_ROOT / "service") -> list[str]:
    """``file:line function()`` of every call in the service that touches the file system."""
    sites = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else None
            )
            # MicroBatcher.open() starts a request; it is not a file.
            if (
                name == "open"
                and isinstance(func, ast.Attribute)
                and re.fullmatch(r"self(\._batcher)?", ast.unparse(func.value))
            ):
                continue
            if name in FILE_CALLS:
                rel = path.relative_to(package.parent)
                sites.append(f"{rel}:{node.lineno} {name}()")
    return sites


def source_checks(root: Path = REPO_ROOT) -> list[Check]:
    """The HTTP layer (``service/api``) never touches files; the rest reads only config."""
    sites = file_access_sites(root / "service")
    in_api = [s for s in sites if s.startswith("service/api/")]
    modules = sorted({s.split(":")[0] for s in sites})
    return [
        Check(
            "routers never touch the file system",
            not in_api,
            f"{len(sites)} file-system calls, all outside service/api/ (in {', '.join(modules)})"
            if not in_api
            else f"in the HTTP layer: {in_api}",
        ),
    ]


def settings_checks(spec: dict[str, Any]) -> list[Check]:
    """Paths the service reads or writes (model, teacher, mirror JSONL) are settings only."""
    from service.settings import Settings

    path_fields = sorted(
        name for name, field in Settings.model_fields.items() if "Path" in str(field.annotation)
    )
    fields = {name.split(".")[-1].split(":")[-1] for _, name in request_properties(spec)}
    exposed = sorted(set(path_fields) & fields)
    return [
        Check(
            "file paths (model, teacher, mirror JSONL) are configuration only",
            bool(path_fields) and not exposed and bool(Settings.model_config.get("frozen")),
            f"Settings fields {path_fields} come from RELEVANCE_* at start-up (Settings is "
            f"frozen); in a request: {exposed or 'none'}",
        )
    ]


# ---------------------------------------------------------------------- dynamic checks


async def admin_checks(
    default: httpx.AsyncClient, with_token: httpx.AsyncClient, token: str
) -> list[Check]:
    """Admin is absent without a token; with one, only the right bearer token works."""
    body = {"mirror_rate": 0.5}
    off = await default.put("/admin/shadow", json=body)
    no_auth = await with_token.put("/admin/shadow", json=body)
    wrong = await with_token.put(
        "/admin/shadow", json=body, headers={"Authorization": "Bearer " + token + "x"}
    )
    right = await with_token.put(
        "/admin/shadow", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    sneaky = await with_token.put(
        "/admin/shadow",
        json={"mirror_rate": 0.1, "shadow_output": "/tmp/evil.jsonl", "model_dir": "/"},
        headers={"Authorization": f"Bearer {token}"},
    )
    statuses = (off.status_code, no_auth.status_code, wrong.status_code, right.status_code)
    return [
        Check(
            "admin actions need a configured token; off by default",
            statuses == (404, 401, 401, 200),
            f"no token configured: {off.status_code}; configured, no header: "
            f"{no_auth.status_code}; wrong token: {wrong.status_code}; right token: "
            f"{right.status_code}",
        ),
        Check(
            "admin cannot set paths",
            sneaky.status_code == 422,
            f"PUT /admin/shadow with shadow_output/model_dir: {sneaky.status_code} "
            f"({sneaky.json().get('error', '')[:80]})",
        ),
    ]


def _tokenized(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith("relevance_tokenize_duration_seconds_count"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def limit_checks(client: httpx.AsyncClient) -> list[Check]:
    """Size limits answer 413 before any tokenization, and quickly."""
    limits = (await client.get("/info")).json()["limits"]
    before = _tokenized((await client.get("/metrics")).text)
    probes = {
        "body over max_body_bytes": (
            b'{"query": "x", "items": ["' + b"a" * limits["max_body_bytes"] + b'"]}'
        ),
        "items over max_items": _json(
            {"query": "drill", "items": ["x"] * (limits["max_items"] + 1)}
        ),
        "text over max_text_chars (truncate off)": _json(
            {
                "query": "drill",
                "items": ["a " * limits["max_text_chars"]],
                "truncate": False,
            }
        ),
        "query over max_query_chars (truncate off)": _json(
            {"query": "q " * limits["max_query_chars"], "items": ["a"], "truncate": False}
        ),
    }
    results = []
    import time

    for name, body in probes.items():
        t0 = time.monotonic()
        r = await client.post("/score", content=body, headers={"content-type": "application/json"})
        results.append((name, r.status_code, (time.monotonic() - t0) * 1000))
    after = _tokenized((await client.get("/metrics")).text)
    ok = all(status == 413 for _, status, _ in results) and after == before
    detail = "; ".join(f"{name}: {status} in {ms:.0f} ms" for name, status, ms in results)
    return [
        Check(
            "size limits enforced before tokenization",
            ok,
            f"{detail}; tokenizer calls during the probes: {after - before:g} "
            f"(limits {limits['max_body_bytes']} B body, {limits['max_items']} items, "
            f"{limits['max_text_chars']}/{limits['max_query_chars']} chars text/query)",
        )
    ]


def _json(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()


def static_checks(spec_default: dict[str, Any], spec_admin: dict[str, Any]) -> list[Check]:
    """Everything that needs no running server: image, dependencies, source, schemas."""
    return [
        *image_checks(),
        *dependency_checks(),
        *source_checks(),
        *settings_checks(spec_admin),
        *surface_checks(spec_default, admin_expected=False),
        *surface_checks(spec_admin, admin_expected=True)[1:],
    ]


# ---------------------------------------------------------------------- scenario (e)


def run(cfg: Any) -> list[Any]:
    """Static checks, then admin and size limits against two running servers (without and
    with an admin token). Returns the report's rows."""
    import asyncio

    from loadtest.reliability.common import Row, get_json, serving

    token = "reliability-admin-token"
    env = {"RELEVANCE_LOG_LEVEL": "warning"}
    with (
        serving("security-default", cfg, env=env) as plain,
        serving("security-admin", cfg, env={**env, "RELEVANCE_ADMIN_TOKEN": token}) as admin,
    ):
        spec_default = get_json(plain.url + "/openapi.json")
        spec_admin = get_json(admin.url + "/openapi.json")

        async def live() -> list[Check]:
            async with (
                httpx.AsyncClient(base_url=plain.url, timeout=60, trust_env=False) as a,
                httpx.AsyncClient(base_url=admin.url, timeout=60, trust_env=False) as b,
            ):
                return [*await admin_checks(a, b, token), *await limit_checks(a)]

        static = static_checks(spec_default, spec_admin)
        dynamic = asyncio.run(live())
    rows = [
        Row(f"Security: {c.name}", "repository and OpenAPI", c.ok, c.name, c.detail) for c in static
    ]
    rows += [
        Row(f"Security: {c.name}", "requests to a live server", c.ok, c.name, c.detail)
        for c in dynamic
    ]
    return rows
