"""Output defenses: each keeps the top class (misinformation only in distribution); reverse
sigmoid refuses settings that would not; keyed noise and misinformation repeat exactly per
(secret, principal, input), so averaging repeats gains nothing."""

from __future__ import annotations

import numpy as np
import pytest

from modelfence.errors import ConfigurationError
from modelfence.monitor.summary import Summary
from modelfence.shaping import (
    DEFAULT_DEFENSES,
    AdaptiveMisinformation,
    Chain,
    KeyedNoise,
    LabelOnly,
    ReverseSigmoid,
    Rounding,
    TopK,
    as_probabilities,
    keyed_offsets,
    noise_matrix,
    parse_defense,
    ranking_flip,
    reverse_sigmoid,
)
from modelfence.shaping.recommended import RECOMMENDED_BANDS

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
    """Asking one input 100 times returns one answer 100 times; fresh noise would average out."""
    p = random_proba(20, 10, seed=7)
    x = np.random.default_rng(4).standard_normal((20, 8))
    d = KeyedNoise(SECRET, 1.0)
    repeats = np.stack([d.apply(p, inputs=x, principal="mallory") for _ in range(100)])
    single_error = np.abs(np.log(repeats[0]) - np.log(p)).mean()
    averaged_error = np.abs(np.log(repeats.mean(axis=0)) - np.log(p)).mean()
    assert np.all(repeats == repeats[0])
    assert averaged_error == pytest.approx(single_error)
    rng = np.random.default_rng(0)  # the contrast: unkeyed noise of the same size
    fresh = np.stack([np.exp(np.log(p) + rng.standard_normal(p.shape)) for _ in range(100)])
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


# the new defenses: misinformation, chains; and the contract every defense keeps ----------

K, D = 4, 6


@pytest.fixture(scope="module")
def summary() -> Summary:
    """A yardstick of a 4-class model's data: standard normal rows in 6 dimensions."""
    x, p = data(400, seed=11)
    return Summary.fit(x, p, cells=8)


def data(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)) + shift
    logits = 2.0 * x @ np.random.default_rng(99).standard_normal((D, K))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return x, p / p.sum(axis=1, keepdims=True)


ALL_SPECS = (*DEFAULT_DEFENSES, "rsig:0.95,1.05", "misinfo", "misinfo:1.5,20",
             "rsig:0.95,1.05+noise:0.5", "misinfo+rsig:0.95,1.05")


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_every_defense_keeps_its_contract(spec: str, summary: Summary) -> None:
    """Shape kept, rows sum to 1 (rounding: nearly), deterministic, a row's answer does not
    depend on its batch, the input is not modified, and top-1 kept on in-distribution rows."""
    x, p = data(300, seed=1)
    d = parse_defense(spec, secret=SECRET, summary=summary)
    before = p.copy()
    a = d.apply(p, inputs=x, principal="alice")
    assert np.array_equal(p, before)
    assert a.shape == p.shape and np.all(a >= 0)
    assert np.allclose(a.sum(axis=1), 1, atol=0.03 if spec.startswith("round") else 1e-9)
    assert np.array_equal(a, d.apply(p, inputs=x, principal="alice"))
    for i in (0, 17, 299):
        assert np.array_equal(a[i:i + 1], d.apply(p[i:i + 1], inputs=x[i:i + 1],
                                                  principal="alice"))
    inside = np.ones(len(x), dtype=bool)
    for step in d.steps if isinstance(d, Chain) else (d,):
        if isinstance(step, AdaptiveMisinformation):
            inside &= step.weight(x) == 0
    assert inside.mean() > 0.15  # rows near the centroids get the model's answer
    top = a[inside][np.arange(inside.sum()), p[inside].argmax(1)]
    assert np.all(top == a[inside].max(axis=1))


def test_misinformation_answers_in_distribution_truly_and_lies_outside(summary: Summary) -> None:
    x_in, p_in = data(200, seed=2)
    x_out, p_out = data(200, seed=3, shift=6.0)  # far from every centroid
    d = AdaptiveMisinformation(summary, SECRET)
    w_in, w_out = d.weight(x_in), d.weight(x_out)
    inside = w_in == 0
    assert inside.mean() > 0.85 and np.all(w_out > 0.999)
    a_in = d.apply(p_in, inputs=x_in, principal="alice")
    assert np.array_equal(a_in[inside], p_in[inside])  # bit for bit the model's answer
    a_out = d.apply(p_out, inputs=x_out, principal="alice")
    decoy = keyed_offsets(SECRET, x_out, K)  # a keyed draw over all K classes
    assert np.array_equal(a_out.argmax(1), decoy)  # every far row answers the draw ...
    truthful = decoy == p_out.argmax(1)  # ... which is the truth about 1/K of the time
    assert 0.15 < truthful.mean() < 0.35
    assert np.array_equal(a_out[truthful], p_out[truthful])
    assert np.allclose(np.sort(a_out, axis=1), np.sort(p_out, axis=1), atol=1e-3)  # same look
    assert np.allclose(a_out.sum(1), 1)
    # the lie is keyed by (secret, input): repeats and other callers get the same one ...
    assert np.array_equal(a_out, d.apply(p_out, inputs=x_out, principal="bob"))
    assert np.array_equal(a_out, AdaptiveMisinformation(summary, SECRET).apply(
        p_out, inputs=x_out, principal="alice"))
    # ... and another secret tells other lies
    other = AdaptiveMisinformation(summary, b"t" * 32).apply(p_out, inputs=x_out)
    assert np.mean(other.argmax(1) != a_out.argmax(1)) > 0.3


