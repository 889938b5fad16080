"""The client's 503 handling (README: "a 503 (queue full) is retried after its Retry-After, up to retries=3 times"),
against a real HTTP server on loopback that answers from a script: 503s with Retry-After, then the real answer.

The server is a few lines of http.server in a thread, not ganserve: the point is the client's retry logic, and a full
ganserve queue cannot be made to answer 503 a chosen number of times. It records when each request arrived, so the
tests can check that the client waited at least as long as each Retry-After said (a lower bound, not a speed check).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ganserve import multipart
from ganserve.client import AsyncClient, Client, ServerError
from ganserve.imaging import encode

pytestmark = pytest.mark.slow  # the client really sleeps for each Retry-After (about 10 s in all)
BUSY = "the server is busy: 512 images are queued (limit 512); retry shortly"
PNG = encode(np.full((4, 4, 3), 7, np.uint8))


def busy(retry_after: int) -> tuple[int, dict, bytes]:
    body = json.dumps({"detail": BUSY, "field": None}).encode()
    return 503, {"Content-Type": "application/json", "Retry-After": str(retry_after)}, body


def image() -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "image/png", "X-Seed": "1"}, PNG


def image_stream(seeds) -> tuple[int, dict, bytes]:
    boundary = multipart.new_boundary()
    body = b"".join(multipart.part(boundary, {"Content-Type": "image/png", "X-Seed": str(s), "X-Index": str(i)}, PNG)
                    for i, s in enumerate(seeds)) + multipart.closing(boundary)
    return 200, {"Content-Type": multipart.content_type(boundary)}, body


class ScriptedServer:
    """Answers request i with script[i] (the last entry once the script runs out); records every request."""

    def __init__(self):
        self.script: list[tuple[int, dict, bytes]] = []
        self.requests: list[dict] = []  # {"at": monotonic time of arrival, "method", "path", "body"}
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                scripted.requests.append({"at": time.monotonic(), "method": self.command, "path": self.path,
                                          "body": body})
                status, headers, content = scripted.script[min(len(scripted.requests), len(scripted.script)) - 1]
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(content))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def gaps(self) -> list[float]:
        at = [r["at"] for r in self.requests]
        return [b - a for a, b in zip(at, at[1:])]


@pytest.fixture
def server():
    s = ScriptedServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def assert_waited(gaps: list[float], retry_afters: list[int]) -> None:
    """Each retry came at least Retry-After seconds after the 503 (the server's clock; a little slack for rounding)."""
    assert len(gaps) == len(retry_afters), gaps
    for gap, wait in zip(gaps, retry_afters):
        assert gap >= wait - 0.05, f"retried {gap:.2f} s after a 503 with Retry-After: {wait}"


def test_the_client_retries_503s_after_each_retry_after_then_returns_the_image(server):
    server.script = [busy(2), busy(1), image()]
    with Client(server.url) as client:
        assert client.generate_bytes(1, psi=0.5) == PNG
    assert [(r["method"], r["path"]) for r in server.requests] == [("GET", "/generate?seed=1&psi=0.5")] * 3
    assert_waited(server.gaps(), [2, 1])  # 2 s, not the 1 s the client waits when a 503 gives no Retry-After


def test_the_client_gives_up_after_its_retries_with_the_servers_error(server):
    server.script = [busy(1)]
    with Client(server.url) as client:  # retries=3, the documented default
        with pytest.raises(ServerError) as error:
            client.generate_bytes(1)
    assert len(server.requests) == 1 + 3
    assert_waited(server.gaps(), [1, 1, 1])
    e = error.value
    assert e.status == 503 and e.detail == BUSY and e.retry_after == 1.0 and "HTTP 503" in str(e) and BUSY in str(e)
    with Client(server.url, retries=0) as client, pytest.raises(ServerError) as error:
        client.generate_bytes(1)
    assert len(server.requests) == 1 + 3 + 1 and error.value.status == 503


def test_the_image_stream_is_retried_after_a_503_too(server):
    """generate_many_bytes (POST /generate) sends the same request again after the Retry-After."""
    server.script = [busy(1), image_stream([5, 6])]
    with Client(server.url) as client:
        assert dict(client.generate_many_bytes([5, 6], psi=0.5)) == {5: PNG, 6: PNG}
    assert [(r["method"], r["path"]) for r in server.requests] == [("POST", "/generate")] * 2
    assert [json.loads(r["body"]) for r in server.requests] == [{"seeds": [5, 6], "psi": 0.5}] * 2
    assert_waited(server.gaps(), [1])


def test_the_async_client_retries_and_gives_up_alike(server):
    async def run():
        server.script = [busy(1), image()]
        async with AsyncClient(server.url) as client:
            assert await client.generate_bytes(1) == PNG
        assert len(server.requests) == 2
        server.script, server.requests = [busy(1)], []
        async with AsyncClient(server.url, retries=1) as client:
            with pytest.raises(ServerError) as error:
                await client.generate_bytes(1)
        assert len(server.requests) == 2 and error.value.status == 503 and error.value.detail == BUSY

    asyncio.run(run())
    assert_waited(server.gaps(), [1])
