"""Quotas through a real gateway: 429 with Retry-After and RateLimit headers, budgets that
survive a restart, the 80 % alert in the audit log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from ..support import Gateway, cli, digits_rows, infer_body

BODY = json.dumps(infer_body(digits_rows(1))).encode()


def quota_gateway(folder: Path, digits: dict[str, Path]) -> Gateway:
    models = [{"name": name, "backend": {"type": "skops", "path": str(digits["skops"])}}
              for name in ("digits", "scarce")]
    return Gateway(folder, models, extra={"audit": {"sink": "sqlite:///audit.db"}, "quotas": {
        "limits": [{"scope": "principal", "rate": "5/minute", "models": ["digits"]}],
        "budgets": [{"models": ["scarce"], "queries": 10, "period": "month", "alert_at": 0.8}],
    }})


async def infer(gw: Gateway, key: str, model: str) -> tuple[int, dict[str, object],
                                                           dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v2/models/{model}/infer", data=BODY,
            headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, await r.json(), {k.lower(): v for k, v in r.headers.items()}


async def test_rate_limit_answers_429_with_standard_headers(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    gw = quota_gateway(tmp_path, digits_files).start()
    try:
        key = gw.key()
        statuses = [(await infer(gw, key, "digits"))[0] for _ in range(5)]
        assert statuses == [200] * 5
        status, doc, headers = await infer(gw, key, "digits")
        assert status == 429
        assert "rate limit 5/minute per principal reached" in str(doc["error"])
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["ratelimit-limit"] == "5" and headers["ratelimit-remaining"] == "0"
        assert headers["ratelimit-policy"] == "5;w=60"
        other = gw.key(principal="bob")
        assert (await infer(gw, other, "digits"))[0] == 200  # limits are per principal
    finally:
        gw.stop()


async def test_budget_is_exact_survives_restart_and_alerts_once(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    gw = quota_gateway(tmp_path, digits_files).start()
    try:
        key = gw.key()
        first = await asyncio.gather(*(infer(gw, key, "scarce") for _ in range(6)))
        assert [s for s, _, _ in first] == [200] * 6
    finally:
        gw.stop()
    gw.start()  # same folder, same budget store: a restart does not reset the budget
    try:
        rest = await asyncio.gather(*(infer(gw, key, "scarce") for _ in range(8)))
        statuses = sorted(s for s, _, _ in rest)
        assert statuses == [200] * 4 + [429] * 4
        refused = next(r for r in rest if r[0] == 429)
        assert "extraction budget for model 'scarce' exhausted: 10 queries per month" in str(
            refused[1]["error"])
        assert int(refused[2]["retry-after"]) > 0
        await asyncio.sleep(0.5)
    finally:
        gw.stop()
    alerts = [line for line in gw.log.read_text().splitlines() if "budget alert" in line]
    assert len(alerts) == 1 and "8/10 queries" in alerts[0]
    exported = cli("audit", "export", "--config", str(gw.config), "--format", "jsonl").stdout
    actions = [json.loads(line)["record"]["action"] for line in exported.splitlines() if line]
    assert actions.count("alert:budget") == 1
    assert actions.count("infer") == 14


@pytest.mark.parametrize("model", ["digits"])
async def test_metadata_counts_against_the_rate_limit(tmp_path: Path,
                                                      digits_files: dict[str, Path],
                                                      model: str) -> None:
    gw = quota_gateway(tmp_path, digits_files).start()
    try:
        key = gw.key()
        async with aiohttp.ClientSession() as s:
            codes = []
            for _ in range(6):
                async with s.get(f"{gw.url}/v2/models/{model}",
                                 headers={"Authorization": f"Bearer {key}"}) as r:
                    codes.append(r.status)
        assert codes == [200] * 5 + [429]
    finally:
        gw.stop()
