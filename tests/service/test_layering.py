"""What the service may import: no training code, no torch to serve, and the HTTP layer
asks admission and the engine, never the batcher or the worker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_service_module_imports_training() -> None:
    offenders = {
        str(path.relative_to(SERVICE.parent)): sorted(
            m for m in imported_modules(path) if m == "training" or m.startswith("training.")
        )
        for path in SERVICE.rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}
    assert len(offenders) > 10  # the scan did see the package


def test_the_http_layer_never_reaches_the_queue_or_the_model_thread() -> None:
    http_layer = [*sorted((SERVICE / "api").glob("*.py")), SERVICE / "middleware.py"]
    internals = {"service.batcher", "service.worker", "service.scorers"}
    found = {
        path.name: sorted(imported_modules(path) & internals)
        for path in http_layer
        if imported_modules(path) & internals
    }
    assert not found
    # The one that asks admission does import it.
    assert "service.admission" in imported_modules(SERVICE / "middleware.py")


def test_serving_imports_neither_torch_nor_training() -> None:
    probe = (
        "import sys\n"
        "import service.__main__\n"
        "from service.app import create_app\n"
        "create_app()\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'training')]\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=SERVICE.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout
