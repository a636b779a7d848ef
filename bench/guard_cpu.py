"""CPU time per request of identity, policy and rate limits: in one process, no sockets.

Two measurements, both in CPU microseconds (`time.process_time`, every thread of this
process), so that a machine busy with other work changes them little:

- `micro`: one policy decision (the guard's own call, with and without the decision
  cache) and one rate-limit check on `memory://` with the event loop turning between
  checks, as it does in the gateway;
- `app`: whole OIP inference requests through the gateway's ASGI app (the digits model on
  the in-process skops backend, audit off, one API key, one per-principal rate limit),
  driven by calling the app directly; the policy cache is switched off and on in turns
  (`--ab`), or the rate limit moves between `limits`' MemoryStorage and this process's
  own windows (`--ab-rate-limit`), so both halves see the same machine.

Run it from two checkouts (PYTHONPATH=<checkout>/src) to compare versions of the code.

    .venv/bin/python bench/guard_cpu.py micro
    .venv/bin/python bench/guard_cpu.py app --requests 3000 --rounds 3 --ab
    .venv/bin/python bench/guard_cpu.py app --requests 3000 --rounds 3 --ab-rate-limit
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from modelfence.config import ModelAttributes, QuotaSettings, RateLimit, settings_from_mapping
from modelfence.identity.principal import Principal
from modelfence.kernel.call import Call
from modelfence.policy import Facts, PolicyEngine, cedar_request
from modelfence.policy.engine import DEFAULT_POLICY, DEFAULT_SCHEMA
from modelfence.quota.ratelimit import RateLimitGuard


def cpu_us(fn: Callable[[int], object], n: int) -> float:
    started = time.process_time()
    for i in range(n):
        fn(i)
    return (time.process_time() - started) / n * 1e6


async def cpu_us_async(fn: Callable[[int], Awaitable[object]], n: int) -> float:
    started = time.process_time()
    for i in range(n):
        await fn(i)
    return (time.process_time() - started) / n * 1e6


def micro(args: argparse.Namespace) -> None:
    principal = Principal(id="alice", tenant="acme", groups=("analysts",), models=("digits",),
                          key_id="0123456789abcdef", attributes={"clearance": 2})
    attrs = ModelAttributes(owner="acme", sensitivity=1, tags=["vision"])
    engine = PolicyEngine([DEFAULT_POLICY], DEFAULT_SCHEMA)
    engine.load()

    def uncached(i: int) -> object:
        request, entities = cedar_request(principal, "infer", "digits", attrs,
                                          Facts(source="127.0.0.1", risk=0.1, queries=i))
        return engine.decide(request, entities)

    decide_call = getattr(engine, "decide_call", None)

    def cached(i: int) -> object:
        assert decide_call is not None
        return decide_call(principal, "infer", "digits", attrs,
                           Facts(source="127.0.0.1", risk=0.1, queries=i, now=time.time()))

    for _ in range(args.rounds):  # interleaved A/B
        print(f"policy: build + decide (uncached)   {cpu_us(uncached, args.n):8.1f} µs")
        if decide_call is not None:
            print(f"policy: decide_call (cache)         {cpu_us(cached, args.n):8.1f} µs")
    asyncio.run(_rate_limits(args))


async def _rate_limits(args: argparse.Namespace) -> None:
    principals = [Principal(id=f"p{i}", tenant="t") for i in range(args.principals)]
    for strategy in ("moving-window", "fixed-window", "sliding-window-counter"):
        guard = RateLimitGuard(QuotaSettings(
            storage="memory://", strategy=strategy,
            limits=[RateLimit(scope="principal", rate="100000000/minute")]))
        calls = []
        for i in range(args.n):
            call = Call(None, "infer", "digits")  # type: ignore[arg-type]
            call.principal = principals[i % len(principals)]
            call.model = SimpleNamespace(name="digits")
            calls.append(call)

        async def check(i: int, guard: RateLimitGuard = guard, calls: list[Call] = calls
                        ) -> None:
            await guard.on_request(calls[i])
            await asyncio.sleep(0)  # the loop turns between requests, as in a gateway

        async def idle(i: int) -> None:
            await asyncio.sleep(0)

        await cpu_us_async(check, min(args.n, 500))
        used = await cpu_us_async(check, args.n) - await cpu_us_async(idle, args.n)
        print(f"rate limit {strategy:<24} {used:8.1f} µs "
              f"({args.principals} principals, loop turning)")
        await guard.close()


def _train(folder: Path) -> Path:
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    path = folder / "digits.skops"
    sio.dump(LogisticRegression(max_iter=2000).fit(x / 16.0, y), path)
    return path


async def _request(app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes
                   ) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080)}
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _app(args: argparse.Namespace) -> None:
    from sklearn.datasets import load_digits

    from modelfence.gateway.app import build_app, build_gateway

    os.environ.setdefault("MODELFENCE_SECRET", "s" * 40)
    os.environ.setdefault("MODELFENCE_ADMIN_TOKEN", "admin-" + "t" * 30)
    with tempfile.TemporaryDirectory(prefix="modelfence-guard-cpu-") as tmp:
        folder = Path(tmp)
        doc: dict[str, Any] = {
            "server": {"admin_listen": None},
            "stores": {"keys": f"sqlite:///{folder / 'keys.db'}"},
            "audit": {"sink": "none://", "disabled_acknowledged": True},
            "models": [{"name": "digits", "backend": {"type": "skops",
                                                      "path": str(_train(folder))}}]}
        if args.rate_limit:
            doc["quotas"] = {"limits": [{"scope": "principal", "rate": "100000000/minute"}]}
        settings = settings_from_mapping(doc)
        gw = build_gateway(settings)
        app = build_app(settings, gateway=gw)
        x, _ = load_digits(return_X_y=True)
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                       "data": [float(v) / 16.0 for v in x[0]]}]}).encode()
        async with app.router.lifespan_context(app):
            key = await gw.keys.create(principal="bench", tenant="acme", models=["digits"])
            headers = [(b"authorization", f"Bearer {key.token}".encode()),
                       (b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode())]
            path = "/v2/models/digits/infer"

            async def one(i: int) -> None:
                status = await _request(app, path, headers, body)
                if status != 200:
                    raise SystemExit(f"request {i}: HTTP {status}")

            modes = _modes(gw, args)
            await cpu_us_async(one, 300)  # warm up
            results: dict[str, list[float]] = {name: [] for name in modes}
            for _ in range(args.rounds):
                for name, switch in modes.items():
                    switch()
                    results[name].append(await cpu_us_async(one, args.requests))
            for name, samples in results.items():
                print(f"app {name:<10} {statistics.median(samples):8.1f} µs CPU per request "
                      f"(median of {args.rounds} rounds of {args.requests}: "
                      f"{', '.join(f'{s:.0f}' for s in samples)})")


def _modes(gw: Any, args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    """The variants measured in turns: the policy cache off and on (`--ab`), or the rate
    limit on limits' MemoryStorage and on this process's own windows (`--ab-rate-limit`)."""
    policy, limiter = gw.policy, gw.rate_limits
    if args.ab:
        size = policy.cache_size
        return {"cache off": lambda: setattr(policy, "cache_size", 0),
                "cache on": lambda: setattr(policy, "cache_size", size)}
    if args.ab_rate_limit:
        from limits.aio.storage import MemoryStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        local = limiter._local
        storage = MemoryStorage()

        def on_limits() -> None:  # the guard as it was: limits' memory storage, a breaker
            limiter._local, limiter._storage = None, storage
            limiter._limiter = MovingWindowRateLimiter(storage)
            limiter._breaker = limiter._breaker or limiter._make_breaker(limiter._settings)

        def on_local() -> None:
            limiter._local = local

        return {"limits memory": on_limits, "local windows": on_local}
    return {"as built": lambda: None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["micro", "app"])
    parser.add_argument("--n", type=int, default=20000, help="micro: calls per case")
    parser.add_argument("--principals", type=int, default=20, help="micro: rate-limit keys")
    parser.add_argument("--requests", type=int, default=2000, help="app: requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ab", action="store_true", help="app: policy cache off and on")
    parser.add_argument("--ab-rate-limit", action="store_true",
                        help="app: rate limit on limits' memory storage and on local windows")
    parser.add_argument("--no-rate-limit", dest="rate_limit", action="store_false")
    args = parser.parse_args()
    if args.what == "micro":
        micro(args)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_app(args))


if __name__ == "__main__":
    main()
