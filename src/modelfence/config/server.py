"""`server:` — the listener, its limits against slow or greedy callers, the admin address."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from .base import Strict


class ReadinessSettings(Strict):
    """What `/v2/health/ready` means. `any`: ready while at least one model can serve (and
    the stores can), so in Kubernetes one dead upstream takes only its own model out of
    service, not every model on the pod; `all`: every model must be ready."""

    models: Literal["any", "all"] = Field(
        "any", description="ready when any model serves, or only when all of them do")
    probe_timeout_s: float = Field(
        0.5, gt=0, le=10, description="longest one model's or store's check may take; past "
        "it that one counts as not ready (readiness answers from the last checks meanwhile)")


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body")
    # slow or stalled callers: how long a request may take to arrive (408 beyond)
    header_timeout_s: float = Field(10.0, gt=0, le=300, description="request head must "
                                    "arrive within this (granian's header_read_timeout)")
    body_timeout_s: float = Field(10.0, gt=0, le=3600, description="whole body must arrive "
                                  "within this of the request's start")
    body_gap_timeout_s: float = Field(5.0, gt=0, le=3600, description="longest pause between "
                                      "two parts of a body")
    # connection limits (per worker where it says so); none of them is shared between workers
    backlog: int = Field(2048, ge=128, le=65535, description="connections the kernel queues "
                         "before the gateway accepts them")
    backpressure: int | None = Field(None, ge=1, description="most requests one worker "
                                     "serves at once, more wait in the backlog; null: "
                                     "backlog / workers (granian's rule)")
    max_inflight_per_principal: int = Field(64, ge=0, description="requests one principal may "
                                            "have in flight per worker (429 beyond); 0: no cap")
    max_inflight_per_tenant: int = Field(256, ge=0, description="requests one tenant may "
                                         "have in flight per worker (429 beyond); 0: no cap")
    access_log: bool = False
    trusted_proxies: list[str] = Field(
        default_factory=list, description="CIDRs of load balancers whose X-Forwarded-For "
        "is believed for the caller's address")
    admin_listen: str | None = Field(
        "127.0.0.1:9090", description="the admin API, /admin/ready and /metrics listen here "
        "(HOST:PORT or unix:/PATH), never on the public port; null: not served")
    grpc_port: int | None = Field(
        None, ge=1, le=65535, description="the Open Inference Protocol's gRPC service "
        "(inference.GRPCInferenceService) listens on server.host at this port, behind the "
        "same guards as REST (the `grpc` extra); null: not served")
    readiness: ReadinessSettings = ReadinessSettings()

    @field_validator("admin_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            listen_address(v)
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a CIDR network") from None
        return v



def listen_address(text: str) -> tuple[str, int] | Path:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) or `unix:/absolute/path`."""
    if text.startswith("unix:"):
        path = Path(text.removeprefix("unix:"))
        if not path.is_absolute():
            raise ValueError("a unix socket needs an absolute path: "
                             "unix:/run/modelfence/admin.sock")
        return path
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT or unix:/PATH")
    return host, int(port)
