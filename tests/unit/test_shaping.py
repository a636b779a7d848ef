"""Output defenses: each keeps the top class; reverse sigmoid refuses settings that would not;
keyed noise repeats exactly per (secret, principal, input), so averaging repeats gains nothing."""

from __future__ import annotations

import numpy as np
import pytest

from modelfence.errors import ConfigurationError
from modelfence.shaping import (
    DEFAULT_DEFENSES,
    KeyedNoise,
    LabelOnly,
    ReverseSigmoid,
    Rounding,
    TopK,
    noise_matrix,
    parse_defense,
    ranking_flip,
    reverse_sigmoid,
)

SECRET = b"s" * 32


def random_proba(n: int, k: int, seed: int = 0) -> np.ndarray:
    """A mix of flat and very peaked rows, as real classifiers produce."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, k)) * rng.choice([0.3, 3.0, 12.0], size=(n, 1))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_rounding_topk_and_labels() -> None:
    p = np.array([[0.61234, 0.28766, 0.1], [0.2, 0.3, 0.5]])
    assert np.allclose(Rounding(2).apply(p), [[0.61, 0.29, 0.1], [0.2, 0.3, 0.5]])
    top2 = TopK(2).apply(p)
    assert np.allclose(top2[0], [0.61234 / 0.9, 0.28766 / 0.9, 0])
    assert np.allclose(top2.sum(axis=1), 1)
    assert np.array_equal(LabelOnly().apply(p), [[1, 0, 0], [0, 0, 1]])
    with pytest.raises(ConfigurationError, match="k must be at least 1"):
        TopK(0)


@pytest.mark.parametrize("spec", DEFAULT_DEFENSES)
def test_every_default_defense_keeps_the_top_class(spec: str) -> None:
    p = random_proba(2000, 10)
    x = np.random.default_rng(1).standard_normal((2000, 5))
    shaped = parse_defense(spec, secret=SECRET).apply(p, inputs=x, principal="alice")
    assert shaped.shape == p.shape and np.all(shaped >= 0)
    if spec.startswith("round"):  # rounding may tie; the original top is still among the max
        assert np.all(shaped[np.arange(len(p)), p.argmax(1)] == shaped.max(1))
    else:
        assert np.array_equal(shaped.argmax(1), p.argmax(1))
        assert np.allclose(shaped.sum(axis=1), 1)


def test_reverse_sigmoid_refuses_a_setting_that_flips_the_top_class() -> None:
    with pytest.raises(ConfigurationError) as err:
        ReverseSigmoid(1.0, 0.1).check(10)
    message = str(err.value)
    assert "would change answers of a 10-class model" in message
    assert "1e-09 would outrank the top class at 0.1" in message
    # the refusal is real: that setting does reorder such a row
    row = np.array([[0.3, 1e-9] + [(0.7 - 1e-9) / 8] * 8])
    assert reverse_sigmoid(row, 1.0, 0.1).argmax() == 1 and row.argmax() == 0
    with pytest.raises(ConfigurationError, match="would change answers"):
        ReverseSigmoid(0.7, 1.5).apply(random_proba(3, 4))
    with pytest.raises(ConfigurationError, match="must be positive"):
        ReverseSigmoid(0.0, 1.0)


def test_reverse_sigmoid_accepted_settings_keep_top1_and_hide_the_shape() -> None:
    assert ranking_flip(0.8, 1.2, 10) is None
    assert ranking_flip(1.0, 0.1, 2) is None  # two classes: the other is 1 - top, no flip
    d = ReverseSigmoid(0.8, 1.2)
    p = random_proba(5000, 10, seed=3)
    shaped = d.apply(p)
    assert np.array_equal(shaped.argmax(1), p.argmax(1))
    assert np.mean(0.5 * np.abs(shaped - p).sum(1)) > 0.3  # the shape is far from the model's


def test_keyed_noise_is_deterministic_per_secret_principal_and_input() -> None:
    p = random_proba(50, 10, seed=5)
    x = np.random.default_rng(2).uniform(0, 16, (50, 64))
    d = KeyedNoise(SECRET, 1.0)
    a = d.apply(p, inputs=x, principal="alice")
    assert np.array_equal(a, d.apply(p, inputs=x, principal="alice"))
    assert np.array_equal(a, KeyedNoise(SECRET, 1.0).apply(p, inputs=x, principal="alice"))
    assert not np.allclose(a, d.apply(p, inputs=x, principal="bob"))
    assert not np.allclose(a, KeyedNoise(b"t" * 32, 1.0).apply(p, inputs=x, principal="alice"))
    # one row's noise depends on that row only, not on its batch
    assert np.array_equal(a[7:8], d.apply(p[7:8], inputs=x[7:8], principal="alice"))
    # float64 and float32 inputs of equal value are the same input (the wire carries FP32)
    assert np.array_equal(a, d.apply(p, inputs=x.astype(np.float32), principal="alice"))
    assert np.array_equal(a.argmax(1), p.argmax(1)) and np.allclose(a.sum(1), 1)
    z = noise_matrix(SECRET, "alice", np.random.default_rng(0).random((4000, 3)), 5)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05  # standard normal


def test_averaging_repeated_answers_recovers_nothing() -> None:
    """Asking one input 200 times returns one answer 200 times; fresh noise would average out."""
    p = random_proba(20, 10, seed=7)
    x = np.random.default_rng(4).standard_normal((20, 8))
    d = KeyedNoise(SECRET, 1.0)
    repeats = np.stack([d.apply(p, inputs=x, principal="mallory") for _ in range(200)])
    single_error = np.abs(np.log(repeats[0]) - np.log(p)).mean()
    averaged_error = np.abs(np.log(repeats.mean(axis=0)) - np.log(p)).mean()
    assert np.all(repeats == repeats[0])
    assert averaged_error == pytest.approx(single_error)
    rng = np.random.default_rng(0)  # the contrast: unkeyed noise of the same size
    fresh = np.stack([np.exp(np.log(p) + rng.standard_normal(p.shape)) for _ in range(200)])
    fresh /= fresh.sum(axis=2, keepdims=True)
    fresh_avg = np.exp(np.log(fresh).mean(axis=0))
    fresh_avg /= fresh_avg.sum(axis=1, keepdims=True)
    assert np.abs(np.log(fresh_avg) - np.log(p)).mean() < single_error / 5


def test_parse_defense_forms_and_errors() -> None:
    assert [parse_defense(s, secret=SECRET).spec for s in DEFAULT_DEFENSES] == list(
        DEFAULT_DEFENSES)
    assert parse_defense("reverse-sigmoid:0.5,1").spec == "rsig:0.5,1"
    assert "secret" not in repr(parse_defense("noise:1", secret=SECRET))
    for bad in ("round", "topk:x", "rsig:1", "blur:3", "labels:2"):
        with pytest.raises(ConfigurationError, match="unknown defense"):
            parse_defense(bad, secret=SECRET)
    with pytest.raises(ConfigurationError, match="needs a secret"):
        parse_defense("noise:1")
    with pytest.raises(ValueError, match="needs the inputs"):
        KeyedNoise(SECRET).apply(random_proba(3, 4))
    with pytest.raises(ValueError, match="shape"):
        Rounding(2).apply(np.ones(3))
