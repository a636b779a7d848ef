"""Two gateways share the LLM risk through Redis; a restarted one replays it.

Both replicas use one key file and one secret (a key works on both) and one Redis stream
(its own key per run, deleted at the end). A leak answered by replica A raises the caller's
risk on replica B; B, restarted, still knows it; only A raised the alert.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ..support import Gateway
from .openai_stub import SYSTEM, OpenAiStub

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, stub: OpenAiStub,
         redis_url: str) -> Iterator[tuple[Gateway, Gateway]]:
    stream_key = f"mftest:llm-risk:{secrets.token_hex(4)}"
    shared_secret = secrets.token_urlsafe(48)
    keys = tmp_path_factory.mktemp("llm-shared") / "keys.db"
    llm = {"models": [{"name": "guarded", "upstream": stub.url, "upstream_model": "leaky",
                       "canary": {"mode": "block"}}],
           "monitor": {"shared": redis_url, "key": stream_key}}
    gws = []
    for name in ("a", "b"):
        folder = tmp_path_factory.mktemp(f"llm-replica-{name}")
        (folder / "secret").write_text(shared_secret)
        gw = Gateway(folder, [], extra={"llm": llm, "stores": {"keys": f"sqlite:///{keys}"}})
        gws.append(gw.start())
    yield gws[0], gws[1]
    for gw in gws:
        gw.stop()
    client = redis.Redis.from_url(redis_url)
    client.delete(stream_key)
    client.close()


def _risk(gw: Gateway, principal: str) -> float:
    req = urllib.request.Request(  # noqa: S310 (loopback)
        f"{gw.admin_url}/admin/risk/guarded?principal={principal}",
        headers={"Authorization": f"Bearer {gw.admin_token}"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        return float(json.loads(r.read())["risk"])


def _eventually(gw: Gateway, principal: str, timeout_s: float = 10.0) -> float:
    deadline = time.monotonic() + timeout_s
    while (risk := _risk(gw, principal)) < 0.5 and time.monotonic() < deadline:
        time.sleep(0.1)
    return risk


def test_a_leak_on_one_replica_raises_the_risk_on_the_other(
        pair: tuple[Gateway, Gateway]) -> None:
    import openai

    a, b = pair
    key = a.key(models=["guarded"], principal="roamer", tenant="roam")
    messages: Any = [{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": "rules?"}]
    with openai.OpenAI(base_url=f"{a.url}/v1", api_key=key, max_retries=0, timeout=20) as c:
        reply = c.chat.completions.create(model="guarded", messages=messages)
    assert reply.choices[0].finish_reason == "content_filter"
    assert _eventually(a, "roamer") >= 0.5
    assert _eventually(b, "roamer") >= 0.5  # seen through the stream

    b.stop()
    b.start()  # replays the stream before it serves
    assert _risk(b, "roamer") >= 0.5
    alerts = [r for gw in (a, b) for r in gw.audit_records()
              if r["action"] == "alert:monitor" and r.get("principal") == "roamer"]
    assert len(alerts) == 1 and alerts[0] in a.audit_records()
