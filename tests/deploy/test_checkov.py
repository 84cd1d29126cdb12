"""checkov's Kubernetes checks on each rendered overlay: no failed check, and every skipped
one carries its reason in the manifest (a ``checkov.io/skipN`` annotation next to a
comment) and is on the list below, so that a new skip is a reviewed change of this file.

checkov lives in its own venv (``.venv/checkov``, made by ``make setup`` from the
``checkov`` extra): its pins would downgrade packages of the project's venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8stools import only

# check id -> why it is skipped (the annotation in deploy/k8s/base/deployment.yaml says more).
JUSTIFIED = {
    "CKV_K8S_43": "image digest pinned at release (kustomize edit set image)",
    "CKV_K8S_15": "IfNotPresent with an immutable, digest-pinned image",
}


def checkov_bin() -> str:
    candidates = [
        os.environ.get("CHECKOV", ""),
        str(Path(sys.prefix) / "checkov" / "bin" / "checkov"),
        shutil.which("checkov") or "",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("checkov is missing: run `make setup` (it installs .venv/checkov)")


def scan(docs: list[dict[str, Any]], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    # --skip-download: no call to the vendor's platform (there is no network here).
    argv = [checkov_bin(), "-f", str(path), "--framework", "kubernetes", "--skip-download"]
    result = subprocess.run(
        [*argv, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    return report["results"]


def test_no_unjustified_finding(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    results = scan(docs, tmp_path)
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results["failed_checks"]]
    assert not failed, failed
    skipped = {
        c["check_id"]: c["check_result"].get("suppress_comment", "")
        for c in results["skipped_checks"]
    }
    assert set(skipped) == set(JUSTIFIED), skipped
    assert all(reason.strip() for reason in skipped.values()), skipped
    assert len(results["passed_checks"]) > 50


def test_a_weakened_deployment_fails(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """The gate has teeth: root, a writable root filesystem and no limits are all caught."""
    deployment = yaml.safe_load(yaml.safe_dump(only(docs, "Deployment")))
    pod = deployment["spec"]["template"]["spec"]
    del pod["securityContext"]
    main = pod["containers"][0]
    del main["securityContext"]
    del main["resources"]
    results = scan([deployment], tmp_path)
    failed = {c["check_id"] for c in results["failed_checks"]}
    # readOnlyRootFilesystem, allowPrivilegeEscalation, CPU and memory limits.
    assert {"CKV_K8S_22", "CKV_K8S_20", "CKV_K8S_11", "CKV_K8S_13"} <= failed, failed
