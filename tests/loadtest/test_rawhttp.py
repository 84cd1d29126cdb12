"""The lean load client: status, headers and body of one request on a real socket."""

from __future__ import annotations

import asyncio

import pytest

from loadtest import rawhttp


async def _answer_once(reply: bytes) -> tuple[asyncio.Server, str, list[bytes]]:
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        received.append(head + await reader.readexactly(length))
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", received


def test_exchange_returns_status_headers_and_body() -> None:
    reply = (
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\nRetry-After: 1\r\n"
        b"X-Total-Time: 12.500\r\n\r\n{}"
    )

    async def body() -> rawhttp.Answer:
        server, url, received = await _answer_once(reply)
        async with server:
            answer = await rawhttp.exchange(url, "/score", b'{"a": 1}', timeout_s=5)
        assert received[0].startswith(b"POST /score HTTP/1.1") and received[0].endswith(b'{"a": 1}')
        return answer

    answer = asyncio.run(body())
    assert answer.status == 429 and answer.body == b"{}"
    assert answer.headers["retry-after"] == "1"
    assert answer.header_ms("x-total-time") == pytest.approx(12.5)
    assert answer.header_ms("x-queue-time") is None


def test_post_keeps_its_status_and_body_answer() -> None:
    async def body() -> tuple[int, bytes]:
        server, url, _ = await _answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nokay")
        async with server:
            return await rawhttp.post(url, "/x", b"{}", timeout_s=5)

    assert asyncio.run(body()) == (200, b"okay")
