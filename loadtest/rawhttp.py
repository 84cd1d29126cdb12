"""A lean HTTP/1.1 client for load generation: one request per connection, asyncio streams.

httpx costs the sender milliseconds of CPU per request and its pool slows down with
hundreds of connections in flight; on a small machine shared with the server, an overload
run then measures the client. This client does only what a load generator needs: send a
body, read the status, the headers and a ``Content-Length`` body (or until the server
closes).
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple
from urllib.parse import urlsplit


class NoAnswer(Exception):
    """No HTTP answer; ``kind`` is ``refused``, ``timeout`` or ``disconnected``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: dict[str, str]  # names lower-cased

    def header_ms(self, name: str) -> float | None:
        """A numeric header in milliseconds (e.g. the service's ``x-total-time``), or None."""
        try:
            return float(self.headers[name])
        except (KeyError, ValueError):
            return None


async def post(
    base_url: str, path: str, body: bytes, *, timeout_s: float, method: str = "POST"
) -> tuple[int, bytes]:
    """Send one request on a new connection; returns (status, body)."""
    answer = await exchange(base_url, path, body, timeout_s=timeout_s, method=method)
    return answer.status, answer.body


async def exchange(
    base_url: str, path: str, body: bytes, *, timeout_s: float, method: str = "POST"
) -> Answer:
    """Send one request on a new connection; returns its status, body and headers."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    try:
        return await asyncio.wait_for(_exchange(host, port, method, path, body), timeout_s)
    except TimeoutError:
        raise NoAnswer("timeout") from None


async def _exchange(host: str, port: int, method: str, path: str, body: bytes) -> Answer:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise NoAnswer("refused", str(exc)) from None
    try:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise NoAnswer("disconnected", "closed before answering")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        length = headers.get("content-length")
        payload = await (reader.readexactly(int(length)) if length is not None else reader.read())
        return Answer(status, payload, headers)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        raise NoAnswer("disconnected", repr(exc)) from None
    finally:
        writer.close()
