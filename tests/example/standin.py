"""A local stand-in for an OpenAI-compatible upstream API (http.server, in a thread): it
records what it receives and answers like the real one, so the forwarding code runs for real."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "standin-model"
# The stand-in refuses this model with a 400 in OpenAI's shape.
REFUSED_MODEL = "refuse-me"
# And answers this one with a 500.
FAILING_MODEL = "fail-me"
# Streams 50 words, one every 0.1 s: a completion that holds its slot for 5 s.
SLOW_MODEL = "slow"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class StandIn:
    url: str  # the OpenAI-style base URL, ending in /v1
    received: list[Received] = field(default_factory=list)


def reply_text(body: dict[str, Any]) -> str:
    return "standin: " + str(body["messages"][-1]["content"])


class Handler(BaseHTTPRequestHandler):
    standin: StandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean

    def do_GET(self) -> None:
        self.record(None)
        if self.path != "/v1/models":
            return self.send_json(
                404, {"error": {"message": "no such path", "type": "invalid_request_error"}}
            )
        self.send_json(
            200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1, "owned_by": "x"}]}
        )

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.record(body)
        if self.path != "/v1/chat/completions":
            return self.send_json(
                404, {"error": {"message": "no such path", "type": "invalid_request_error"}}
            )
        if body.get("model") == REFUSED_MODEL:
            error = {"message": "standin refuses this model", "type": "invalid_request_error"}
            return self.send_json(400, {"error": {**error, "param": "model", "code": "bad_model"}})
        if body.get("model") == FAILING_MODEL:
            return self.send_json(500, {"error": {"message": "standin broke", "type": "server_error"}})
        if body.get("stream"):
            return self.send_stream(body)
        message = {"role": "assistant", "content": reply_text(body)}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        self.send_json(
            200,
            {
                "id": "standin-1",
                "object": "chat.completion",
                "created": 1,
                "model": MODEL,
                "choices": [choice],
            },
        )

    def record(self, body: dict[str, Any] | None) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.standin.received.append(Received(self.command, self.path, headers, body))

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def send_stream(self, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        slow = body.get("model") == SLOW_MODEL
        for word in ["word"] * 50 if slow else reply_text(body).split(" "):
            if slow:
                time.sleep(0.1)
            chunk = {
                "id": "standin-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
            }
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


@contextmanager
def running_standin() -> Iterator[StandIn]:
    handler = type("BoundHandler", (Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    standin = StandIn(url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    handler.standin = standin
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