def test_misinformation_blends_smoothly_with_distance(summary: Summary) -> None:
    start = summary.mean + summary.scale * summary.centroids[:1]  # a centroid, in raw units
    direction = np.random.default_rng(4).standard_normal((1, D))
    direction /= np.linalg.norm(direction)
    rows = np.concatenate([start + t * direction for t in np.linspace(0, 12, 200)])
    d = AdaptiveMisinformation(summary, SECRET, tau=1.0, nu=20.0)
    score, weight = d.score(rows), d.weight(rows)
    z = summary.transform(rows)
    assert np.allclose(score, summary.nearest_cell(z)[1] / summary.ood_radius)
    order = np.argsort(score)
    assert np.all(np.diff(weight[order]) >= 0)
    assert weight[order][0] == 0 and weight[order][-1] > 0.99
    assert np.any((weight > 0.1) & (weight < 0.9))  # a blend, not a switch


def test_misinformation_repeated_100_times_is_one_answer(summary: Summary) -> None:
    x, p = data(1, seed=5, shift=6.0)
    d = AdaptiveMisinformation(summary, SECRET)
    repeats = np.stack([d.apply(p, inputs=x, principal="mallory") for _ in range(100)])
    assert np.all(repeats == repeats[0])
    assert np.allclose(repeats.mean(axis=0), repeats[0], rtol=1e-14, atol=0)
    assert repeats[0].argmax() == keyed_offsets(SECRET, x, K)[0]


def rows_at(summary: Summary, s: np.ndarray, seed: int) -> np.ndarray:
    """Raw rows at distance `s` (ood_radius units) from centroid 0, in random directions."""
    direction = np.random.default_rng(seed).standard_normal((len(s), summary.n_features))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    z = summary.centroids[0] + direction * (s * summary.ood_radius)[:, None]
    out: np.ndarray = summary.mean + summary.scale * z
    return out


@pytest.mark.parametrize(("tau", "nu"), [(1.0, 50.0), (1.0, 1.0), (1.5, 5.0), (4.0, 50.0)])
def test_misinformation_never_touches_rows_within_the_radius(summary: Summary, tau: float,
                                                             nu: float) -> None:
    """Whatever tau and nu, a row the monitor calls in distribution (s <= 1, measured as its
    nearest centroid) is answered bit for bit as the model answered it, also under the
    recommended strongest band; beyond the radius, from tau on, rows are lied to."""
    x = np.concatenate([rows_at(summary, np.linspace(0.0, 0.999, 300), 1),
                        data(300, seed=6)[0]])
    _, p = data(len(x), seed=7)
    d = AdaptiveMisinformation(summary, SECRET, tau=tau, nu=nu)
    inside = d.score(x) <= 1.0
    assert inside[:300].all() and inside.sum() > 400
    assert np.all(d.weight(x)[inside] == 0.0)
    assert np.array_equal(d.apply(p, inputs=x)[inside], p[inside])
    far = rows_at(summary, np.full(50, tau + 2.0), 2)
    beyond = d.score(far) > tau + 0.1  # (another centroid may be nearer)
    assert beyond.sum() > 10 and np.all(d.weight(far)[beyond] > 0.5)
    strongest = parse_defense(RECOMMENDED_BANDS[-1][1], secret=SECRET, summary=summary)
    assert any(isinstance(step, AdaptiveMisinformation)
               for step in (strongest.steps if isinstance(strongest, Chain) else (strongest,)))
    without = parse_defense("+".join(s for s in RECOMMENDED_BANDS[-1][1].split("+")
                                     if not s.startswith("misinfo")) or "none")
    assert np.array_equal(strongest.apply(p, inputs=x)[inside], without.apply(p)[inside])


