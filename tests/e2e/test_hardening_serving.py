"""Slow, stalled and vanishing callers against a real granian gateway: one caller cannot
freeze the others, a client leaving is not a server failure, a bad chunked body is a 400."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..support import Gateway, digits_rows, infer_body

BODY = json.dumps(infer_body(digits_rows(1))).encode()
PATH = "/v2/models/digits/infer"


def serving_gateway(folder: Path, digits: dict[str, Path], **server: Any) -> Gateway:
    gw = Gateway(folder, [{"name": "digits",
                           "backend": {"type": "skops", "path": str(digits["skops"])}}])
    gw.extra = {"server": {"host": "127.0.0.1", "port": gw.port, "max_body_bytes": 256 * 1024,
                           "admin_listen": f"127.0.0.1:{gw.admin_port}", **server}}
    return gw


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
          ) -> Iterator[Gateway]:
    """Short read timeouts: a 1 s head, a 1 s body."""
    gw = serving_gateway(tmp_path_factory.mktemp("quick"), digits_files, header_timeout_s=1,
                         body_timeout_s=1, body_gap_timeout_s=1).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
           ) -> Iterator[Gateway]:
    """Small in-flight caps and connection limits; bodies may take a minute."""
    gw = serving_gateway(tmp_path_factory.mktemp("capped"), digits_files, body_timeout_s=60,
                         body_gap_timeout_s=60, backlog=128, max_inflight_per_principal=4,
                         max_inflight_per_tenant=6).start()
    yield gw
    gw.stop()


def head(key: str, extra: str) -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def stalled(gw: Gateway, key: str) -> socket.socket:
    """A request that declares 100 body bytes and sends one."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(head(key, "Content-Length: 100\r\n") + b"{")
    return s


def answer(s: socket.socket, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one response on `s`: read up to its Content-Length, or
    until the server closes. (After a 408 to a stalled body granian sends `connection: close`
    but does not always close at once, so the length, not the close, ends the answer.)"""
    s.settimeout(timeout_s)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
        raw_head, sep, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", raw_head)
        if sep and length and len(body) >= int(length.group(1)):
            break
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def post(gw: Gateway, key: str, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout_s)
    with s:
        s.sendall(head(key, f"Content-Length: {len(BODY)}\r\nConnection: close\r\n") + BODY)
        return answer(s, timeout_s)


def metric(gw: Gateway, name: str) -> float:
    req = urllib.request.Request(f"{gw.admin_url}/metrics",  # noqa: S310 (loopback)
                                 headers={"Authorization": f"Bearer {gw.admin_token}"})
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 (loopback)
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"{re.escape(name)}(\{{| )", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_stalled_body_gets_408_within_the_timeout(quick: Gateway) -> None:
    key = quick.key(principal="slow")
    before = metric(quick, "modelfence_body_timeouts_total")
    started = time.monotonic()
    with stalled(quick, key) as s:
        status, headers, body = answer(s)
    took = time.monotonic() - started
    assert status == 408, body
    assert "did not arrive in time" in json.loads(body)["error"]
    assert headers.get("connection") == "close"
    assert took < 5, f"408 after {took:.1f} s with a 1 s body timeout"
    assert metric(quick, "modelfence_body_timeouts_total") == before + 1
    assert "Traceback" not in quick.log.read_text()


def test_stalled_head_is_closed_within_the_header_timeout(quick: Gateway) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as s:
        s.sendall(b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: gateway\r\n")  # no end
        s.settimeout(10)
        while s.recv(65536):
            pass  # granian may answer 408 before it closes
    took = time.monotonic() - started
    assert took < 5, f"head held for {took:.1f} s with a 1 s header timeout"


def test_client_leaving_mid_body_is_counted_apart_not_as_an_internal_error(
        quick: Gateway) -> None:
    key = quick.key(principal="leaver")
    internal = metric(quick, "modelfence_internal_errors_total")
    left = metric(quick, "modelfence_client_disconnects_total")
    for _ in range(3):
        s = stalled(quick, key)
        time.sleep(0.1)
        s.close()
    wait_for(lambda: metric(quick, "modelfence_client_disconnects_total") == left + 3)
    assert metric(quick, "modelfence_internal_errors_total") == internal
    assert metric(quick, 'modelfence_requests_total{action="infer",model="digits",'
                         'status="500"}') == 0
    assert metric(quick, 'modelfence_requests_total{action="infer",model="digits",'
                         'status="499"}') >= 3
    log = quick.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log
    assert post(quick, key)[0] == 200  # its in-flight slots were given back


def test_chunked_body_with_overflowing_size_line_is_a_400(quick: Gateway) -> None:
    key = quick.key(principal="chunky")
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as s:
        s.sendall(head(key, "Transfer-Encoding: chunked\r\n")
                  + b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n")
        status, _, body = answer(s)
    assert status == 400, body
    assert "chunked encoding is malformed" in json.loads(body)["error"]
    assert metric(quick, "modelfence_internal_errors_total") == 0
    assert "Traceback" not in quick.log.read_text()


def test_inflight_caps_answer_429_per_principal_and_tenant(capped: Gateway) -> None:
    alice = capped.key(principal="alice", tenant="acme")
    bob = capped.key(principal="bob", tenant="acme")
    carol = capped.key(principal="carol", tenant="other")
    held = [stalled(capped, alice) for _ in range(4)]
    time.sleep(0.3)
    try:
        status, headers, body = post(capped, alice)
        assert status == 429, body
        assert headers["retry-after"] == "1"
        assert "too many requests in flight for principal 'alice'" in json.loads(body)["error"]
        held += [stalled(capped, bob) for _ in range(2)]
        time.sleep(0.3)
        status, _, body = post(capped, bob)  # bob holds 2 of his 4, but acme holds 6 of 6
        assert status == 429, body
        assert "for tenant 'acme'" in json.loads(body)["error"]
        assert post(capped, carol)[0] == 200  # another tenant is not affected
    finally:
        for s in held:
            s.close()
    # the slots come back when the stalled requests end (here: their clients leave)
    wait_for(lambda: post(capped, alice)[0] == 200)
    assert post(capped, bob)[0] == 200


def test_one_key_with_many_stalled_bodies_does_not_freeze_another(capped: Gateway) -> None:
    mallory = capped.key(principal="mallory", tenant="mallory")
    alice = capped.key(principal="alice2", tenant="acme")
    held = []
    try:
        for _ in range(300):  # over the 128 connections a worker serves and the backlog of 128
            held.append(stalled(capped, mallory))
        times = []
        for _ in range(20):
            started = time.monotonic()
            status, _, body = post(capped, alice, timeout_s=10)
            times.append(time.monotonic() - started)
            assert status == 200, body
        assert max(times) < 2, f"slowest answer to another key: {max(times):.2f} s"
        refused = 0
        for s in held[-20:]:  # beyond mallory's cap of 4: refused at once, connection closed
            status, headers, _ = answer(s, timeout_s=5)
            refused += status == 429 and headers.get("connection") == "close"
        assert refused == 20
    finally:
        for s in held:
            s.close()
    assert "Traceback" not in capped.log.read_text()
