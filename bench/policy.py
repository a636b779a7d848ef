"""Policy decision time per request: building the Cedar request and deciding it.

Measures what the policy guard adds to each call (target ≤ 150 µs), with the shipped
default policy and with a larger set, policies parsed once as in the gateway: evaluated by
Cedar every time, and through the decision cache the guard uses (`decide_call`; the
requests differ in `context.queries`, which the larger set compares with a threshold).

    python bench/policy.py [--n 20000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from modelfence.config import ModelAttributes
from modelfence.identity.principal import Principal
from modelfence.policy import Facts, PolicyEngine, cedar_request
from modelfence.policy.engine import DEFAULT_POLICY, DEFAULT_SCHEMA

EXTRA = '''
@id("clearance")
forbid(principal, action, resource) when { resource.sensitivity > principal.clearance };
@id("office-hours")
forbid(principal, action == Action::"infer", resource)
when { resource.tags.contains("restricted") && (context.hour < 7 || context.hour > 19) };
@id("risky")
forbid(principal, action, resource) when { context.risk.greaterThan(decimal("0.8")) };
@id("budget")
forbid(principal, action, resource) when { context.queries > 50000 };
@id("tenant")
forbid(principal, action, resource) unless { resource.owner == principal.tenant };
'''


def measure(engine: PolicyEngine, n: int, *, cached: bool = False
            ) -> tuple[float, float, float]:
    """(p50 µs, p99 µs, mean µs) of request building + decision."""
    principal = Principal(id="alice", tenant="acme", groups=("analysts", "eu"),
                          models=("digits",), key_id="0123456789abcdef",
                          attributes={"clearance": 2, "networks": ["10.0.0.0/8", "127.0.0.0/8"]})
    attrs = ModelAttributes(owner="acme", sensitivity=1, tags=["vision"])
    samples = []
    for i in range(n):
        started = time.perf_counter()
        facts = Facts(source="127.0.0.1", risk=0.1, queries=i, now=time.time())
        if cached:
            verdict = engine.decide_call(principal, "infer", "digits", attrs, facts)
        else:
            request, entities = cedar_request(principal, "infer", "digits", attrs, facts)
            verdict = engine.decide(request, entities)
        samples.append(time.perf_counter() - started)
        assert verdict.allowed
    samples.sort()
    return (samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6,
            statistics.fmean(samples) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        larger = Path(tmp) / "larger.cedar"
        larger.write_text(DEFAULT_POLICY.read_text() + EXTRA)
        sets = {"default (3 policies)": [DEFAULT_POLICY], "larger (8 policies)": [larger]}
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
              f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}")
        print(f"{'policy set':<32}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
        for name, paths in sets.items():
            engine = PolicyEngine(paths, DEFAULT_SCHEMA)
            engine.load()
            for cached in (False, True):
                measure(engine, 500, cached=cached)  # warm up
                p50, p99, mean = measure(engine, args.n, cached=cached)
                label = f"{name}, {'cached' if cached else 'Cedar'}"
                print(f"{label:<32}{p50:>10.1f}{p99:>10.1f}{mean:>10.1f}")


if __name__ == "__main__":
    main()
