"""Readiness answers from bounded, shared rounds of checks: never slower than its bound
whatever a model or store does, `any` or `all` models, one round at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

import pytest

from modelfence.backends.base import ModelEntry
from modelfence.gateway.readiness import ANSWER_WITHIN_S, Readiness

#: longer than the window in which checks that end together are logged as one line
LOG_WINDOW_S = ANSWER_WITHIN_S * 3


class Probe:
    """A backend's or store's readiness: says `ok`, after `delay_s`; counts its calls."""

    def __init__(self, ok: bool = True, delay_s: float = 0.0) -> None:
        self.ok, self.delay_s, self.calls = ok, delay_s, 0

    async def ready(self) -> bool:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.ok


def entry(probe: Probe, refused: str | None = None) -> ModelEntry:
    return ModelEntry(settings=Any, backend=probe, refused=refused)  # type: ignore[arg-type]


def readiness(models: dict[str, Probe], stores: dict[str, Probe] | None = None,
              needed: Literal["any", "all"] = "any", timeout_s: float = 0.3,
              refused: str = "") -> Readiness:
    entries = {name: entry(p, refused if name == refused else None)
               for name, p in models.items()}
    return Readiness(entries, [(n, p.ready) for n, p in (stores or {}).items()],
                     models_needed=needed, probe_timeout_s=timeout_s)


async def test_any_is_ready_while_one_model_serves_and_all_needs_every_one() -> None:
    models = {"a": Probe(), "b": Probe(ok=False)}
    any_ = await readiness(models).verdict()
    assert any_.ready and any_.not_ready == ("model b",)
    all_ = await readiness(models, needed="all").verdict()
    assert not all_.ready and all_.not_ready == ("model b",)
    none = await readiness({"a": Probe(ok=False), "b": Probe(ok=False)}).verdict()
    assert not none.ready and none.not_ready == ("model a", "model b")


async def test_a_store_that_cannot_serve_makes_it_not_ready_in_either_mode() -> None:
    needed: Literal["any", "all"]
    for needed in ("any", "all"):
        v = await readiness({"a": Probe()}, {"key store": Probe(ok=False)},
                            needed=needed).verdict()
        assert not v.ready and v.not_ready == ("key store",)


async def test_a_refused_model_is_not_probed_and_says_why() -> None:
    probe = Probe()
    v = await readiness({"a": Probe(), "evil": probe}, refused="evil").verdict()
    assert v.ready and v.not_ready == ("model evil (refused: evil)",)
    assert probe.calls == 0


async def test_no_models_is_ready_on_its_stores() -> None:
    assert (await readiness({}, {"key store": Probe()}).verdict()).ready


async def test_a_hung_model_never_slows_the_answer_and_turns_not_ready_at_its_bound() -> None:
    hung = Probe(delay_s=3600)
    r = readiness({"a": Probe(), "hung": hung}, needed="all", timeout_s=0.2)
    started = time.perf_counter()
    first = await r.verdict()
    assert time.perf_counter() - started < 0.15  # the answer's own bound, not the check's
    assert not first.ready and "model hung (not checked yet)" in first.not_ready
    await asyncio.sleep(0.3)  # past the probe's bound: a no
    later = await r.verdict()
    assert later.not_ready == ("model hung",)
    assert not await r.model_ready("hung") and await r.model_ready("a")
    await r.close()


async def test_a_check_under_way_keeps_the_last_answer_until_it_ends() -> None:
    slow = Probe()
    r = readiness({"slow": slow}, timeout_s=0.3)
    assert (await r.verdict()).ready
    slow.delay_s, slow.ok = 0.2, False  # it now takes 200 ms to say no
    assert (await r.verdict()).ready  # still the last answer: no wait for the check
    await asyncio.sleep(0.25)
    assert not (await r.verdict()).ready
    await r.close()


async def test_callers_share_one_check_of_each() -> None:
    probe, store = Probe(delay_s=0.1), Probe(delay_s=0.1)
    r = readiness({"a": probe}, {"s": store})
    await asyncio.gather(*(r.verdict() for _ in range(50)))
    assert probe.calls == 1 and store.calls == 1
    await asyncio.sleep(0.15)
    await r.verdict()
    assert probe.calls == 2
    await r.close()


async def test_close_stops_the_checks_under_way() -> None:
    hung = Probe(delay_s=3600)
    r = readiness({"hung": hung}, timeout_s=60)
    await r.verdict()
    await r.close()
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_a_hung_check_is_not_waited_for_while_the_others_stay_fresh() -> None:
    hung, store = Probe(delay_s=3600), Probe()
    r = readiness({"a": Probe(), "hung": hung}, {"s": store}, timeout_s=60)
    await r.verdict()  # starts the hung check, waits its 50 ms once
    started = time.perf_counter()
    store.ok = False
    later = await r.verdict()
    assert time.perf_counter() - started < 0.04  # the hung check under way: not waited for
    assert not later.ready and "s" in later.not_ready  # the store's check is a fresh one
    assert hung.calls == 1
    await r.close()


@pytest.mark.parametrize("needed", ["any", "all"])
async def test_changes_are_logged_once_with_names(needed: Literal["any", "all"],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "modelfence.gateway")
    probe = Probe(ok=False)
    r = readiness({"a": Probe(), "b": probe}, needed=needed)
    await r.verdict()
    await r.verdict()
    await asyncio.sleep(LOG_WINDOW_S)
    assert caplog.text.count("not ready: model b") == 1
    probe.ok = True
    await r.verdict()
    await asyncio.sleep(LOG_WINDOW_S)
    assert "ready again" in caplog.text
    await r.close()


async def test_checks_ending_together_are_one_line_and_a_recovery_under_way_no_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    """A store outage takes out every store at once: one warning naming them all; as they
    come back one by one, what is still missing is information, not a new warning."""
    caplog.set_level(logging.INFO, "modelfence.gateway")
    keys, budgets = Probe(), Probe()
    r = readiness({"a": Probe()}, {"keys": keys, "budgets": budgets})
    await r.verdict()
    keys.ok = budgets.ok = False
    await r.verdict()
    await asyncio.sleep(LOG_WINDOW_S)
    budgets.ok = True
    await r.verdict()
    await asyncio.sleep(LOG_WINDOW_S)
    keys.ok = True
    await r.verdict()
    await asyncio.sleep(LOG_WINDOW_S)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert warnings == ["not ready: keys, budgets"]
    infos = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.INFO]
    assert infos == ["still not ready: keys", "ready again"]
    await r.close()


async def test_start_waits_for_a_whole_round() -> None:
    slow = Probe(delay_s=0.1)
    r = readiness({"slow": slow})
    await r.start()
    assert (await r.verdict()).not_ready == ()  # known before the first request


async def test_refresh_stores_checks_only_stores_and_says_each_result() -> None:
    model, up, down = Probe(), Probe(), Probe(ok=False)
    said: list[tuple[str, bool]] = []
    r = Readiness({"a": entry(model)}, [("key store", up.ready), ("audit spill", down.ready)],
                  models_needed="any", probe_timeout_s=0.3,
                  on_store=lambda name, ok: said.append((name, ok)))
    await r.refresh_stores()
    assert sorted(said) == [("audit spill", False), ("key store", True)]
    assert model.calls == 0 and up.calls == down.calls == 1
    await r.close()


async def test_refresh_stores_logs_nothing_and_the_next_readiness_request_does(
        caplog: pytest.LogCaptureFixture) -> None:
    """A scrape's checks leave the log to readiness requests: an outage keeps the lines its
    breaker writes."""
    store = Probe()
    r = readiness({"a": Probe()}, {"key store": store})
    await r.start()
    await asyncio.sleep(LOG_WINDOW_S)
    store.ok = False  # the store goes down
    with caplog.at_level(logging.INFO, logger="modelfence.gateway"):
        caplog.clear()
        await r.refresh_stores()
        await asyncio.sleep(LOG_WINDOW_S)
        assert caplog.messages == []
        assert not r.known().ready  # but the scrape's check did see it
        await r.verdict()
        await asyncio.sleep(LOG_WINDOW_S)
        assert caplog.messages == ["not ready: key store"]
    await r.close()
