"""Start, probe and stop HTTP servers as subprocesses on loopback; refuse other targets."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]


class TargetRefused(ValueError):
    """A load target outside loopback without the explicit flag that allows it."""


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_target(url: str, *, allow_remote: bool) -> str:
    """Return ``url`` if it may be loaded: loopback, or any address when ``allow_remote``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused(f"{url!r} is not an http(s) URL")
    if not is_loopback(url) and not allow_remote:
        raise TargetRefused(
            f"{url} is not a loopback address; load tests only target this machine unless "
            "you name a host you own and pass --allow-remote"
        )
    return url.rstrip("/")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout_s: float = 2.0) -> int:
    """Status of a GET, 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return 0


def batch_stats(url: str) -> tuple[float, float] | None:
    """(sum, count) of the service's ``relevance_batch_size_pairs`` histogram, if exported."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except (OSError, ValueError):
        return None
    total = count = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith("relevance_batch_size_pairs_sum"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
        elif line.startswith("relevance_batch_size_pairs_count"):
            count += float(line.rsplit(" ", 1)[1])
    return (total, count) if found else None


def mean_batch(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    """Mean pairs per inference batch between two :func:`batch_stats` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 1)


@dataclass
class ServerProcess:
    """A server started by us: its process, base URL and log file."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, path: str, timeout_s: float) -> None:
        """Poll ``path`` until 200; raise with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} before it was "
                    f"ready; last log lines:\n{self.log_tail()}"
                )
            if http_status(self.url + path) == 200:
                return
            time.sleep(0.25)
        raise RuntimeError(
            f"{self.name} not ready on {self.url}{path} after {timeout_s:.0f} s; "
            f"last log lines:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(
    name: str,
    argv: Sequence[str],
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_dir: Path | None = None,
) -> ServerProcess:
    """Launch ``argv`` (which must bind 127.0.0.1:``port``) with its output in a log file."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="loadtest-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd or REPO_ROOT),
        )
    return ServerProcess(name, process, f"http://127.0.0.1:{port}", log_path)


def service_argv(model_dir: Path | str, port: int, python: str = sys.executable) -> list[str]:
    """This project's service, bound to loopback."""
    return [
        python,
        "-m",
        "service",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(model_dir),
    ]


@contextlib.contextmanager
def running(server: ServerProcess, ready_path: str, timeout_s: float) -> Iterator[ServerProcess]:
    """Wait for readiness, yield, and always stop the process."""
    try:
        server.wait_ready(ready_path, timeout_s)
        yield server
    finally:
        server.stop()
