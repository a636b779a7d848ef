"""A suspect behind an OpenAI-compatible chat endpoint: one row per request, the reply's text
is the label; failures are one clear error. The endpoint is a local stand-in (a remote vendor
API is the boundary this adapter exists for)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import numpy as np
import pytest

from modelfence.errors import ConfigurationError, UpstreamError
from modelfence.watermark.suspect import suspect_from


class Chat(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Chat.seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                          "body": body})
        if body["model"] == "moved":  # a 307 keeps the method, body and (in urllib) the key
            self.send_response(307)
            self.send_header("Location", "/elsewhere/chat/completions")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            return
        row = json.loads(body["messages"][0]["content"].removeprefix("classify: "))
        reply = {"choices": [{"message": {"role": "assistant",
                                          "content": f" {'big' if sum(row) > 1 else 'small'}\n"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Chat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_labels_come_from_the_reply_text(endpoint: str) -> None:
    suspect = suspect_from(endpoint, key="sk-test", model="clf", api="openai",
                           template="classify: {features}")
    labels = suspect.labels(np.array([[0.1, 0.2], [0.9, 0.8]]))
    assert labels == ["small", "big"] and suspect.asked == 2
    last = Chat.seen[-1]
    assert last["path"] == "/v1/chat/completions" and last["auth"] == "Bearer sk-test"
    assert last["body"]["temperature"] == 0


def test_failures_are_clear(endpoint: str) -> None:
    with pytest.raises(UpstreamError, match="answered 500"):
        suspect_from(endpoint, model="broken", api="openai").labels(np.zeros((1, 2)))
    with pytest.raises(ConfigurationError, match="needs --suspect-model"):
        suspect_from(endpoint, api="openai")
    with pytest.raises(ConfigurationError, match="features"):
        suspect_from(endpoint, model="m", api="openai", template="no field")


def test_a_redirect_is_not_followed_so_the_key_stays_home(endpoint: str) -> None:
    before = len(Chat.seen)
    with pytest.raises(UpstreamError, match="redirect"):
        suspect_from(endpoint, key="sk-secret", model="moved", api="openai").labels(
            np.zeros((1, 2)))
    assert [s["path"] for s in Chat.seen[before:]] == ["/v1/chat/completions"]
