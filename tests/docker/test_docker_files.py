"""What can be checked of docker/ without a Docker engine.

The compose file parses and names files that exist; every path the Dockerfiles copy
exists; the images run as a non-root user with a HEALTHCHECK on /healthz; and the image's
command, run on the host exactly as written (with the image's environment, the tiny
model package and a free loopback port), serves /healthz, passes the HEALTHCHECK command
and exits cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
DEFAULT_PACKAGE = "models/minilm-homedepot"


@dataclass
class Stage:
    """The instructions of one build stage that the tests look at."""

    base: str
    copies: list[tuple[str | None, list[str], str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    healthcheck: list[str] | None = None
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def parse_env(args: str) -> dict[str, str]:
    """``ENV A=1 B="x y"`` (the key=value form) -> {"A": "1", "B": "x y"}."""
    return dict(token.split("=", 1) for token in shlex.split(args))


def stages(path: Path) -> list[Stage]:
    args_default: dict[str, str] = {}
    result: list[Stage] = []
    for keyword, args in instructions(path):
        if keyword == "ARG" and not result:
            name, _, value = args.partition("=")
            args_default[name] = value
        elif keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args_default.get(m[1], m[0]), args.split()[0])
            result.append(Stage(base=base))
        elif keyword == "COPY":
            tokens = shlex.split(args)
            flags = [t for t in tokens if t.startswith("--")]
            paths = [t for t in tokens if not t.startswith("--")]
            source_stage = next(
                (f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None
            )
            result[-1].copies.append((source_stage, paths[:-1], paths[-1]))
        elif keyword == "ENV":
            result[-1].env.update(parse_env(args))
        elif keyword == "USER":
            result[-1].user = args
        elif keyword == "HEALTHCHECK":
            result[-1].healthcheck = json.loads(args[args.index("CMD") + 3 :].strip())
        elif keyword == "CMD":
            result[-1].cmd = json.loads(args)
        elif keyword == "ENTRYPOINT":
            result[-1].entrypoint = json.loads(args)
    return result


def final(name: str) -> Stage:
    return stages(DOCKER / name)[-1]


def command(stage: Stage) -> list[str]:
    """What the container runs: ENTRYPOINT followed by CMD (both in exec form)."""
    argv = (stage.entrypoint or []) + (stage.cmd or [])
    assert argv, "the image has neither ENTRYPOINT nor CMD"
    return argv


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copy_sources_exist(name: str) -> None:
    for source_stage, sources, _ in (c for s in stages(DOCKER / name) for c in s.copies):
        if source_stage is not None or any(src.startswith("models/") for src in sources):
            continue  # from an earlier stage, or the model package (next test)
        for src in sources:
            assert (REPO / src).exists(), f"{name}: COPY source {src} is not in the repo"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_model_package_copied_exists(name: str) -> None:
    sources = [
        src for s in stages(DOCKER / name) for _, srcs, _ in s.copies for src in srcs
        if src.startswith("models/")
    ]  # fmt: skip
    assert sources == [DEFAULT_PACKAGE], f"{name} should bake in {DEFAULT_PACKAGE}: {sources}"
    if not (REPO / DEFAULT_PACKAGE / "manifest.json").is_file():
        pytest.skip(f"{DEFAULT_PACKAGE} is not built yet (python -m training); the image needs it")
    assert (REPO / DEFAULT_PACKAGE / "model.int8.onnx").is_file()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multi_stage_non_root_healthcheck(name: str) -> None:
    all_stages = stages(DOCKER / name)
    assert len(all_stages) >= 2, "build and runtime stages"
    runtime = all_stages[-1]
    assert runtime.user and runtime.user.split(":")[0] not in ("root", "0"), runtime.user
    assert runtime.healthcheck and any("/healthz" in part for part in runtime.healthcheck)
    # Config by environment: host and port come from RELEVANCE_* variables, not flags.
    assert runtime.env["RELEVANCE_HOST"] == "0.0.0.0"
    assert runtime.env["RELEVANCE_PORT"] == "8000"
    assert command(runtime)[:3] == ["python", "-m", "service"]


def _pip_installs(name: str) -> list[str]:
    return [
        args for kw, args in instructions(DOCKER / name) if kw == "RUN" and "pip install" in args
    ]


def test_cpu_image_installs_cpu_extra_only_and_gpu_image_uses_cuda() -> None:
    (cpu_install,) = _pip_installs("Dockerfile")
    assert '".[cpu]"' in cpu_install and "torch" not in cpu_install.split("&&")[0]
    assert final("Dockerfile").base.startswith("python:") and "slim" in final("Dockerfile").base
    (gpu_install,) = _pip_installs("Dockerfile.gpu")
    assert '".[gpu]"' in gpu_install and "torch" not in gpu_install
    assert final("Dockerfile.gpu").env["RELEVANCE_PROVIDER"] == "cuda"
    base = final("Dockerfile.gpu").base
    assert base.startswith("nvidia/cuda:13.") and "cudnn" in base and "runtime" in base


# --------------------------------------------------------------------------- compose


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_parses_and_references_existing_files() -> None:
    services = compose()["services"]
    assert {"relevance", "prometheus", "grafana", "locust"} <= set(services)
    build = services["relevance"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).is_file()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if "${" in source or not source.startswith("."):
                continue  # user-set path (the data directory), or a named volume
            assert (DOCKER / source).exists(), f"{name}: volume source {source} missing"
    for published in (p for s in services.values() for p in s.get("ports", [])):
        assert published.startswith("127.0.0.1:"), f"port {published} not bound to loopback"


def test_prometheus_scrapes_the_scorer_and_loads_the_alert_rules() -> None:
    services = compose()["services"]
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    mount = next(v for v in services["prometheus"]["volumes"] if v.startswith("./prometheus:"))
    container_dir = mount.split(":")[1]
    for rule_file in config["rule_files"]:
        assert rule_file.startswith(container_dir + "/")
        assert (DOCKER / "prometheus" / Path(rule_file).name).is_file()
    targets = [
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert any(t.split(":")[0] in services and t.endswith(":8000") for t in targets), targets


def test_grafana_provisioning_matches_the_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "dashboards" / "relevance.yml").read_text()
    )
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == dashboards_path
    assert list((DOCKER / "grafana" / "dashboards").glob("*.json"))


def test_locust_service_targets_the_scorer() -> None:
    locust = compose()["services"]["locust"]
    command = locust["command"]
    host = urlsplit(command.split("--host", 1)[1].split()[0]).hostname
    assert host == "relevance"
    assert any(v.startswith("../loadtest:") for v in locust["volumes"])
    assert (REPO / "loadtest" / "locustfile.py").is_file()


# --------------------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def _on_host(argv: list[str]) -> list[str]:
    # In the image `python` is the venv's; here it is this interpreter.
    return [sys.executable if a == "python" else a for a in argv]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_command_starts_the_service(name: str, tiny_model_package: Path) -> None:
    runtime = final(name)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEVANCE_")}
    image_env = {k: v for k, v in runtime.env.items() if k != "PATH"}
    env |= image_env | {
        # What `docker run -e ...` would set: the tiny package, a free loopback port.
        "RELEVANCE_MODEL_DIR": str(tiny_model_package),
        "RELEVANCE_HOST": "127.0.0.1",
        "RELEVANCE_PORT": str(port),
        "RELEVANCE_WARMUP": "false",
    }
    process = subprocess.Popen(
        _on_host(command(runtime)),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while _get(f"http://127.0.0.1:{port}/healthz") != 200:
            assert process.poll() is None, process.communicate()[0].decode()[-2000:]
            assert time.monotonic() < deadline, "no /healthz answer within 60 s"
            time.sleep(0.2)
        health = subprocess.run(_on_host(runtime.healthcheck or []), env=env, timeout=30)
        assert health.returncode == 0, "the HEALTHCHECK command failed against the service"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output = process.communicate(timeout=30)[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0].decode()
            pytest.fail(f"no exit within 30 s of SIGTERM:\n{output[-2000:]}")
    # uvicorn shuts down gracefully, then re-raises SIGTERM: -15 (143 in Docker) is a clean stop.
    assert process.returncode in (0, -signal.SIGTERM), output[-2000:]
    assert "Application shutdown complete" in output, output[-2000:]
    if runtime.env.get("RELEVANCE_PROVIDER") == "cuda":
        # Here there is no GPU: the service must say it fell back to the CPU provider.
        assert "falling back to CPUExecutionProvider" in output, output[-2000:]
