"""An OTLP/HTTP traces receiver on loopback: what a collector would be sent, decoded.

No OpenTelemetry Collector installs on Debian here (no `otelcol` package; it is a Go binary),
so the end-to-end tests send to this instead: the SDK's real OTLP/HTTP exporter posts
protobuf `ExportTraceServiceRequest`s to `/v1/traces`, decoded with opentelemetry-proto as a
collector's OTLP receiver does. The raw bodies are kept too, to scan for secrets.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    kind: int  # opentelemetry.proto Span.SpanKind: 2 server, 3 client
    attributes: dict[str, Any]
    service: str


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value") or "string_value")


class OtlpReceiver:
    """Start with `start()`; `url` is the traces endpoint; `spans` what arrived so far."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                ok = self.path == "/v1/traces" and receiver._take(raw)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take(self, raw: bytes) -> bool:
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(raw)
        except Exception:
            return False
        got = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for scope in rs.scope_spans:
                for s in scope.spans:
                    got.append(Span(s.name, s.trace_id.hex(), s.span_id.hex(),
                                    s.parent_span_id.hex(), s.kind,
                                    {a.key: _value(a.value) for a in s.attributes},
                                    str(resource.get("service.name", ""))))
        with self._lock:
            self.bodies.append(raw)
            self.spans.extend(got)
        return True

    def wait_for(self, found: Callable[[list[Span]], bool], timeout_s: float = 10.0
                 ) -> list[Span]:
        """The spans received once `found` says they are all there (else AssertionError)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                spans = list(self.spans)
            if found(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans not exported within {timeout_s} s: "
                                     f"{[s.name for s in spans]}")
            time.sleep(0.02)
