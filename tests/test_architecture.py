"""docs/architecture.md is what tools/architecture.py makes from the code as it is now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "architecture.py"


def _tool():
    spec = importlib.util.spec_from_file_location("architecture", TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_box_is_a_module_and_every_import_arrow_is_real() -> None:
    tool = _tool()
    assert tool.check(tool.REQUEST_PATH) == []
    assert tool.check(tool.TRAINING_FLOW) == []
    # the check bites: a made-up import and a made-up module are both reported
    bad = [("service.engine", "training.stages", "import"), ("service.nothing", "service.app", "x")]
    assert len(tool.check(bad)) == 2


def test_the_committed_document_is_current() -> None:
    tool = _tool()
    assert tool.OUTPUT.read_text() == tool.render(), (
        "docs/architecture.md is stale: run `python tools/architecture.py` and commit it"
    )
