"""Provider fan-out against a real HTTP server on 127.0.0.1, with one limit per provider.

The test starts a threaded HTTP server with five "providers": random latency, one that
hangs, and one request in ten answered with an error. Each provider has
``concurrency=2``; every request unit has ``timeout=0.5`` and one retry. Waiting for a slot is
not timed, so only the hanging provider's requests time out, each of its attempts really
reaches the server, and no other provider ever sees more than two requests at once.
"""

from __future__ import annotations

import asyncio
import random
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import pytest

from quantum_partitioner import ExecutionMode, QuantumPartitioner, UnitState

PROVIDERS = ("alpha", "beta", "gamma", "delta", "hang")
REQUESTS = {"alpha": 6, "beta": 6, "gamma": 6, "delta": 6, "hang": 2}


class Server:
    """The providers' server: counts requests and concurrent requests per provider."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.requests = dict.fromkeys(PROVIDERS, 0)
        self.running = dict.fromkeys(PROVIDERS, 0)
        self.peak = dict.fromkeys(PROVIDERS, 0)
        self.random = random.Random(7)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider = self.path.strip("/").split("/")[0]
                with server.lock:
                    server.requests[provider] += 1
                    server.running[provider] += 1
                    server.peak[provider] = max(server.peak[provider], server.running[provider])
                    latency = server.random.uniform(0.05, 0.2)
                    failing = server.random.random() < 0.1
                try:
                    # The hanging provider answers only when the test ends (bounded wait).
                    server.stop.wait(2.0 if provider == "hang" else latency)
                finally:
                    with server.lock:
                        server.running[provider] -= 1
                body = f"{provider}:{self.path}".encode()
                try:
                    self.send_response(500 if failing else 200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (a timed-out attempt): nobody to answer

            def handle_error(self, *args: object) -> None:
                pass

            def log_message(self, *args: object) -> None:
                pass

        class Listener(ThreadingHTTPServer):
            request_queue_size = 64  # every provider's requests at once, never refused
            daemon_threads = True

        self.httpd = Listener(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def thread_request(url: str):
    def call(ctx):
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return response.read().decode()
        except urllib.error.HTTPError as error:
            error.close()  # it holds the response open
            raise ConnectionError(f"HTTP {error.code}") from None

    return call


def async_request(port: int, path: str):
    async def call(ctx):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(head.split(b"\r\n")[0].decode())
        return body.decode()

    return call


@pytest.mark.parametrize("mode", [ExecutionMode.THREAD, ExecutionMode.ASYNC], ids=str)
def test_provider_fanout_with_limits_against_a_real_server(mode):
    """No unit times out while waiting; the hanging provider's attempts reach the server."""
    with Server() as server:
        p = QuantumPartitioner(max_workers=16)
        for provider in PROVIDERS:
            p.add_limit(f"provider:{provider}", concurrency=2)
            for k in range(REQUESTS[provider]):
                path = f"/{provider}/{k}"
                url = f"http://127.0.0.1:{server.port}{path}"
                call = thread_request(url) if mode is ExecutionMode.THREAD else None
                p.add_unit(
                    call or async_request(server.port, path),
                    name=f"{provider}{k}",
                    limits=[f"provider:{provider}"],
                    timeout=0.5,
                    retries=1,
                )
        p.execute(execution_mode=mode)
        states = {name: unit.state for name, unit in p.units.items()}
        attempts = {name: unit.attempt for name, unit in p.units.items()}
        with server.lock:
            requests = dict(server.requests)
            peak = dict(server.peak)
    for name, state in states.items():
        if name.startswith("hang"):
            assert state is UnitState.TIMEOUT
        else:  # answered, or failed twice with the server's error: never timed out
            assert state in {UnitState.COMPLETED, UnitState.FAILED}, (name, state)
    assert sum(s is UnitState.COMPLETED for s in states.values()) >= 18
    hang_attempts = sum(n for name, n in attempts.items() if name.startswith("hang"))
    assert hang_attempts == 4
    assert requests["hang"] == hang_attempts  # every attempt really reached the server
    for provider in PROVIDERS[:-1]:
        assert peak[provider] <= 2
        assert requests[provider] == sum(
            n for name, n in attempts.items() if name.startswith(provider)
        )
    stats = p.limit_stats()
    assert stats["provider:hang"].released_at_timeout == 4
    assert all(s.peak <= 2 for s in stats.values())


def test_quorum_break_leaves_no_request_in_flight_in_async_mode():
    """Leaving stream() after 3 answers cancels the other coroutines: none stays connected."""
    connected = [0]

    def counted(port: int, path: str):
        call = async_request(port, path)

        async def tracked(ctx):
            connected[0] += 1
            try:
                return await call(ctx)
            finally:
                connected[0] -= 1

        return tracked

    with Server() as server:
        p = QuantumPartitioner()
        for provider in PROVIDERS:
            p.add_limit(f"provider:{provider}", concurrency=2)
            for k in range(REQUESTS[provider]):
                p.add_unit(
                    counted(server.port, f"/{provider}/{k}"),
                    name=f"{provider}{k}",
                    limits=[f"provider:{provider}"],
                    timeout=0.5,
                )
        answers = []
        with p.stream(execution_mode=ExecutionMode.ASYNC) as results:
            for done in results:
                if done.ok:
                    answers.append(done.name)
                if len(answers) == 3:
                    break
        assert len(answers) == 3
        assert connected[0] == 0  # every other request's coroutine was cancelled
        states = {unit.state for unit in p.units.values()}
        assert UnitState.CANCELED in states
        assert p.limit_stats()["provider:hang"].starts >= 1
        assert all(limit.held == 0 for limit in p.limits.values())
