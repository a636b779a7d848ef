"""The extraction monitor on real streams: digits, a logistic-regression victim, redteam attacks.

Rows are split three ways: the victim is trained on one part, the monitor's summary is fitted
on a second (as `monitor fit` would be, on data the model did not see), and benign callers
replay the third in random order.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from modelfence.errors import ConfigurationError
from modelfence.monitor import (
    BoundaryProbing,
    Coverage,
    Detector,
    DistanceNormality,
    Monitor,
    MonitorSettings,
    OutOfDistribution,
    Reading,
    Summary,
    Synthetic,
    combine,
)
from modelfence.redteam.attacks.base import Attack
from modelfence.redteam.attacks.jacobian import JacobianAugmentation
from modelfence.redteam.attacks.sampling import UniformRandom
from modelfence.redteam.data import Pool
from modelfence.redteam.victims import LocalVictim, Recorder

Array = np.ndarray[Any, Any]


class World:
    def __init__(self) -> None:
        x, y = load_digits(return_X_y=True)
        x = np.asarray(x, dtype=np.float64)
        order = np.random.default_rng(0).permutation(len(x))
        train, fit, held = order[:450], order[450:800], order[800:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
        self.victim = LocalVictim(model.predict_proba, n_classes=10, n_features=64,
                                  classes=None, description="digits LR")
        self.pool = Pool("digits", x[train], y[train])
        self.held = x[held]
        self.summary = Summary.fit(x[fit], self.proba(x[fit]))

    def proba(self, x: Array) -> Array:
        p = self.victim.ask(x).proba
        assert p is not None
        return p

    def benign(self, n: int, seed: int) -> Array:
        rng = np.random.default_rng(seed)
        reps = -(-n // len(self.held))
        return np.concatenate([self.held[rng.permutation(len(self.held))]
                               for _ in range(reps)])[:n]

    def attack(self, attack: Attack, budget: int) -> Array:
        rec = Recorder(self.victim, budget, soft=True)
        attack.collect(rec, self.pool)
        return rec.transcript()[0]


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def replay(world: World, xs: Array, det: Detector | None = None) -> tuple[int | None, float]:
    """(queries until flagged or None, highest risk) for one caller sending `xs` one by one."""
    monitor = Monitor(world.summary)
    p = world.proba(xs)
    first, top = None, 0.0
    for i in range(len(xs)):
        if det is None:
            monitor.observe("caller", xs[i:i + 1], p[i:i + 1])
            score = monitor.risk("caller").score
        else:
            det.observe(world.summary.transform(xs[i:i + 1]), p[i:i + 1], 1e9 + i)
            score = det.score().score
        top = max(top, score)
        if first is None and score >= 0.5:
            first = i + 1
    return first, top


# the monitor as a whole ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_benign_held_out_stays_low(world: World, seed: int) -> None:
    first, top = replay(world, world.benign(1000, seed))
    assert first is None and top < 0.5


def test_benign_repeating_user_stays_low(world: World) -> None:
    """Five passes over the held-out rows: every row sent again, none flagged."""
    first, top = replay(world, world.benign(5000, 9))
    assert first is None and top < 0.5


def test_users_of_one_or_two_classes_stay_low(world: World) -> None:
    """Each class alone, and pairs, resampled: PRADA's distances then come from one class (a
    rare style far from the rest must not decide the test) and margins from a class the model
    may often confuse (compared with that class's own cut)."""
    labels = world.proba(world.held).argmax(axis=1)
    rng = np.random.default_rng(0)
    for classes in [[c] for c in range(10)] + [[1, 8], [3, 5], [4, 9]]:
        rows = world.held[np.isin(labels, classes)]
        xs = np.concatenate([rows[rng.permutation(len(rows))] for _ in range(2000 // len(rows))])
        first, top = replay(world, xs)
        assert first is None and top < 0.5, (classes, top)


def test_a_repeated_row_counts_once(world: World) -> None:
    """Out-of-distribution rows each sent three times in a row (a client retrying) weigh as
    much as sent once, except for volume, which counts load."""
    calm = world.benign(100, 12)
    odd = world.attack(UniformRandom("soft", 5), 10)
    once, thrice = Monitor(world.summary), Monitor(world.summary)
    for monitor, xs in ((once, np.concatenate([calm, odd])),
                        (thrice, np.concatenate([calm, np.repeat(odd, 3, axis=0)]))):
        p = world.proba(xs)
        for i in range(len(xs)):
            monitor.observe("caller", xs[i:i + 1], p[i:i + 1], now=1e9 + i)
    a, b = once.risk("caller"), thrice.risk("caller")
    assert (a.queries, b.queries) == (110, 130)
    for name in ("prada", "boundary", "synthetic", "ood", "coverage"):
        assert a.readings[name] == b.readings[name], name


@pytest.mark.parametrize("attack", [UniformRandom("soft", 0), JacobianAugmentation("soft", 0)],
                         ids=lambda a: a.kind)
def test_synthetic_attacks_flagged_within_200(world: World, attack: Attack) -> None:
    first, _ = replay(world, world.attack(attack, 200))
    assert first is not None and first <= 200


def test_risk_explains_itself(world: World) -> None:
    monitor = Monitor(world.summary)
    xs = world.attack(UniformRandom("soft", 1), 100)
    monitor.observe("thief", xs, world.proba(xs))
    risk = monitor.risk("thief")
    assert risk.flagged and risk.queries == 100
    assert risk.readings["ood"].score == 1.0 and "out of distribution" in risk.explain()
    assert monitor.risk("nobody").score == 0.0 and len(monitor) == 1


def test_memory_is_bounded(world: World) -> None:
    monitor = Monitor(world.summary)
    rng = np.random.default_rng(0)
    sizes = []
    for step in range(100):
        xs = world.held[rng.integers(0, len(world.held), 1000)]
        monitor.observe("caller", xs, world.proba(xs))
        if step in (9, 99):
            sizes.append(monitor.state_bytes("caller"))
    assert sizes[0] == sizes[1] > 0
    # float32 rows: PRADA's 320 and 2,048 re-send anchors in 16 dimensions, and boundary's
    # long window; 10,000 callers in about 2.5 GB
    assert sizes[0] <= 256 * 1024
    assert monitor.risk("caller").queries == 100_000


def test_caller_table_is_an_lru(world: World) -> None:
    monitor = Monitor(world.summary, MonitorSettings(max_principals=2))
    row, p = world.held[:1], world.proba(world.held[:1])
    for name in ("a", "b", "a", "c"):
        monitor.observe(name, row, p)
    assert len(monitor) == 2
    assert monitor.risk("b").queries == 0 and monitor.risk("a").queries == 2


def test_settings_and_shapes_are_checked(world: World) -> None:
    with pytest.raises(ConfigurationError, match="unknown monitor detector"):
        MonitorSettings(detectors=("prada", "psychic"))
    with pytest.raises(ConfigurationError, match="64 features"):
        Monitor(world.summary).observe("x", np.zeros((1, 3)), np.zeros((1, 10)))
    with pytest.raises(ConfigurationError, match="10 probabilities"):
        Monitor(world.summary).observe("x", np.zeros((1, 64)), np.zeros((1, 3)))


def test_noisy_or() -> None:
    assert Reading(0.5, lambda: "late") == Reading(0.5, "late")  # explanations format lazily
    assert combine({}) == 0.0
    assert combine({"a": Reading(0.5, ""), "b": Reading(0.5, "")}) == pytest.approx(0.75)
    assert combine({"a": Reading(1.0, ""), "b": Reading(0.0, "")}) == 1.0


# each detector on its own -------------------------------------------------------------------


def test_prada_flags_jacobian_not_benign(world: World) -> None:
    assert replay(world, world.benign(1000, 4), DistanceNormality(world.summary))[0] is None
    first, _ = replay(world, world.attack(JacobianAugmentation("soft", 0), 300),
                      DistanceNormality(world.summary))
    assert first is not None and first <= 300


def test_boundary_probing(world: World) -> None:
    assert replay(world, world.benign(1000, 5), BoundaryProbing(world.summary))[1] < 0.5
    # points on the segment between two natural rows of different classes: line search
    rng = np.random.default_rng(0)
    a, b = world.held[rng.integers(0, 900, 200)], world.held[rng.integers(0, 900, 200)]
    mid = a + rng.uniform(0.4, 0.6, (200, 1)) * (b - a)
    first, _ = replay(world, mid, BoundaryProbing(world.summary))
    assert first is not None and first <= 200


def noisy(rows: Array, share: float, rng: np.random.Generator, sd: Array) -> Array:
    """`rows` with Gaussian noise of `share` of each feature's standard deviation `sd`."""
    out: Array = rows + rng.standard_normal(rows.shape) * share * sd
    return out


@pytest.mark.parametrize("share", [0.001, 0.01, 0.05, 0.10])
def test_noisy_resends_are_volume_only(world: World, share: float) -> None:
    """An honest caller re-reading its rows with sensor noise (0.1% to 10% of each feature's
    sd), some right away and some hundreds of rows later: the re-reads reach no detector but
    volume, so its risk stays near zero and the detectors see its fresh rows only."""
    rng = np.random.default_rng(int(share * 1000))
    fresh = world.benign(300, 21)
    sd = world.held.std(axis=0)
    order = np.concatenate([np.arange(300), rng.integers(0, 300, 600)])  # re-reads, any lag
    xs = np.concatenate([fresh, noisy(fresh[order[300:]], share, rng, sd)])
    after = order[300:] * 3 + rng.uniform(0.5, 1.0, 600) * (900 - order[300:] * 3)
    xs = xs[np.argsort(np.r_[np.arange(300) * 3, after], kind="stable")]  # each after its own
    monitor = Monitor(world.summary)
    p = world.proba(xs)
    top = 0.0
    for i in range(len(xs)):
        monitor.observe("caller", xs[i:i + 1], p[i:i + 1], now=1e9 + i)
        top = max(top, monitor.risk("caller").score)
    state = monitor._principals["caller"]
    assert top < 0.2 and state.queries == 900
    assert state.detectors["synthetic"].flags.count == 200  # the window, full of fresh rows
    assert state.detectors["synthetic"].hits <= 10  # and they are natural


def test_fresh_rows_each_noised_are_flagged(world: World) -> None:
    """Every fresh row noised (5% of each feature's sd): off the data's integer grid and its
    weak directions, flagged within 500 queries, by `synthetic` on its own too."""
    rng = np.random.default_rng(3)
    xs = noisy(world.benign(500, 22), 0.05, rng, world.held.std(axis=0))
    first, _ = replay(world, xs)
    assert first is not None and first <= 500
    first, _ = replay(world, xs, Synthetic(world.summary))
    assert first is not None and first <= 500
    assert replay(world, world.benign(1000, 23), Synthetic(world.summary))[1] < 0.5


def test_a_walk_of_small_steps_leaves_the_resend_radius(world: World) -> None:
    """Only fresh rows (and natural rows that echo one) anchor re-sends: a walk of steps
    each inside the radius becomes fresh (evidence) once it is a radius or two away from
    where it started."""
    rng = np.random.default_rng(4)
    step = 0.5 * world.summary.resend_radius * world.summary.scale / np.sqrt(64)
    walk = world.held[0] + np.cumsum(rng.choice([-1.0, 1.0], (200, 64)) * step, axis=0)
    monitor = Monitor(world.summary)
    monitor.observe("walker", walk, world.proba(walk), now=1e9)
    assert monitor._principals["walker"].detectors["synthetic"].flags.count >= 20


def test_out_of_distribution(world: World) -> None:
    assert replay(world, world.benign(1000, 7), OutOfDistribution(world.summary))[1] < 0.5
    first, _ = replay(world, world.attack(UniformRandom("soft", 2), 200),
                      OutOfDistribution(world.summary))
    assert first is not None and first <= 30


def test_coverage(world: World) -> None:
    assert replay(world, world.benign(1000, 8), Coverage(world.summary))[1] < 0.5
    # a thief who takes one natural row from every region in turn
    cells, _ = world.summary.nearest_cell(world.summary.transform(world.held))
    by_cell = [world.held[cells == c] for c in np.unique(cells)]
    stream = np.array([rows[i % len(rows)] for i in range(8) for rows in by_cell])
    first, _ = replay(world, stream, Coverage(world.summary))
    assert first is not None and first <= 200
