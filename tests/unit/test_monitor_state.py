"""The monitor's state over time: volume against peers, tenants, crossings and snapshots.

Time is explicit here (`now=`), so hours of traffic replay in a moment. The digits world of
test_monitor.py supplies the model, the summary and the streams.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np
import pytest
from scipy.stats import shapiro

from modelfence.errors import ConfigurationError
from modelfence.monitor import (
    Crossing,
    DistanceNormality,
    Monitor,
    MonitorSettings,
    PeerStats,
    Summary,
    VolumeVelocity,
)
from modelfence.redteam.attacks.sampling import UniformRandom

from .test_monitor import World

Array = np.ndarray[Any, Any]
T0 = 1_700_000_000.0  # a fixed "now": streams start here


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@cache
def tiny_summary() -> Summary:
    """A summary of noise: the volume detector reads nothing in it."""
    rng = np.random.default_rng(0)
    return Summary.fit(rng.normal(size=(200, 64)), rng.dirichlet(np.ones(10), 200), cells=4)


def volume(peers: PeerStats, key: str) -> VolumeVelocity:
    return VolumeVelocity(tiny_summary(), peers=peers, key=key)


def send(det: VolumeVelocity, n: int, now: float) -> None:
    det.observe(np.zeros((n, 64)), np.full((n, 10), 0.1), now)


def steady(dets: list[VolumeVelocity], minutes: int, start: float = T0) -> None:
    """Every caller sends one query a minute, interleaved as a shared clock would."""
    for m in range(minutes):
        for det in dets:
            send(det, 1, start + 60.0 * m)


# the volume detector ----------------------------------------------------------------------


def test_volume_quiet_benign_rate_scores_zero() -> None:
    peers = PeerStats()
    dets = [volume(peers, f"user-{i}") for i in range(11)]
    steady(dets, 180)
    for det in dets:
        reading = det.score()
        assert reading.score == 0.0, reading.why


def test_volume_extreme_against_peers_scores_high() -> None:
    peers = PeerStats()
    dets = [volume(peers, f"user-{i}") for i in range(10)]
    steady(dets, 120)
    thief = volume(peers, "thief")
    for k in range(300):  # 30,000 queries in ten minutes
        send(thief, 100, T0 + 7200.0 + 2.0 * k)
    reading = thief.score()
    assert reading.score >= 0.9 and "10 peers" in reading.why, reading.why
    assert max(det.score().score for det in dets) == 0.0  # the peers are none the worse


def test_volume_never_flags_alone_short_of_extreme() -> None:
    """Bursty batch scoring (100 at once, then 10 min idle) and a fast steady user (20 a
    second), 5,000 queries each, among light users: 100x their volume, yet at most gentle."""
    groups = [PeerStats(), PeerStats()]
    for peers in groups:
        steady([volume(peers, f"light-{i}") for i in range(6)], 50)
    bursty, fast = volume(groups[0], "batch"), volume(groups[1], "fast")
    alone = volume(PeerStats(), "alone")
    top = {"batch": 0.0, "fast": 0.0}
    for b in range(50):
        for det in (bursty, alone):
            send(det, 100, T0 + 600.0 * b)
        for i in range(100):
            send(fast, 1, T0 + 3000.0 + 0.05 * (100 * b + i))
        top["batch"] = max(top["batch"], bursty.score().score)
        top["fast"] = max(top["fast"], fast.score().score)
        assert alone.score().score == 0.0  # no peers, nothing to compare with
    assert all(0.0 < t <= VolumeVelocity.GENTLE for t in top.values()), top


def test_a_bursty_benign_user_among_light_peers_is_not_flagged(world: World) -> None:
    """The whole monitor: 5,000 natural rows in bursts of 100 every 10 minutes, 100x peers."""
    monitor = Monitor(world.summary)
    for k in range(6):
        xs = world.benign(50, 20 + k)
        monitor.observe(f"light-{k}", xs, world.proba(xs), now=T0)
    xs = world.benign(5000, 9)
    p = world.proba(xs)
    crossings, top = [], 0.0
    for i in range(len(xs)):
        crossings += monitor.observe("batch", xs[i:i + 1], p[i:i + 1], now=T0 + 600.0 * (i // 100))
        top = max(top, monitor.peek("batch"))
    assert crossings == [] and top < 0.5
    assert 0.0 < monitor.risk("batch").readings["volume"].score <= VolumeVelocity.GENTLE


def test_velocity_against_own_history_is_gentle() -> None:
    peers = PeerStats()
    dets = [volume(peers, f"user-{i}") for i in range(8)]
    steady(dets, 180)
    caller = dets[0]
    for s in range(600):  # 3,000 queries in the next ten minutes
        send(caller, 5, T0 + 180 * 60.0 + s)
    reading = caller.score()
    assert 0.15 <= reading.score <= VolumeVelocity.GENTLE
    assert "own rate" in reading.why


def test_volume_memory_is_bounded() -> None:
    peers = PeerStats(capacity=64)
    det = volume(peers, "caller")
    send(det, 1, T0)
    size, shapes = det.nbytes, {k: v.shape for k, v in det.state().items()}
    for hour in range(24 * 5):  # five days, 1,000 queries an hour
        send(det, 1000, T0 + 3600.0 * hour)
    assert det.nbytes == size and {k: v.shape for k, v in det.state().items()} == shapes
    assert det.volume <= 48_000  # only the last 48 hours count
    for i in range(500):  # more callers than the peer table holds
        peers.update(f"c{i}", 10.0, 5.0, 1)
    assert len(peers.slots) == 64
    assert all(v.nbytes <= 64 * 2 * 8 for v in peers.state()[1].values())


def test_a_clock_going_backwards_counts_in_the_newest_bucket() -> None:
    det = volume(PeerStats(), "caller")
    send(det, 5, T0 + 120.0)
    send(det, 5, T0)  # another replica's clock is two minutes behind
    assert det.volume == 10 and sum(det.minutes) == 10


def test_fast_shapiro_wilk_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for n in (64, 100, 128):
        for d in (rng.normal(size=n), rng.gamma(1.5, size=n), rng.uniform(size=n)):
            assert DistanceNormality._w(d) == pytest.approx(shapiro(d).statistic, abs=1e-6)
    assert DistanceNormality._w(np.ones(64)) == 1.0


# tenants, the cached risk and crossings ------------------------------------------------------


def test_a_thief_spread_over_keys_accumulates_in_its_tenant(world: World) -> None:
    xs = world.attack(UniformRandom("soft", 3), 150)
    p = world.proba(xs)
    monitor = Monitor(world.summary)
    crossings: list[Crossing] = []
    for i in range(len(xs)):
        crossings += monitor.observe(f"key-{i % 10}", xs[i:i + 1], p[i:i + 1], tenant="acme",
                                     now=T0 + i)
    tenant = monitor.tenant_risk("acme")
    assert tenant.flagged and tenant.queries == 150
    assert monitor.peek_tenant("acme") == tenant.score
    keys = [monitor.risk(f"key-{k}") for k in range(10)]
    assert all(r.queries == 15 and r.score < 0.5 for r in keys)
    assert [(c.subject_kind, c.subject) for c in crossings] == [("tenant", "acme")]
    assert monitor.tenant_risk("other").score == 0.0 and len(monitor) == 10


def test_peek_is_the_cached_risk(world: World) -> None:
    monitor = Monitor(world.summary)
    xs = world.benign(50, 1)
    monitor.observe("a", xs, world.proba(xs), now=T0)
    assert monitor.peek("a") == monitor.risk("a").score
    assert monitor.risk("a") is monitor.risk("a")  # no recomputation on read
    assert monitor.peek("nobody") == 0.0 and monitor.peek_tenant("nobody") == 0.0


def test_crossings_are_episode_starts(world: World) -> None:
    # no dwell and no hold: an episode ends as soon as the raw risk is below release
    # (tests/unit/test_episodes.py covers dwell, hold and hysteresis)
    monitor = Monitor(world.summary, MonitorSettings(detectors=("ood",), min_dwell_s=0.0,
                                                     hold_s=0.0))
    thief = world.attack(UniformRandom("soft", 4), 100)
    calm = world.benign(400, 2)
    now = iter(T0 + np.arange(1000.0))

    def feed(xs: Array) -> list[Crossing]:
        p = world.proba(xs)
        out: list[Crossing] = []
        for i in range(len(xs)):
            out += monitor.observe("x", xs[i:i + 1], p[i:i + 1], now=next(now))
        return out

    first = feed(thief)
    assert len(first) == 1 and first[0].subject_kind == "principal" and first[0].risk.flagged
    assert feed(thief[:20]) == []  # still flagged: no new crossing
    assert feed(calm) == [] and not monitor.risk("x").flagged  # released, quietly
    again = feed(world.attack(UniformRandom("soft", 5), 100))  # fresh: the first rows are
    # re-sends now (volume only)
    assert [c.subject for c in again] == ["x"]


def test_time_must_be_finite(world: World) -> None:
    with pytest.raises(ConfigurationError, match="finite time"):
        Monitor(world.summary).observe("x", world.held[:1], world.proba(world.held[:1]),
                                       now=float("nan"))


# snapshots ----------------------------------------------------------------------------------


def traffic(world: World, seed: int, n: int) -> Iterator[tuple[str, str, Array]]:
    """(principal, tenant, rows) of mixed traffic: users, peers, and a thief over two keys."""
    rng = np.random.default_rng(seed)
    benign = world.benign(n, seed)
    attack = world.attack(UniformRandom("soft", seed), n)
    for i in range(n):
        who = int(rng.integers(0, 8))
        if who < 6:
            yield f"user-{who}", f"org-{who % 2}", benign[i:i + 1]
        else:
            yield f"thief-{who}", "shady", attack[i:i + 1]


def replay_into(monitors: list[Monitor], world: World, seed: int, n: int, start: float
                ) -> None:
    for i, (who, tenant, xs) in enumerate(traffic(world, seed, n)):
        p = world.proba(xs)
        crossings = [m.observe(who, xs, p, tenant=tenant, now=start + 0.5 * i) for m in monitors]
        assert all(c == crossings[0] for c in crossings)
        risks = [(m.risk(who), m.tenant_risk(tenant)) for m in monitors]
        assert all(r == risks[0] for r in risks)


def test_snapshot_round_trip_continues_identically(world: World) -> None:
    settings = MonitorSettings(max_principals=6)  # eviction order travels too
    a = Monitor(world.summary, settings)
    replay_into([a], world, 5, 400, T0)
    b = Monitor(world.summary, settings)
    b.restore(a.snapshot())
    for who in [*a._principals, "nobody"]:
        assert b.risk(who) == a.risk(who) and b.peek(who) == a.peek(who)
    for tenant in ("org-0", "org-1", "shady"):
        assert b.tenant_risk(tenant) == a.tenant_risk(tenant)
    assert list(b._principals) == list(a._principals)
    assert a.tenant_risk("shady").flagged
    replay_into([a, b], world, 6, 400, T0 + 3600.0)


def test_an_empty_monitor_round_trips(world: World) -> None:
    b = Monitor(world.summary)
    b.restore(Monitor(world.summary).snapshot())
    assert len(b) == 0 and b.peek("x") == 0.0


def rewrite(data: bytes, change: dict[str, Any]) -> bytes:
    """The snapshot with arrays replaced (a dict value) or header fields changed ("header")."""
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays["header"].tobytes())
    header.update(change.pop("header", {}))
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    arrays.update(change)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


@pytest.fixture(scope="module")
def snapshot(world: World) -> bytes:
    monitor = Monitor(world.summary)
    xs = world.benign(80, 3)
    monitor.observe("a", xs, world.proba(xs), tenant="t", now=T0)
    return monitor.snapshot()


@pytest.mark.parametrize(("change", "message"), [
    ({"header": {"version": 99}}, "version 99"),
    ({"header": {"detectors": ["prada"]}}, "detectors"),
    ({"header": {"n_features": 3}}, "3 features"),
    ({"header": {"summary": "0" * 16}}, "different summary"),
    ({"principal.prada.dmin": np.zeros((1, 5))}, "dmin"),
    ({"principal.repeats.digests": np.zeros((1, 5), np.int64)}, "repeat digests"),
    ({"principal.queries": np.zeros(2, np.int64)}, "inconsistent"),
    ({"tenant.coverage.cells": np.full((1, 32), 999, np.int32)}, "out of range"),
    ({"principal.peers.values": np.zeros(3)}, "peer table"),
    ({"principal.risk": np.array(["x"], dtype=object)}, "not a monitor snapshot"),
])
def test_a_bad_snapshot_is_refused(world: World, snapshot: bytes, change: dict[str, Any],
                                   message: str) -> None:
    monitor = Monitor(world.summary)
    monitor.observe("keep", world.held[:1], world.proba(world.held[:1]), now=T0)
    before = monitor.risk("keep")
    with pytest.raises(ConfigurationError, match=message):
        monitor.restore(rewrite(snapshot, dict(change)))
    assert monitor.risk("keep") is before and len(monitor) == 1  # untouched


@pytest.mark.parametrize("data", [b"", b"not a snapshot", b"PK\x03\x04" + b"\0" * 40])
def test_corrupt_bytes_are_refused(world: World, snapshot: bytes, data: bytes) -> None:
    for bad in (data, snapshot[: len(snapshot) // 2]):
        with pytest.raises(ConfigurationError, match="not a"):
            Monitor(world.summary).restore(bad)
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    with pytest.raises(ConfigurationError, match="not a"):
        Monitor(world.summary).restore(npy.getvalue())


def test_a_snapshot_of_another_model_is_refused(world: World, snapshot: bytes) -> None:
    rng = np.random.default_rng(1)
    other = Summary.fit(rng.normal(size=(120, 5)), rng.dirichlet(np.ones(3), 120), cells=4)
    with pytest.raises(ConfigurationError, match="5 and 3"):
        Monitor(other).restore(snapshot)
    with pytest.raises(ConfigurationError, match="detectors"):
        Monitor(world.summary, MonitorSettings(detectors=("ood",))).restore(snapshot)
