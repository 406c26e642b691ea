"""The OpenAI-compatible client keeps its connections alive: many requests share about
``concurrency`` connections, and one the server closed while idle is replaced without a retry
delay."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from salmon.sampling.openai_client import OpenAIClient


class _Server:
    """A minimal /v1/completions server speaking HTTP/1.1 (keep-alive); records each request's
    client port, i.e. its connection."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    server.ports.append(self.client_address[1])
                raw = json.dumps({"choices": [{"index": 0, "text": "ok"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture()
def server() -> Iterator[_Server]:
    s = _Server()
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


def test_many_requests_share_a_few_connections(server: _Server) -> None:
    client = OpenAIClient(server.url, concurrency=4)
    answers = client.complete_many([{"model": "m", "prompt": f"p{i}"} for i in range(40)])
    answers += client.complete_many([{"model": "m", "prompt": f"q{i}"} for i in range(20)])
    client.close()
    assert len(answers) == 60 and all(a["choices"][0]["text"] == "ok" for a in answers)
    assert len(server.ports) == 60
    assert len(set(server.ports)) <= 4 and client.connections <= 4, (len(set(server.ports)), client.connections)
    once = OpenAIClient(server.url, concurrency=4, keep_alive=False)  # the option: a connection per request
    once.complete_many([{"model": "m", "prompt": f"r{i}"} for i in range(10)])
    assert once.connections == 10 and len(set(server.ports[60:])) == 10


def test_a_connection_closed_while_idle_is_replaced_without_a_delay(server: _Server) -> None:
    slept: list[float] = []
    client = OpenAIClient(server.url, concurrency=1, sleep=slept.append)
    client.complete({"model": "m", "prompt": "a"})
    for conn in client._idle:  # what a server's keep-alive timeout does to an idle connection
        assert conn.sock is not None
        conn.sock.close()
    client.complete({"model": "m", "prompt": "b"})
    assert slept == [] and client.connections == 2 and client.attempts == 2
