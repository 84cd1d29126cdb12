"""A lean HTTP/1.1 client for load generation: one request per connection, asyncio streams.

httpx costs the sender milliseconds of CPU per request and its pool slows down with
hundreds of connections in flight; on a small machine shared with the server, an overload
run then measures the client. This client does only what a load generator needs: send a
body, read the status and a ``Content-Length`` body (or until the server closes).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class NoAnswer(Exception):
    """No HTTP answer; ``kind`` is ``refused``, ``timeout`` or ``disconnected``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


async def post(
    base_url: str, path: str, body: bytes, *, timeout_s: float, method: str = "POST"
) -> tuple[int, bytes]:
    """Send one request on a new connection; returns (status, body)."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    try:
        return await asyncio.wait_for(_exchange(host, port, method, path, body), timeout_s)
    except TimeoutError:
        raise NoAnswer("timeout") from None


async def _exchange(host: str, port: int, method: str, path: str, body: bytes) -> tuple[int, bytes]:
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
        length = None
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        payload = await (reader.readexactly(length) if length is not None else reader.read())
        return status, payload
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        raise NoAnswer("disconnected", repr(exc)) from None
    finally:
        writer.close()
