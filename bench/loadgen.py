"""Closed-loop HTTP load: wrk with a Lua script when installed, else a small aiohttp loop.

Both send the same POST (body and headers) over keep-alive connections and report
requests per second and the latency p50/p99 of the measured window. Any non-2xx answer,
socket error or timeout makes the measurement fail: a fast error is not a result.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

import numpy as np

WRK_TIMEOUT = "10s"
_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %.1f %.1f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Load:
    """One request and where to send it."""

    url: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Result:
    """One measured window: answers counted, its length, latency percentiles."""

    connections: int
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s


class LoadError(RuntimeError):
    """The target answered with errors or not at all."""


class WrkLoader:
    """Runs Debian's `wrk`; latency percentiles come from its `done` hook."""

    def __init__(self, wrk: str, max_threads: int) -> None:
        self.wrk = wrk
        self.max_threads = max_threads
        self.name = f"wrk ({_wrk_version(wrk)}, up to {max_threads} thread(s))"

    def run(self, load: Load, connections: int, duration_s: float) -> Result:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-") as lua:
            lua.write(lua_script(load))
            lua.flush()
            argv = [self.wrk, f"-t{min(connections, self.max_threads)}", f"-c{connections}",
                    f"-d{duration_s:g}s", "--timeout", WRK_TIMEOUT, "-s", lua.name, load.url]
            out = subprocess.run(argv, capture_output=True, text=True, check=False,
                                 timeout=duration_s + 60)
        line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
        if out.returncode != 0 or line is None:
            raise LoadError(f"wrk failed ({out.returncode}): {out.stdout}{out.stderr}")
        requests, duration_us, *errors = (int(x) for x in line.split()[1:8])
        p50_us, p99_us = (float(x) for x in line.split()[8:10])
        if any(errors) or requests == 0:
            names = ("connect", "read", "write", "status", "timeout")
            raise LoadError(f"{load.url}: errors during load: "
                            f"{dict(zip(names, errors, strict=True))}, {requests} answers")
        return Result(connections, requests, duration_us / 1e6, p50_us / 1000, p99_us / 1000)


def _wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    words = (out.stdout + out.stderr).split()
    return " ".join(words[:2]) if words else "wrk"


class AiohttpLoader:
    """Fallback: one asyncio task per connection in this process (a Python client: it may
    saturate a core before the server does, so treat its req/s as a lower bound)."""

    def __init__(self, why: str) -> None:
        self.name = f"aiohttp closed loop in Python ({why})"

    def run(self, load: Load, connections: int, duration_s: float) -> Result:
        return asyncio.run(_closed_loop(load, connections, duration_s))


async def _closed_loop(load: Load, connections: int, duration_s: float) -> Result:
    import aiohttp

    latencies: list[float] = []
    failures: list[str] = []
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=load.headers,
                                     skip_auto_headers=("User-Agent",)) as session:
        start = time.perf_counter()
        deadline = start + duration_s

        async def worker() -> None:
            while not failures and time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with session.post(load.url, data=load.body) as resp:
                        await resp.read()
                        if resp.status >= 300:
                            failures.append(f"status {resp.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failures.append(repr(exc))
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    if failures or not latencies:
        raise LoadError(f"{load.url}: {failures[:1] or ['no answers']}")
    p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
    return Result(connections, len(latencies), elapsed, float(p50), float(p99))


def make_loader(kind: str, max_threads: int) -> WrkLoader | AiohttpLoader:
    """`auto` picks wrk when it is on PATH; `wrk` insists on it; `aiohttp` forces the fallback."""
    wrk = shutil.which("wrk")
    if kind == "aiohttp":
        return AiohttpLoader("chosen with --loadgen aiohttp")
    if kind == "auto" and wrk is None:
        return AiohttpLoader("wrk not found")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk, or --loadgen aiohttp")
    return WrkLoader(wrk, max_threads)


def lua_script(load: Load) -> str:
    """The wrk script that sends `load` and prints one `BENCH ...` line when done."""
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in load.headers.items())
    return _LUA.format(body=load.body.decode(), headers=headers)
