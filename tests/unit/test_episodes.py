"""Episodes: hysteresis, minimum dwell, release, sticky hold and one alert per episode.

The rules (`risk.episodes.step`, shared by every protocol) are checked on raw-risk sequences
written by hand and on random ones; the monitor's use of them on the digits world of
test_monitor.py, with time explicit (`now=`), so a day of holds replays in a moment.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pytest

from modelfence.errors import ConfigurationError
from modelfence.monitor import Crossing, Monitor, MonitorSettings
from modelfence.redteam.attacks.sampling import UniformRandom
from modelfence.risk import NO_EPISODE, Alert, Episode, Hysteresis, alert_for, step
from modelfence.shaping.recommended import RECOMMENDED_BANDS, RECOMMENDED_MONITOR

from .test_monitor import World

Array = np.ndarray[Any, Any]
T0 = 1_700_000_000.0
RULES = Hysteresis.of(MonitorSettings(**RECOMMENDED_MONITOR))
EDGES = tuple(r for r, _, _ in RECOMMENDED_BANDS[1:])


def run(raws: Iterable[float], times: Iterable[float], rules: Hysteresis = RULES,
        synthetic: Sequence[float] | None = None) -> tuple[list[Episode], int]:
    """The episode after each observation, and how many episodes started."""
    ep, out, starts = NO_EPISODE, [], 0
    for i, (raw, now) in enumerate(zip(raws, times, strict=True)):
        ep, began = step(ep, raw, 0.0 if synthetic is None else synthetic[i], now, rules)
        out.append(ep)
        starts += began
    return out, starts


def band(level: float, edges: Sequence[float] = EDGES) -> int:
    return sum(level >= e for e in edges)


def changes_per_episode(eps: list[Episode], edges: Sequence[float] = EDGES) -> list[int]:
    """Band changes from the observation that starts each episode to the one that ends it."""
    counts: list[int] = []
    prev = NO_EPISODE
    for ep in eps:
        if ep.active and not prev.active:
            counts.append(0)
        if counts and (ep.active or prev.active) and band(ep.level, edges) != band(
                prev.level, edges):
            counts[-1] += 1
        prev = ep
    return counts


# the rules -----------------------------------------------------------------------------------


def test_recommended_settings_resolve() -> None:
    assert RULES.threshold == 0.5 and RULES.release == pytest.approx(0.3)
    assert RULES.min_dwell_s == 600 and RULES.hold_s == 86_400
    assert RECOMMENDED_BANDS[0][0] == 0.0 and (RULES.threshold,) == EDGES  # no edge above it
    assert Hysteresis.of(MonitorSettings(threshold=0.8)).release == pytest.approx(0.48)


def test_a_risk_oscillating_around_the_threshold_is_one_episode_with_two_band_changes() -> None:
    t = T0 + 10.0 * np.arange(400)  # 4,000 s
    raw = np.where(np.arange(400) % 2 == 0, 0.55, 0.45)  # every other query above
    raw[300:] = 0.1  # then quiet
    eps, starts = run(raw, t)
    assert starts == 1
    assert all(ep.active and ep.level >= 0.5 for ep in eps[:300])  # held through the dips
    assert not eps[-1].active and eps[-1].level == pytest.approx(0.1)
    assert changes_per_episode(eps) == [2]


@pytest.mark.parametrize("seed", range(20))
def test_any_raw_risk_changes_band_at_most_twice_per_episode(seed: int) -> None:
    """Random walks, jumps and oscillations, any spacing in time: never more than 2."""
    rng = np.random.default_rng(seed)
    n = 3000
    kind = seed % 3
    if kind == 0:  # uniform noise: the worst oscillation
        raw = rng.uniform(0, 1, n)
    elif kind == 1:  # a random walk
        raw = np.clip(0.4 + np.cumsum(rng.normal(0, 0.05, n)), 0, 1)
    else:  # a square wave around the threshold with noise
        raw = np.clip(0.5 + 0.25 * np.sign(np.sin(np.arange(n) / 7.0)) + rng.normal(0, 0.1, n),
                      0, 1)
    t = T0 + np.cumsum(rng.exponential(30.0, n))
    rules = Hysteresis(0.5, 0.3, 600.0, 0.0, frozenset())
    eps, starts = run(raw, t, rules)
    counts = changes_per_episode(eps)
    assert starts == len(counts)
    assert max(counts, default=0) <= 2
    # whatever the bands: within an episode the effective risk never falls (escalation only)
    assert all(b.level >= a.level for a, b in itertools.pairwise(eps)
               if a.active and b.since == a.since)


def test_bands_below_the_threshold_change_at_most_twice_per_dwell() -> None:
    """A lower band (from 0.25) and a raw risk wobbling around its edge: one change while the
    wobble is small; a wide wobble changes it at most twice per min_dwell_s."""
    edges = (0.25, 0.5)
    rules = Hysteresis(0.5, 0.3, 600.0, 0.0, frozenset())
    t = T0 + 5.0 * np.arange(2000)  # 10,000 s
    small = 0.25 + 0.03 * np.where(np.arange(2000) % 2 == 0, 1, -1)
    eps, starts = run(small, t, rules)
    levels = [band(ep.level, edges) for ep in eps]
    assert starts == 0 and sum(a != b for a, b in itertools.pairwise(levels)) == 0
    wide = np.where(np.arange(2000) % 2 == 0, 0.3, 0.0)
    eps, starts = run(wide, t, rules)
    levels = [0] + [band(ep.level, edges) for ep in eps]
    flips = sum(a != b for a, b in itertools.pairwise(levels))
    assert starts == 0 and 2 <= flips <= 2 * (10_000 / 600 + 1)


def test_an_episode_lasts_at_least_the_minimum_dwell() -> None:
    t = T0 + np.arange(0.0, 1200.0, 10.0)
    raw = np.zeros(len(t))
    raw[0] = 0.9  # one bad moment
    eps, starts = run(raw, t)
    assert starts == 1
    ended = next(i for i, ep in enumerate(eps) if not ep.active)
    assert t[ended] - t[0] >= 600.0 and t[ended - 1] - t[0] < 600.0
    assert eps[ended].level == 0.0


def test_an_episode_ends_only_below_release() -> None:
    t = T0 + np.arange(0.0, 3000.0, 10.0)
    raw = np.full(len(t), 0.31)  # under the threshold, over release
    raw[0] = 0.9
    eps, _ = run(raw, t)
    assert all(ep.active and ep.level == 0.9 for ep in eps)
    raw[200:] = 0.29
    eps, starts = run(raw, t)
    assert starts == 1 and eps[199].active and not eps[200].active
    assert eps[200].level == pytest.approx(0.29)


def test_sticky_hold_outlasts_decayed_synthetic_evidence() -> None:
    """Flagged for synthetic queries: held for hold_s after that evidence alone last reached
    the threshold, though the raw risk is 0 from the next query on; the same episode raised
    by other evidence ends after the dwell."""
    t = T0 + np.arange(0.0, 2 * 86_400.0, 300.0)
    raw = np.zeros(len(t))
    raw[:3] = 0.9
    synthetic = np.zeros(len(t))
    synthetic[:3] = 0.8  # the last at t[2]
    eps, starts = run(raw, t, synthetic=list(synthetic))
    ended = next(i for i, ep in enumerate(eps) if not ep.active)
    assert starts == 1 and eps[0].hold_until == t[0] + 86_400.0
    assert t[ended] >= t[2] + 86_400.0 > t[ended - 1]
    synthetic[:3] = 0.4  # some synthetic evidence, not enough alone: no hold
    eps, _ = run(raw, t, synthetic=list(synthetic))
    ended = next(i for i, ep in enumerate(eps) if not ep.active)
    assert 600.0 <= t[ended] - t[0] < 600.0 + 300.0 + 1


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="release"):
        MonitorSettings(threshold=0.5, release=0.5)
    with pytest.raises(ConfigurationError, match="min_dwell_s"):
        MonitorSettings(min_dwell_s=-1.0)
    with pytest.raises(ConfigurationError, match="hold_s"):
        MonitorSettings(hold_s=float("inf"))
    MonitorSettings(sticky=("no-such-detector",))  # unknown sticky names are ignored


# the monitor ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def thief_rows(world: World) -> Array:
    return world.attack(UniformRandom("soft", 3), 300)


def feed(monitor: Monitor, world: World, xs: Array, start: float, *, who: str = "x",
         tenant: str | None = None, gap: float = 1.0) -> list[Crossing]:
    p = world.proba(xs)
    out: list[Crossing] = []
    for i in range(len(xs)):
        out += monitor.observe(who, xs[i:i + 1], p[i:i + 1], tenant=tenant,
                               now=start + gap * i)
    return out


def test_a_flagged_thief_stays_flagged_with_one_alert_while_it_dilutes(
        world: World, thief_rows: Array) -> None:
    """Synthetic rows, then natural rows to dilute them, then synthetic again: one episode,
    one alert, the effective risk held though the raw risk falls; released once a day has
    passed since the synthetic evidence last reached the threshold. (Sticky detectors only,
    so that natural rows can bring the raw risk down within this test's few hundred rows.)"""
    monitor = Monitor(world.summary, MonitorSettings(
        **{**RECOMMENDED_MONITOR, "detectors": ("ood", "prada")}))
    crossings = feed(monitor, world, thief_rows[:150], T0, tenant="shady")
    assert len(crossings) == 1
    risk = monitor.risk("x")
    assert risk.flagged and risk.episode.hold_until > T0 + 86_000
    crossings += feed(monitor, world, world.benign(400, 1), T0 + 200, tenant="shady", gap=60)
    risk = monitor.risk("x")
    assert risk.flagged and risk.raw < 0.3 and monitor.peek("x") >= 0.5
    crossings += feed(monitor, world, thief_rows[150:], T0 + 30_000, tenant="shady")
    assert len(crossings) == 1 and monitor.risk("x").flagged
    feed(monitor, world, world.benign(400, 2), T0 + 30_300, tenant="shady", gap=60)
    held = monitor.risk("x").episode.hold_until
    assert monitor.risk("x").flagged and held >= T0 + 30_000 + 86_400
    feed(monitor, world, world.benign(20, 3), held - 100, tenant="shady")
    assert monitor.risk("x").flagged  # not a second early
    feed(monitor, world, world.benign(20, 3), held + 1, tenant="shady")
    assert not monitor.risk("x").flagged and monitor.peek("x") < 0.3


def test_principal_and_tenant_starting_together_raise_one_alert(world: World,
                                                                thief_rows: Array) -> None:
    monitor = Monitor(world.summary, MonitorSettings(detectors=("ood",)))
    crossings = feed(monitor, world, thief_rows[:100], T0, tenant="acme")
    assert len(crossings) == 1
    c = crossings[0]
    assert (c.subject_kind, c.subject, c.tenant) == ("principal", "x", "acme")
    assert c.tenant_risk is not None and c.tenant_risk.flagged
    assert monitor.tenant_risk("acme").flagged
    alert = alert_for("m", c)
    assert alert.kind == "principal" and alert.tenant_risk == c.tenant_risk.score
    assert "tenant acme is flagged too" in alert.describe()
    body = alert.to_json()
    assert body["tenant_flagged"] is True and body["subject"] == "x"


def test_a_tenant_flagged_without_its_principals_raises_a_tenant_alert(
        world: World, thief_rows: Array) -> None:
    """A Sybil: the same rows spread over ten keys flag the tenant, none of the keys."""
    monitor = Monitor(world.summary, MonitorSettings(**RECOMMENDED_MONITOR))
    p = world.proba(thief_rows[:150])
    crossings: list[Crossing] = []
    for i in range(150):
        crossings += monitor.observe(f"key-{i % 10}", thief_rows[i:i + 1], p[i:i + 1],
                                     tenant="acme", now=T0 + i)
    assert [(c.subject_kind, c.subject, c.tenant_risk) for c in crossings] == [
        ("tenant", "acme", None)]
    assert not any(monitor.risk(f"key-{k}").flagged for k in range(10))
    alert = alert_for("m", crossings[0])
    assert isinstance(alert, Alert) and alert.kind == "tenant" and alert.subject == "acme"
    assert alert.tenant == "acme"
    assert "flagged too" not in alert.describe()


def test_a_snapshot_carries_episodes(world: World, thief_rows: Array) -> None:
    settings = MonitorSettings(**RECOMMENDED_MONITOR)
    a = Monitor(world.summary, settings)
    feed(a, world, thief_rows[:100], T0, tenant="t")
    feed(a, world, world.benign(50, 3), T0 + 500, who="y", tenant="u")
    b = Monitor(world.summary, settings)
    b.restore(a.snapshot())
    for who in ("x", "y"):
        assert b.risk(who) == a.risk(who) and b.peek(who) == a.peek(who)
    assert b.risk("x").episode.active and b.risk("x").episode == a.risk("x").episode
    assert b.tenant_risk("t") == a.tenant_risk("t")
    calm = world.benign(300, 4)
    assert feed(a, world, calm, T0 + 5000, gap=60) == feed(b, world, calm, T0 + 5000, gap=60)
    ra, rb = a.risk("x"), b.risk("x")
    assert rb.flagged and rb.episode == ra.episode and rb.score == ra.score  # still held
    assert rb.raw == pytest.approx(ra.raw, abs=1e-6)


def test_two_monitors_fed_the_same_observations_agree(world: World, thief_rows: Array) -> None:
    """Episodes depend on the observations' timestamps only: replicas agree, step by step."""
    settings = MonitorSettings(**{**RECOMMENDED_MONITOR, "hold_s": 900.0})
    monitors = [Monitor(world.summary, settings) for _ in range(2)]
    rng = np.random.default_rng(7)
    benign = world.benign(600, 5)
    now = T0
    episodes = 0
    for i in range(600):
        who = int(rng.integers(0, 4))
        xs = thief_rows[i % 300:i % 300 + 1] if who == 3 and i < 300 else benign[i:i + 1]
        now += float(rng.exponential(20.0))
        p = world.proba(xs)
        got = [m.observe(f"user-{who}", xs, p, tenant=f"org-{who % 2}", now=now)
               for m in monitors]
        assert got[0] == got[1]
        episodes += len(got[0])
        for kind in ("principal", "tenant"):
            key = f"user-{who}" if kind == "principal" else f"org-{who % 2}"
            ra = monitors[0].risk(key) if kind == "principal" else monitors[0].tenant_risk(key)
            rb = monitors[1].risk(key) if kind == "principal" else monitors[1].tenant_risk(key)
            assert ra == rb
    assert episodes >= 1
