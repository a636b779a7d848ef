"""The differentially private defenses: valid answers, labels that agree, their stated
costs, and the text forms (bad ones are one clear ConfigurationError)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event

from modelfence.errors import ConfigurationError
from modelfence.privacy.mechanisms import (
    BoundaryLayer,
    GaussianVector,
    LaplaceVector,
    PrivateDefense,
    RandomizedResponse,
    gaussian_rho,
    private_steps,
    to_simplex,
)
from modelfence.shaping import Chain, LabelOnly, parse_defense
from modelfence.shaping.guard import labels_only

RNG = np.random.default_rng(7)
P = RNG.dirichlet(np.ones(5), size=200)


@pytest.mark.parametrize("spec", ["dp-rr:1", "dp-bdpl:1,0.3", "dp-laplace:2",
                                  "dp-gauss:2,1e-6", "dp-laplace:1+topk:3"])
def test_answers_are_distributions_with_one_top_class(spec: str) -> None:
    out = parse_defense(spec).apply(P)
    assert out.shape == P.shape
    assert np.all(out >= 0)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-6)
    top = out.max(axis=1, keepdims=True)
    assert np.all((out == top).sum(axis=1) == 1), "the label must be unique"


def test_each_apply_draws_fresh_noise() -> None:
    d = LaplaceVector(1.0)
    assert not np.array_equal(d.apply(P[:20]), d.apply(P[:20]))


def test_randomized_response_keeps_the_label_at_its_stated_rate() -> None:
    d = RandomizedResponse(1.0)
    p = np.tile(np.eye(5)[2], (2000, 1)) * 0.9 + 0.02
    kept = (d.apply(p).argmax(axis=1) == 2).mean()
    want = math.e / (math.e + 4)
    assert abs(kept - want) < 4 * math.sqrt(want * (1 - want) / 2000)
    assert labels_only(d) and isinstance(d, LabelOnly)


def test_the_boundary_layer_randomises_only_inside_its_margin() -> None:
    d = BoundaryLayer(0.5, margin=0.1)
    far = np.tile([0.8, 0.1, 0.1], (300, 1))
    near = np.tile([0.46, 0.44, 0.1], (3000, 1))
    assert np.all(d.apply(far).argmax(axis=1) == 0)
    assert not d.charged(far).any() and d.charged(near).all()
    got = d.apply(near).argmax(axis=1)
    assert set(np.unique(got)) == {0, 1}  # only between the two leading classes
    want = math.exp(0.5) / (1 + math.exp(0.5))
    assert abs((got == 0).mean() - want) < 4 * math.sqrt(want * (1 - want) / 3000)


def test_vector_mechanisms_label_the_noisy_argmax() -> None:
    v = np.array([[0.3, 0.9, -0.2, 0.9], [2.0, -1.0, 0.5, 0.1]])
    out = to_simplex(v)
    assert out.argmax(axis=1).tolist() == [1, 0]
    assert np.allclose(out.sum(axis=1), 1.0)
    assert (out[0] == out[0].max()).sum() == 1  # the tie is broken


def test_costs_for_the_accountant() -> None:
    rr = RandomizedResponse(2.0)
    assert (rr.cost.epsilon, rr.cost.delta) == (2.0, 0.0)
    assert isinstance(rr.cost.event, dp_event.RandomizedResponseDpEvent)
    assert rr.cost.event.noise_parameter == pytest.approx(2 / (math.exp(2) + 1))
    assert LaplaceVector(1.0).scale == pytest.approx(2.0)  # L1 sensitivity 2 over ε 1
    g = GaussianVector(1.0, 1e-6)
    assert isinstance(g.cost.event, dp_event.ZCDpEvent)
    assert g.cost.event.rho == pytest.approx(gaussian_rho(1.0, 1e-6))
    assert g.scale == pytest.approx(math.sqrt(2) / math.sqrt(2 * g.rho))


def test_spec_round_trips_and_chains() -> None:
    for spec in ["dp-rr:1", "dp-bdpl:0.5,0.2", "dp-laplace:3", "dp-gauss:2,1e-05"]:
        d = parse_defense(spec)
        assert isinstance(d, PrivateDefense) and d.spec == spec
        assert parse_defense(d.spec).spec == spec
    assert parse_defense("dp-bdpl:1").spec == "dp-bdpl:1,0.2"  # the default margin
    chain = parse_defense("rsig:0.9,1.1+dp-laplace:1")
    assert isinstance(chain, Chain) and [s.spec for s in private_steps(chain)] == [
        "dp-laplace:1"]


@pytest.mark.parametrize(("spec", "message"), [
    ("dp-rr", "dp-rr needs ε, as in dp-rr:1"),
    ("dp-rr:0", "dp-rr: ε must be in [0.01, 20.0], got 0"),
    ("dp-laplace:50", "dp-laplace: ε must be in [0.01, 20.0], got 50"),
    ("dp-rr:nan", "dp-rr: ε must be in [0.01, 20.0], got nan"),
    ("dp-rr:1,2", "dp-rr takes at most 1 number(s), got '1,2'"),
    ("dp-bdpl:1,0", "dp-bdpl: margin must be in (0, 1], got 0"),
    ("dp-gauss:1,0.5", "dp-gauss: δ must be in (0, 0.01), got 0.5"),
])
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        parse_defense(spec)
    assert str(err.value) == message


def test_an_unreadable_number_lists_the_forms() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown defense 'dp-rr:x'; use one of: .*"
                       r"dp-rr:EPS, dp-bdpl:EPS\[,MARGIN\], dp-laplace:EPS"):
        parse_defense("dp-rr:x")
