"""Monitor evaluation: summary files, simulated streams, replay results and calibration.

Streams here are short (hundreds of queries) so the whole file stays fast; the full-size
suite (22 benign users x 5,000 queries) is what bench/monitor.py runs.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from modelfence.errors import ConfigurationError
from modelfence.evaluation import monitor as ev
from modelfence.evaluation.streams import (
    ATTACKS,
    BENIGN,
    START,
    attack_stream,
    benign_stream,
    benign_suite,
)
from modelfence.monitor import Summary
from modelfence.redteam.data import Pool


@pytest.fixture(scope="module")
def world() -> ev.World:
    return ev.build_world("sklearn:digits", "lr", seed=0)


# summary files ----------------------------------------------------------------------------


def test_summary_round_trips(world: ev.World, tmp_path: Path) -> None:
    path = world.summary.save(tmp_path / "sub" / "digits.summary.npz")
    assert path.is_file() and not list(tmp_path.glob("sub/*.tmp"))
    back = Summary.load(path)
    for f in fields(Summary):
        assert np.array_equal(getattr(back, f.name), getattr(world.summary, f.name)), f.name
    assert isinstance(back.ood_radius, float) and back.centroids.dtype == np.float64


def _one_line(exc: pytest.ExceptionInfo[ConfigurationError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_summary_load_refuses_bad_files(world: ev.World, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as e:
        Summary.load(tmp_path / "none.npz")
    assert "does not exist" in _one_line(e)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigurationError) as e:
        Summary.load(tmp_path / "junk.npz")
    assert "not a summary file" in _one_line(e)
    np.savez(tmp_path / "obj.npz", mean=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigurationError) as e:  # pickled objects are never loaded
        Summary.load(tmp_path / "obj.npz")
    assert "not a summary file" in _one_line(e)
    with np.load(world.summary.save(tmp_path / "good.npz")) as z:
        good = {k: z[k] for k in z.files}
    np.savez(tmp_path / "v2.npz", **{**good, "format_version": np.int64(99)})
    with pytest.raises(ConfigurationError) as e:
        Summary.load(tmp_path / "v2.npz")
    assert "format version 99, expected 3" in _one_line(e)
    np.savez(tmp_path / "short.npz", **{k: v for k, v in good.items() if k != "scale"})
    with pytest.raises(ConfigurationError, match="missing scale"):
        Summary.load(tmp_path / "short.npz")
    np.savez(tmp_path / "shape.npz", **{**good, "scale": good["scale"][:3]})
    with pytest.raises(ConfigurationError, match="wrong shape"):
        Summary.load(tmp_path / "shape.npz")


# streams ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ATTACKS))
def test_attack_streams_have_their_length_and_times(world: ev.World, kind: str) -> None:
    s = attack_stream(kind, world.victim, world.pool, 120, seed=1)
    assert s.attack and s.kind == kind and len(s) == 120 == len(s.t)
    assert s.x.shape[1] == world.pool.n_features
    assert s.t[0] > START and np.all(np.diff(s.t) > 0)
    again = attack_stream(kind, world.victim, world.pool, 120, seed=1)
    assert np.array_equal(s.x, again.x) and np.array_equal(s.t, again.t)


def test_knockoff_sends_only_clean_rows_and_stops_at_the_pool(world: ev.World) -> None:
    s = attack_stream("knockoff", world.victim, world.pool, 10_000, seed=0)
    assert len(s) == len(world.pool.x)
    assert len(np.unique(s.x, axis=0)) == len(np.unique(world.pool.x, axis=0))


@pytest.mark.parametrize("kind", BENIGN)
def test_benign_streams_are_real_rows_in_order(world: ev.World, kind: str) -> None:
    held = world.pool.x
    s = benign_stream(kind, held, world.labels, 600, seed=3)
    assert not s.attack and len(s) == 600 and s.x.shape == (600, held.shape[1])
    assert np.all(np.diff(s.t) >= 0) and s.t[0] >= START
    # no noise: every row is a held-out row, byte for byte
    known = {row.tobytes() for row in held}
    assert all(row.tobytes() in known for row in s.x)
    again = benign_stream(kind, held, world.labels, 600, seed=3)
    assert np.array_equal(s.x, again.x) and np.array_equal(s.t, again.t)
    assert not np.array_equal(s.x, benign_stream(kind, held, world.labels, 600, seed=4).x)


def test_benign_kinds_behave_as_named(world: ev.World) -> None:
    held, labels = world.pool.x, world.labels
    few = benign_stream("fewclass", held, labels, 500, seed=1)
    rows = {r.tobytes(): c for r, c in zip(held, labels, strict=True)}
    assert len({rows[r.tobytes()] for r in few.x}) <= 2
    rep = benign_stream("repeater", held, labels, 500, seed=1)
    assert len(np.unique(rep.x, axis=0)) < 300  # each row sent about three times
    burst = benign_stream("bursty", held, labels, 1000, seed=1)
    gaps = np.diff(burst.t)
    assert np.mean(gaps == 0) > 0.9 and gaps.max() >= 60  # batches at once, then quiet


def test_benign_suite_is_twenty_plus_streams_of_5000(world: ev.World) -> None:
    suite = benign_suite(world.pool.x, world.labels)
    assert len(suite) >= 20 and {len(s) for s in suite} == {5000}
    assert {s.kind for s in suite} == set(BENIGN)
    assert len({s.name for s in suite}) == len(suite)


def test_stream_yields_timestamped_rows(world: ev.World) -> None:
    s = benign_stream("heldout", world.pool.x, world.labels, 5, seed=0)
    items = list(s)
    assert len(items) == 5 and items[0][0] == s.t[0] and np.array_equal(items[4][1], s.x[4])


def test_unknown_kinds_are_configuration_errors(world: ev.World) -> None:
    with pytest.raises(ConfigurationError, match="unknown attack stream"):
        attack_stream("psychic", world.victim, world.pool, 10)
    with pytest.raises(ConfigurationError, match="unknown benign stream"):
        benign_stream("psychic", world.pool.x, world.labels, 10)
    with pytest.raises(ConfigurationError, match="unknown victim"):
        ev.build_world("sklearn:digits", "svm")
    with pytest.raises(ConfigurationError, match="too few"):
        ev.build_world("tiny", pool=Pool("tiny", world.pool.x[:60], world.labels[:60]))


# evaluation and calibration ---------------------------------------------------------------


def test_evaluate_reports_every_stream(world: ev.World, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    e = ev.evaluate(world, attacks=("uniform", "knockoff"), attack_queries=150,
                    benign_streams=2, benign_queries=200,
                    progress=lambda *a: seen.append(a))
    assert [r.name for r in e.attacks] == ["uniform", "knockoff"]
    assert len(e.benign) == 2 and e.benign_queries == 400 and e.tenant is not None
    assert seen[-1][1:] == (5, 5)
    uniform = e.attacks[0]
    assert uniform.flagged_at is not None and uniform.flagged_at <= 150
    assert uniform.top_risk >= 0.5 and uniform.top_detector != "-" and uniform.why
    assert uniform.curve[0] == (10, uniform.curve[0][1]) and uniform.curve[-1][0] == 150
    assert e.tenant.queries == 200 and "tenant" in e.tenant.name
    assert 0.0 <= e.false_alarm_rate <= 1.0
    ev.write_json([e], tmp_path / "e.json")
    doc = json.loads((tmp_path / "e.json").read_text())["evaluations"][0]
    assert doc["attacks"][0]["flagged_at"] == uniform.flagged_at
    assert doc["benign_queries"] == 400 and "false_alarm_rate" in doc
    ev.write_html([e], tmp_path / "e.html")
    html = (tmp_path / "e.html").read_text()
    assert html.count("<svg") == 5 and "uniform: flagged at" in html and "http" not in \
        html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_threshold_for_keeps_the_rate() -> None:
    risks = np.r_[np.zeros(990), np.linspace(0.1, 0.9, 10)]  # 1% of queries above 0
    assert ev.threshold_for(risks, 0.01) == 0.001
    t = ev.threshold_for(risks, 0.005)
    assert np.mean(risks >= t) <= 0.005 and t <= 0.9
    assert ev.threshold_for(risks, 0.0) > 0.9
    assert ev.threshold_for(np.ones(10), 0.0) == 1.0


def test_calibrate_returns_a_threshold_meeting_the_rate(world: ev.World) -> None:
    c = ev.calibrate(world, 0.01, benign_streams=2, benign_queries=300)
    assert c.queries == 600 and c.streams == 2 and 0.0 < c.threshold <= 1.0
    assert set(c.detectors) >= {"prada", "ood"} and c.yaml().startswith("monitor:\n")
    if c.feasible:  # replaying the same users at that threshold keeps the rate
        e = ev.evaluate(world, threshold=c.threshold, attacks=(), tenant=False,
                        benign_streams=2, benign_queries=300)
        assert e.false_alarm_rate <= 0.01
        assert e.false_alarm_rate == pytest.approx(c.achieved_rate)