def binary_data(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A binary model's rows and answers, mostly confident either way."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)) + shift
    logit = 3.0 * (x - shift) @ np.random.default_rng(98).standard_normal(D)
    p1 = 1.0 / (1.0 + np.exp(-logit))
    return x, np.stack([1.0 - p1, p1], axis=1)


def test_on_a_binary_model_flipping_suspected_lies_recovers_nothing() -> None:
    """A lie is a keyed coin: the answers to off-distribution rows agree with the truth about
    half of the time, whatever the truth, so flipping them (or not) learns nothing; and
    asking again returns the same answer, so re-asking exposes nothing either."""
    x_fit, p_fit = binary_data(400, seed=11)
    summary = Summary.fit(x_fit, p_fit, cells=8)
    d = AdaptiveMisinformation(summary, SECRET)
    x, p = binary_data(2000, seed=12, shift=6.0)
    assert np.all(d.weight(x) > 0.999)
    truth = p.argmax(1)
    assert 0.3 < truth.mean() < 0.7
    told = d.apply(p, inputs=x).argmax(1)
    agree = np.mean(told == truth)
    assert 0.45 < agree < 0.55 and 0.45 < np.mean((1 - told) == truth) < 0.55
    for t in (0, 1):  # independent of the truth: the same coin for either class
        assert 0.44 < np.mean(told[truth == t]) < 0.56
    assert np.array_equal(d.apply(p, inputs=x), d.apply(p, inputs=x))  # re-asked: identical
    again = np.concatenate([d.apply(p[i:i + 1], inputs=x[i:i + 1], principal=f"key-{j}")
                      for j in range(5) for i in (0, 1, 2)])
    assert np.array_equal(again, np.tile(d.apply(p[:3], inputs=x[:3]), (5, 1)))


def test_parse_misinformation_and_chains(summary: Summary) -> None:
    assert parse_defense("misinfo", secret=SECRET, summary=summary).spec == "misinfo:1"
    assert parse_defense("misinfo:1.5,20", secret=SECRET, summary=summary).spec == \
        "misinfo:1.5,20"
    with pytest.raises(ConfigurationError, match="needs the monitor's summary"):
        parse_defense("misinfo:1", secret=SECRET)
    with pytest.raises(ConfigurationError, match="needs a secret"):
        parse_defense("misinfo", summary=summary)
    for bad in ("misinfo:x", "misinfo:1,2,3"):
        with pytest.raises(ConfigurationError, match="unknown defense"):
            parse_defense(bad, secret=SECRET, summary=summary)
    for low in ("misinfo:0", "misinfo:0.01", "misinfo:0.99"):  # README once said misinfo:0.01
        with pytest.raises(ConfigurationError, match="tau must be at least 1"):
            parse_defense(low, secret=SECRET, summary=summary)
    with pytest.raises(ConfigurationError, match="4-class model, not a 10-class"):
        AdaptiveMisinformation(summary, SECRET).check(10)
    assert "secret" not in repr(AdaptiveMisinformation(summary, SECRET))
    chain = parse_defense("rsig:0.9,1.1+noise:0.5", secret=SECRET)
    assert isinstance(chain, Chain) and chain.spec == "rsig:0.9,1.1+noise:0.5"
    assert chain.uses_inputs and not parse_defense("topk:2+round:2").uses_inputs
    with pytest.raises(ConfigurationError, match="would change answers"):
        parse_defense("round:2+rsig:1,0.1").check(10)


def test_reverse_sigmoid_matches_the_papers_formula() -> None:
    """The faster form equals y - beta * (sigmoid(gamma * logit(y)) - 1/2), renormalised."""
    p = np.vstack([random_proba(500, 10, seed=9), np.eye(10)[:2], np.full((1, 10), 0.1)])
    for beta, gamma in ((0.8, 1.2), (0.95, 1.05), (0.5, 3.0)):
        y = np.clip(p, 1e-9, 1 - 1e-9)
        logit = np.log(y) - np.log1p(-y)
        f = np.clip(p - beta * (1 / (1 + np.exp(-gamma * logit)) - 0.5), 0, None)
        assert np.allclose(reverse_sigmoid(p, beta, gamma), f / f.sum(1, keepdims=True),
                           rtol=1e-9, atol=1e-12)


def test_topk_keeps_classes_tied_with_the_kth() -> None:
    p = np.array([[0.4, 0.2, 0.2, 0.1, 0.1], [0.5, 0.3, 0.1, 0.06, 0.04]])
    out = TopK(2).apply(p)
    assert np.allclose(out[0], [0.5, 0.25, 0.25, 0, 0]) and np.count_nonzero(out[1]) == 2


@pytest.mark.parametrize("n", [1, 100])  # one answer (Python checks) and a batch (numpy's)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.1])
def test_bad_probabilities_are_refused(n: int, bad: float) -> None:
    p = random_proba(n, 10)
    p[-1, 3] = bad
    with pytest.raises(ValueError, match="finite and non-negative"):
        as_probabilities(p)
