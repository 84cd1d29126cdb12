"""A short locust run against the real app on loopback, through ``python -m loadtest.run``.

A handful of users for a few seconds on the tiny model package; the run must finish with
zero failures. The SLO is made generous because the test machine's cores are shared:
this checks the plumbing, not the speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RELEVANCE_", "LOADTEST_"))}


def test_short_locust_run_has_no_failures(tiny_model_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = [
        sys.executable, "-m", "loadtest.run", "--model", str(tiny_model_package),
        "--users", "4", "--duration", "4", "--max-requests", "400", "--items", "5-40",
        "--rerank-share", "0.4", "--slo-ms", "30000", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["requests"] > 0
    assert result["failures"] == 0, result["errors_by_status"]
    assert set(result["by_endpoint"]) == {"score", "rerank"}
    assert result["slo"]["held"] is True
    assert result["pairs_per_s"] > 0 and result["p99_ms"] is not None
    assert "SLO HELD" in done.stdout


def test_refuses_a_non_loopback_target(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: refused before any connection is tried.
    argv = [sys.executable, "-m", "loadtest.run", "--url", "http://192.0.2.1:8000"]
    done = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr
