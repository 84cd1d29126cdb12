"""Write docs/architecture.md: the request path and the training flow, one box a module.

``python tools/architecture.py`` (``--check``: exit 1 when the file is out of date).

The two pictures come from a small diagram source below (the order data flows in, which
no import graph shows) checked against the code: every box must be a module of the
repository, and every arrow marked ``import`` must be an import the code really makes
(parsed with ``ast``). A third picture, the import graph of ``service/``, is drawn from the
code alone. Mermaid, so the diagrams render where the markdown is read.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "architecture.md"

# (from, to, label): one arrow of the data path; "import" arrows are checked against the code.
REQUEST_PATH = [
    ("service.middleware", "service.admission", "shed load: admission.saturated()"),
    ("service.middleware", "service.api.score", "body, content type, arrival time"),
    ("service.api.score", "service.schemas", "validate the JSON"),
    ("service.api.score", "service.api.pipeline", "import"),
    ("service.api.pipeline", "service.engine", "import"),
    ("service.engine", "service.score_cache", "cached pairs: no queue, no model"),
    ("service.engine", "service.features", "import"),
    ("service.engine", "service.admission", "import"),
    ("service.engine", "service.warmup", "ladder, cost model fit"),
    ("service.engine", "service.batcher", "import"),
    ("service.batcher", "service.worker", "batches of pairs"),
    ("service.engine", "service.worker", "import"),
    ("service.worker", "service.scorers.cross_encoder", "session.run"),
    ("service.engine", "relevance_core.activation", "import"),
    ("service.api.pipeline", "service.shadow", "import"),
    ("service.shadow", "relevance_core.teacher", "import"),
    ("service.api.pipeline", "service.api.errors", "domain errors: 4xx/5xx bodies"),
]

TRAINING_FLOW = [
    ("training.data", "training.augment", "catalogue, splits by query"),
    ("training.stages", "training.teacher", "stage teacher"),
    ("training.teacher", "relevance_core.teacher", "import"),
    ("training.stages", "training.label", "import"),
    ("training.label", "relevance_core.teacher", "teacher labels, cached"),
    ("training.stages", "training.distill", "stage distill (fit_run)"),
    ("training.distill", "training.student", "import"),
    ("training.distill", "training.losses", "import"),
    ("training.stages", "training.committee", "stage committee"),
    ("training.evaluation.stage", "training.evaluation.systems", "import"),
    ("training.evaluation.stage", "training.evaluation.report", "import"),
    ("training.onnx_export.stage", "training.onnx_export.build", "import"),
    ("training.onnx_export.build", "training.onnx_export.parity", "import"),
    ("training.default_package", "training.onnx_export.stage", "import"),
    ("training.stages", "training.artifacts", "import"),
]


def module_path(module: str) -> Path:
    base = REPO.joinpath(*module.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"


def imports_of(module: str) -> set[str]:
    """Modules of this repository that ``module`` imports (at any depth of its code)."""
    tree = ast.parse(module_path(module).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if module_path(name).is_file()}


def check(edges: list[tuple[str, str, str]]) -> list[str]:
    """Problems: boxes that are no module, import arrows the code does not make."""
    problems = []
    for source, target, label in edges:
        for module in (source, target):
            if not module_path(module).is_file():
                problems.append(f"{module} is not a module of the repository")
        if label == "import" and target not in imports_of(source):
            problems.append(f"{source} does not import {target}")
    return problems


def _node(module: str) -> str:
    return module.replace(".", "_")


def mermaid(edges: list[tuple[str, str, str]], direction: str = "TD") -> str:
    lines = [f"flowchart {direction}"]
    for module in dict.fromkeys(m for edge in edges for m in edge[:2]):
        lines.append(f'    {_node(module)}["{module_path(module).relative_to(REPO)}"]')
    for source, target, label in edges:
        arrow = "-->" if label == "import" else f'-->|"{label}"|'
        lines.append(f"    {_node(source)} {arrow} {_node(target)}")
    return "\n".join(lines)


def service_import_graph() -> list[tuple[str, str, str]]:
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "service").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    )
    return [
        (m, i, "import")
        for m in modules
        for i in sorted(imports_of(m))
        if i in modules or i.startswith("relevance_core.")
    ]


def render() -> str:
    return "\n".join(
        [
            "# Architecture",
            "",
            "Made by `python tools/architecture.py` from its diagram source, checked against",
            "the code's imports (tests/test_architecture.py fails when this file is stale).",
            "Plain arrows are imports; labelled arrows say what flows.",
            "",
            "## Request path",
            "",
            "request → validation → admission → batcher → tokenizer → session → response:",
            "the middleware asks admission before the body is read, the router validates and",
            "builds one call, the pipeline applies the deadline and turns item positions into",
            "field names, the engine applies character limits, reserves the pairs, tokenizes",
            "(truncation is decided once, in `service/features.py`) and queues them; the",
            "worker thread runs the session on packed batches and the engine applies the",
            "manifest's activation.",
            "",
            "```mermaid",
            mermaid(REQUEST_PATH, "LR"),
            "```",
            "",
            "## Training flow",
            "",
            "`python -m training STAGE`: teacher → label → distill → committee → evaluate →",
            "export; `ensure-default` rebuilds the default package from committed labels.",
            "",
            "```mermaid",
            mermaid(TRAINING_FLOW, "TD"),
            "```",
            "",
            "## service/ imports (from the code)",
            "",
            "```mermaid",
            mermaid(service_import_graph(), "LR"),
            "```",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    problems = check(REQUEST_PATH) + check(TRAINING_FLOW)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.is_file() else ""
        return 0 if current == text else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
