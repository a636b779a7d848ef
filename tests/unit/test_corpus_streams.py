"""The efficacy corpus's victims and callers: coverage the issue asks for, and streams that are
what their names say."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from modelfence.errors import ConfigurationError
from modelfence.monitor.corpus.behaviours import (
    BEHAVIOURS,
    BENIGN_FAMILIES,
    THIEF_FAMILIES,
    Behaviour,
    as_one_caller,
    behaviour,
    generate,
)
from modelfence.monitor.corpus.rows import decimals, resample, snap
from modelfence.monitor.corpus.victims import (
    FAMILIES,
    VICTIMS,
    VictimSpec,
    build_world,
    make_data,
    victim,
)

SMALL = VictimSpec("small-blobs", "make_blobs:rows=900,classes=3,features=6,std=2.0", "lr",
                   "dev")
ROUNDED = VictimSpec("small-rounded", "make_classification:rows=900,classes=4,features=8,"
                     "informative=5,redundant=2,sep=1.5,clusters=1,round=2", "gb", "dev")


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    return build_world(SMALL, 0)


@pytest.fixture(scope="module")
def rounded():  # type: ignore[no-untyped-def]
    return build_world(ROUNDED, 0)


# catalogue ---------------------------------------------------------------------------------


def _shape(spec: VictimSpec) -> tuple[int, int]:
    x, y = make_data(spec.data)
    return len(np.unique(y)), x.shape[1]


def test_victims_cover_classes_features_families_in_both_halves() -> None:
    names = [v.name for v in VICTIMS]
    assert len(names) == len(set(names))
    for half in ("dev", "test"):
        specs = [v for v in VICTIMS if v.half == half]
        assert len(specs) >= 12
        assert {v.family for v in specs} == set(FAMILIES)
        shapes = [_shape(v) for v in specs]
        assert min(k for k, _ in shapes) == 2 and max(k for k, _ in shapes) == 20
        assert min(d for _, d in shapes) == 5 and max(d for _, d in shapes) == 200
    sources = {v.source for v in VICTIMS}
    assert {"digits", "wine", "breast_cancer", "make_classification", "make_blobs",
            "make_moons", "make_gaussian_quantiles"} <= sources
    # some generated data recorded at a fixed precision, some at full float precision
    generated = [v for v in VICTIMS if v.source.startswith("make_")]
    assert any("round" in v.options for v in generated)
    assert any("round" not in v.options for v in generated)


def test_test_half_is_not_the_dev_half_reseeded() -> None:
    dev = {(v.data, v.family) for v in VICTIMS if v.half == "dev"}
    dev_data = {v.data for v in VICTIMS if v.half == "dev"}
    for v in VICTIMS:
        if v.half == "test":
            assert (v.data, v.family) not in dev
            # generated data differs in its settings; bundled sets differ in the family
            assert v.data not in dev_data or v.source in ("digits", "wine", "breast_cancer")


def test_every_family_in_both_halves_with_different_settings() -> None:
    names = [b.name for b in BEHAVIOURS]
    assert len(names) == len(set(names))
    for half in ("dev", "test"):
        have = {b.family for b in BEHAVIOURS if b.half == half}
        assert set(BENIGN_FAMILIES) <= have
        assert set(THIEF_FAMILIES) <= have
    for family in (*BENIGN_FAMILIES, *THIEF_FAMILIES):
        dev = {b.params for b in BEHAVIOURS if b.family == family and b.half == "dev"}
        test = {b.params for b in BEHAVIOURS if b.family == family and b.half == "test"}
        assert not dev & test, family
    scales = {float(b.options["scale"]) for b in BEHAVIOURS if b.family == "resend-noise"}
    assert scales == {0.001, 0.005, 0.01, 0.02, 0.05, 0.10}
    shares = [float(b.options["share"]) for b in BEHAVIOURS if b.family == "resend-noise"]
    assert min(shares) <= 0.1 and max(shares) >= 0.6


def test_thieves_carry_the_issue_targets() -> None:
    for b in BEHAVIOURS:
        if b.side == "benign":
            assert b.target is None
        elif b.family in ("uniform", "equation", "linesearch", "jacobian", "boundary-walk"):
            assert b.target == 200, b.name
        elif b.family.startswith("active-"):
            assert b.target == 500, b.name
        elif b.family in ("augment-noise", "augment-shift"):
            scale = float(b.options.get("scale", b.options.get("frac", 0.0)))
            assert b.target == (500 if scale >= 0.05 else None), b.name
        elif b.family in ("knockoff", "sybil-keys", "sybil-tenants", "slow-low"):
            assert b.target is None, b.name


def test_unknown_names_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        victim("nope")
    with pytest.raises(ConfigurationError):
        behaviour("nope")


# worlds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [SMALL, ROUNDED], ids=lambda s: s.name)
def test_build_world_splits_trains_and_summarizes(spec: VictimSpec) -> None:
    w = build_world(spec, 0)
    n = len(make_data(spec.data)[0])
    # pool and test rows are 35% and 15% of the data, disjoint from each other
    assert abs(len(w.pool_x) - 0.35 * n) <= 2 and abs(len(w.test_x) - 0.15 * n) <= 2
    assert not {r.tobytes() for r in w.pool_x} & {r.tobytes() for r in w.test_x}
    assert w.accuracy > 0.6
    assert w.summary.n_features == w.pool_x.shape[1]
    assert w.summary.n_classes == len(np.unique(w.pool_y))
    assert build_world(spec, 0) is w  # cached
    if spec is SMALL:  # another seed, other rows
        assert not np.array_equal(build_world(spec, 1).pool_x, w.pool_x)


def test_rounded_data_keeps_its_precision(rounded) -> None:  # type: ignore[no-untyped-def]
    assert set(decimals(rounded.pool_x).tolist()) <= {0, 1, 2}
    assert (decimals(np.random.default_rng(0).normal(size=(50, 3))) == -1).all()


# streams -----------------------------------------------------------------------------------

# enough of the catalogue to touch every generator, cheap on the small world
QUICK = [b for b in BEHAVIOURS if b.half == "dev" or b.family in
         ("boundary-walk", "sybil-keys", "equation", "uniform", "drift", "bursts")]


@pytest.mark.parametrize("b", QUICK, ids=lambda b: b.name)
def test_generate_is_deterministic_and_well_formed(world, b: Behaviour  # type: ignore[no-untyped-def]
                                                   ) -> None:
    n = 300
    s = generate(b, world, n, seed=3)
    again = generate(b, world, n, seed=3)
    assert s.x.shape == (n, world.pool_x.shape[1]) and len(s.t) == n
    assert np.array_equal(s.x, again.x) and np.array_equal(s.t, again.t)
    assert s.principals == again.principals and s.tenants == again.tenants
    assert len(s.principals) == n and len(s.tenants) == n
    assert np.isfinite(s.x).all()
    assert (np.diff(s.t) >= 0).all() and s.t[0] >= 1_750_000_000
    assert not np.array_equal(generate(b, world, n, seed=4).x, s.x)
    if b.side == "benign":  # honest callers send natural rows, every label known
        assert s.truth is not None and (s.truth >= 0).all()
    if s.truth is not None:
        known = s.truth >= 0
        assert len(s.truth) == n
        if b.family != "resend-noise":
            rows = {r.tobytes(): c for r, c in zip(world.pool_x, world.pool_y, strict=True)}
            assert all(rows[r.tobytes()] == c for r, c in
                       zip(s.x[known], s.truth[known], strict=True))


@pytest.mark.parametrize("name", ["resend-noise-1pct", "resend-noise-2pct",
                                  "resend-noise-10pct"])
def test_resend_noise_is_the_scale_its_name_says(world, name: str) -> None:  # type: ignore[no-untyped-def]
    b = behaviour(name)
    s = generate(b, world, 3000, seed=0)
    pool = {r.tobytes() for r in world.pool_x}
    fresh = np.array([r.tobytes() in pool for r in s.x])
    share = 1.0 - fresh.mean()
    assert abs(share - float(b.options["share"])) < 0.05
    # each re-send is a pool row plus noise: its nearest pool row of the same label is it
    sd = world.pool_x.std(axis=0)
    resent = s.x[~fresh]
    d2 = ((resent[:, None, :] - world.pool_x[None, :, :]) ** 2).sum(axis=2)
    nearest = world.pool_x[d2.argmin(axis=1)]
    assert (world.pool_y[d2.argmin(axis=1)] == s.truth[~fresh]).all()
    measured = float(np.std((resent - nearest) / sd))
    assert measured == pytest.approx(float(b.options["scale"]), rel=0.1)


def test_resends_at_the_data_precision_stay_on_it(rounded) -> None:  # type: ignore[no-untyped-def]
    s = generate(behaviour("resend-noise-10pct"), rounded, 1000, seed=0)
    assert np.array_equal(snap(s.x, decimals(rounded.pool_x)), s.x)
    lo, hi = rounded.pool_x.min(axis=0), rounded.pool_x.max(axis=0)
    assert ((s.x >= lo) & (s.x <= hi)).all()  # a re-read is recorded inside the data's range
    # the thief that does not snap leaves the lattice
    t = generate(behaviour("augment-noise-10pct-copies3"), rounded, 400, seed=0)
    assert not np.array_equal(snap(t.x, decimals(rounded.pool_x)), t.x)


def test_augmentation_noise_scale(world) -> None:  # type: ignore[no-untyped-def]
    s = generate(behaviour("augment-noise-10pct-copies3"), world, 2000, seed=0)
    seeds = s.x[0::4]
    copies = s.x.reshape(-1, 4, s.x.shape[1])[:, 1:, :]
    assert s.truth is not None and (s.truth[0::4] >= 0).all() and (s.truth[1::4] == -1).all()
    noise = (copies - seeds[:, None, :]) / world.pool_x.std(axis=0)
    assert float(noise.std()) == pytest.approx(0.10, rel=0.1)


def test_sybil_streams_spread_over_keys_and_tenants(world) -> None:  # type: ignore[no-untyped-def]
    keys = generate(behaviour("sybil-10-keys-noise10"), world, 1000, seed=0)
    assert len(set(keys.principals)) == 10 and len(set(keys.tenants)) == 1
    tenants = generate(behaviour("sybil-5-tenants-knockoff"), world, 1000, seed=0)
    assert len(set(tenants.tenants)) == 5 and len(set(tenants.principals)) == 10
    owner = dict(zip(tenants.principals, tenants.tenants, strict=True))
    assert len(owner) == 10  # a key belongs to one tenant
    one = generate(behaviour("random-order-1qps"), world, 100, seed=0)
    assert len(set(one.principals)) == 1 and len(set(one.tenants)) == 1
    unsplit = as_one_caller(keys)
    assert np.array_equal(unsplit.x, keys.x) and np.array_equal(unsplit.t, keys.t)
    assert len(set(unsplit.principals)) == 1 and len(set(unsplit.tenants)) == 1


def test_short_lived_users_come_and_go(world) -> None:  # type: ignore[no-untyped-def]
    s = generate(behaviour("short-lived-random"), world, 2000, seed=0)
    runs = np.diff(np.flatnonzero(np.r_[True, np.array(s.principals[1:]) !=
                                        np.array(s.principals[:-1]), True]))
    assert len(set(s.principals)) == len(runs) >= 6  # each user appears once, then is gone
    assert runs[:-1].min() >= 50 and runs.max() <= 300
    assert len(set(s.tenants)) == 1


def test_batches_share_a_timestamp_and_slow_thieves_are_slow(world) -> None:  # type: ignore[no-untyped-def]
    s = generate(behaviour("small-batches-2to8"), world, 1000, seed=0)
    sizes = np.diff(np.flatnonzero(np.r_[True, np.diff(s.t) > 0, True]))
    assert sizes.min() >= 1 and sizes.max() <= 8 and np.median(sizes) >= 3
    slow = generate(behaviour("slow-low-knockoff"), world, 500, seed=0)
    gaps = np.diff(slow.t)
    assert np.median(gaps) >= 30 and gaps.min() >= 30


def test_mixup_rows_lie_between_two_pool_rows(world) -> None:  # type: ignore[no-untyped-def]
    s = generate(behaviour("augment-mixup-uniform-clean25"), world, 1000, seed=0)
    assert s.truth is not None
    clean = s.truth >= 0
    assert 0.18 < clean.mean() < 0.32
    lo, hi = world.pool_x.min(axis=0), world.pool_x.max(axis=0)
    assert ((s.x >= lo - 1e-9) & (s.x <= hi + 1e-9)).all()


def test_interpolation_pairs_cross_classes(world) -> None:  # type: ignore[no-untyped-def]
    s = generate(behaviour("augment-interp-ends-random"), world, 600, seed=0)
    assert s.truth is not None
    ends = s.truth.reshape(-1, 3)
    assert (ends[:, 0] != ends[:, 1]).all() and (ends[:, 2] == -1).all()


def test_adaptive_thieves_ask_the_victim(world) -> None:  # type: ignore[no-untyped-def]
    walk = generate(behaviour("boundary-walk-stride0.1"), world, 400, seed=0)
    p = world.victim.ask(walk.x[-200:]).proba
    margin = np.sort(p, axis=1)[:, -1] - np.sort(p, axis=1)[:, -2]
    natural = world.victim.ask(world.pool_x).proba
    base = np.sort(natural, axis=1)[:, -1] - np.sort(natural, axis=1)[:, -2]
    assert np.median(margin) < np.quantile(base, 0.1)  # a walk stays on the boundary


def test_resample_uses_every_row_before_repeating() -> None:
    idx = resample(10, 25, np.random.default_rng(0))
    assert sorted(idx[:10].tolist()) == list(range(10))
    assert sorted(idx[10:20].tolist()) == list(range(10))


def test_bad_settings_are_configuration_errors(world) -> None:  # type: ignore[no-untyped-def]
    b = replace(behaviour("augment-mixup-beta0.4"), params=(("lam", "gamma"),))
    with pytest.raises(ConfigurationError):
        generate(b, world, 10, seed=0)
    with pytest.raises(ConfigurationError):
        generate(replace(b, family="teleport"), world, 10, seed=0)
