"""The in-flight cap and the body deadline, without a server: counts, release, timeouts."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from modelfence.errors import BadRequest, ClientDisconnected, RateLimited, RequestTimeout
from modelfence.gateway.body_deadline import BodyDeadline
from modelfence.identity.principal import Principal
from modelfence.kernel.call import Call
from modelfence.kernel.chain import Guard, GuardChain
from modelfence.quota.inflight import InflightGuard


class Identified(Guard[Call]):
    """Stands for the identity guard: the test's calls carry their principal already."""

    name: ClassVar[str] = "identity"
    provides: ClassVar[frozenset[str]] = frozenset({"principal"})

    async def on_request(self, call: Call) -> None:
        assert call.principal is not None


def call_of(principal: str, tenant: str = "acme") -> Call:
    call = Call(request=None, action="infer", model_name="m")  # type: ignore[arg-type]
    call.principal = Principal(id=principal, tenant=tenant, models=("*",))
    return call


async def test_principal_cap_refuses_with_retry_after_and_releases_on_complete() -> None:
    guard = InflightGuard(per_principal=2, per_tenant=0)
    first, second = call_of("alice"), call_of("alice")
    await guard.on_request(first)
    await guard.on_request(second)
    third = call_of("alice")
    with pytest.raises(RateLimited) as refused:
        await guard.on_request(third)
    assert refused.value.reason == "inflight_limit"
    assert refused.value.headers()["Retry-After"] == "1"
    assert "principal 'alice'" in refused.value.message
    await guard.on_complete(third)  # refused: gives back nothing
    assert guard.in_flight("acme", "alice") == 2
    await guard.on_request(call_of("bob"))  # another principal has its own count
    await guard.on_complete(first)
    await guard.on_request(call_of("alice"))  # a slot came back
    assert guard.in_flight("acme", "alice") == 2


async def test_tenant_cap_counts_every_principal_of_the_tenant() -> None:
    guard = InflightGuard(per_principal=10, per_tenant=3)
    calls = [call_of(p) for p in ("a", "b", "c")]
    for c in calls:
        await guard.on_request(c)
    with pytest.raises(RateLimited, match="tenant 'acme'"):
        await guard.on_request(call_of("d"))
    await guard.on_request(call_of("d", tenant="other"))
    for c in calls:
        await guard.on_complete(c)
    assert guard.in_flight("acme") == 0
    assert guard._principals.get(("acme", "a")) is None  # an idle caller leaves no entry


async def test_zero_turns_the_caps_off() -> None:
    guard = InflightGuard(per_principal=0, per_tenant=0)
    assert not guard.active
    for _ in range(1000):
        await guard.on_request(call_of("alice"))


async def test_a_denial_after_the_cap_still_gives_the_slot_back() -> None:
    guard = InflightGuard(per_principal=1, per_tenant=1)
    chain = GuardChain(Call, [Identified(), guard])
    call = call_of("alice")

    async def failing(call: Call) -> None:
        raise BadRequest("no")

    with pytest.raises(BadRequest):
        await chain.run(call, failing)
    await chain.complete(call)
    assert guard.in_flight("acme", "alice") == 0


class Feed:
    """An ASGI receive fed by the test: each message after its delay."""

    def __init__(self, *messages: tuple[float, dict[str, Any]]) -> None:
        self._messages = list(messages)

    async def __call__(self) -> dict[str, Any]:
        if not self._messages:
            await asyncio.sleep(3600)
        delay, message = self._messages.pop(0)
        await asyncio.sleep(delay)
        return message


async def read_all(mw_args: dict[str, Any], feed: Feed, headers: list[Any] | None = None
                   ) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            got.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    mw = BodyDeadline(app, **mw_args)
    scope = {"type": "http", "path": "/x", "headers": headers or []}
    await mw(scope, feed, None)  # type: ignore[arg-type]
    return got


def chunk(body: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_body_deadline_bounds_the_gap_between_chunks() -> None:
    timeouts: list[int] = []
    feed = Feed((0, chunk(b"{", True)), (0.3, chunk(b"}", False)))
    with pytest.raises(RequestTimeout, match=r"no pause between its parts may exceed 0\.1 s"):
        await read_all({"body_timeout_s": 5, "gap_timeout_s": 0.1,
                        "on_timeout": lambda: timeouts.append(1)}, feed)
    assert timeouts == [1]


async def test_body_deadline_bounds_the_whole_body() -> None:
    feed = Feed(*[(0.05, chunk(b"x", True)) for _ in range(20)], (0, chunk(b"", False)))
    with pytest.raises(RequestTimeout, match=r"within 0\.3 s"):
        await read_all({"body_timeout_s": 0.3, "gap_timeout_s": 0.2}, feed)


async def test_body_deadline_passes_a_timely_body_and_then_gets_out_of_the_way() -> None:
    feed = Feed((0, chunk(b"{", True)), (0.01, chunk(b"}", False)))
    got = await read_all({"body_timeout_s": 1, "gap_timeout_s": 1}, feed)
    assert [m["body"] for m in got] == [b"{", b"}"]

    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        seen.append((await receive())["type"])  # e.g. a stream waiting for the disconnect

    feed = Feed((0, chunk(b"", False)), (0.3, {"type": "http.disconnect"}))
    await BodyDeadline(app, body_timeout_s=0.1, gap_timeout_s=0.1)(
        {"type": "http", "headers": []}, feed, None)  # type: ignore[arg-type]
    assert seen == ["http.disconnect"]


async def test_disconnect_mid_body_is_a_client_disconnect_or_a_bad_chunked_body() -> None:
    left: list[int] = []
    feed = Feed((0, chunk(b"{", True)), (0, {"type": "http.disconnect"}))
    with pytest.raises(ClientDisconnected):
        await read_all({"body_timeout_s": 1, "gap_timeout_s": 1,
                        "on_disconnect": lambda: left.append(1)}, feed)
    assert left == [1]
    feed = Feed((0, {"type": "http.disconnect"}),)
    with pytest.raises(BadRequest, match="chunked encoding is malformed"):
        await read_all({"body_timeout_s": 1, "gap_timeout_s": 1}, feed,
                       headers=[(b"transfer-encoding", b"chunked")])
    assert left == [1]  # a malformed body is the client's error, not a departure
