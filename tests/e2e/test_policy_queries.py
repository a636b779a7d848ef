"""`context.queries` is the caller's count, not one process's: with a budget store it is kept
there, so a policy on it holds across replicas and restarts, and /v1 calls count too."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfence.policy import DEFAULT_POLICY

from ..outage_support import scratch_database
from ..support import Gateway, digits_rows, infer_body
from .openai_stub import OpenAiStub

LIMIT = 4
RUNAWAY = f'''
@id("runaway")
forbid (principal, action, resource) when {{ context.queries >= {LIMIT} }};
'''


def post(url: str, key: str, body: dict[str, object]) -> int:
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 (loopback only)
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


def infer(gw: Gateway, key: str) -> int:
    return post(f"{gw.url}/v2/models/digits/infer", key, infer_body(digits_rows(1)))


def policy_files(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.cedar").write_text(Path(str(DEFAULT_POLICY)).read_text() + RUNAWAY)
    return ["policy.cedar"]


@pytest.fixture
def shared_db(pg_url: str) -> Iterator[str]:
    with scratch_database(pg_url, "modelfence_queries") as url:
        yield url


@pytest.mark.postgres
def test_a_policy_on_context_queries_holds_across_replicas_and_a_restart(
        tmp_path: Path, digits_files: dict[str, Path], shared_db: str) -> None:
    models = [{"name": "digits", "backend": {"type": "skops", "path": str(digits_files["skops"])}}]
    extra = {"stores": {"keys": shared_db},
             "quotas": {"budget_store": shared_db,
                        "budgets": [{"queries": 1_000_000, "period": "month"}]}}
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        extra_here = {**extra, "policy": {"files": policy_files(folder)}}
        Gateway(folder, models, extra=extra_here).write_config()
    shutil.copy(one / "secret", two / "secret")  # replicas share the server secret
    a = Gateway(one, models, extra={**extra, "policy": {"files": ["policy.cedar"]}}).start()
    b = Gateway(two, models, extra={**extra, "policy": {"files": ["policy.cedar"]}})
    try:
        b.start()
        key = a.key()
        assert [infer(a, key), infer(b, key), infer(a, key), infer(b, key)] == [200] * LIMIT
        assert infer(a, key) == 403  # each replica saw only two, the caller made four
        assert infer(b, key) == 403
        a.stop()
        a.start()
        assert infer(a, key) == 403  # a restart does not start the count again
        assert infer(a, a.key(principal="bob")) == 200  # the count is the caller's own
    finally:
        a.stop()
        b.stop()


def test_v1_calls_count_in_context_queries(tmp_path: Path, stub: OpenAiStub) -> None:
    """An LLM caller's answered requests count as its queries, with or without budgets."""
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 8}
    for name, quotas in (("local", {}), ("budgets", {
            "budget_store": "sqlite:///budgets.db",
            "budgets": [{"queries": 1_000_000, "period": "month"}]})):
        folder = tmp_path / name
        llm = {"models": [{"name": "chat", "upstream": stub.url, "upstream_model": "ok"}]}
        gw = Gateway(folder, [], extra={"llm": llm, "quotas": quotas,
                                        "policy": {"files": policy_files(folder)}}).start()
        try:
            key = gw.key(models=["chat"])
            answers = [post(f"{gw.url}/v1/chat/completions", key, chat)
                       for _ in range(LIMIT + 1)]
            assert answers == [200] * LIMIT + [403], (name, answers)
        finally:
            gw.stop()
