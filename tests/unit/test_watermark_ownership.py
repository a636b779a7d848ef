"""Ownership verification end to end in-process on a 10-class model: a label-only thief is
accused, and twenty models trained independently on the same data are not.

The victim answers through the watermark (`WatermarkedOracle`, the gateway guard's own
`Watermarker`), the red team's label-only Knockoff thief steals from it, and the suspect is
the thief's copy. The through-the-gateway version of this loop lives with the gateway tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from threadpoolctl import threadpool_limits

from modelfence.redteam.attacks.knockoff import KnockoffAdaptive
from modelfence.redteam.data import Pool
from modelfence.redteam.thieves import make_thief
from modelfence.redteam.victims import LocalVictim, Recorder
from modelfence.watermark import bundle
from modelfence.watermark.keyring import Keyring, WatermarkKey
from modelfence.watermark.marking import Watermarker
from modelfence.watermark.oracle import WatermarkedOracle
from modelfence.watermark.suspect import FunctionSuspect
from modelfence.watermark.verify import Evidence, questions_from, verify

Array = np.ndarray[Any, Any]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits() -> tuple[Array, Array, Array, Array]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0,
                                                        stratify=y)
    return x_train, x_test, y_train, y_test


def mlp(seed: int, hidden: int = 64) -> Any:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(hidden,), solver="lbfgs", alpha=1e-3, max_iter=300,
        random_state=seed))


@pytest.fixture(scope="module")
def victim(digits: tuple[Array, Array, Array, Array]) -> Any:
    x_train, _, y_train, _ = digits
    return mlp(0).fit(x_train, y_train)


def watermarked(model: Any, fraction: float, principal: str = "mallory") -> WatermarkedOracle:
    inner = LocalVictim(model.predict_proba, n_classes=10, n_features=64,
                        classes=model.classes_, description="digits MLP", dtype=np.float64)
    marker = Watermarker(Keyring([WatermarkKey("k1", b"w" * 48)]), lambda risk: fraction)
    return WatermarkedOracle(inner, marker, model="digits", principal=principal)


def evidence_of(oracle: WatermarkedOracle) -> Evidence:
    return questions_from(oracle.records, model="digits", principal=None,
                          marker=oracle.marker, cipher=None)


def test_a_label_only_thief_is_accused_with_p_below_2_to_the_minus_64(victim: Any) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    oracle = watermarked(victim, 0.05)
    pool, _ = Pool("digits", x, y).split(0.25, 0)
    rec = Recorder(oracle, 1000, soft=False)
    KnockoffAdaptive("labels", seed=0).collect(rec, pool)
    xs, labels, _ = rec.transcript()
    thief = make_thief("mlp", 0).fit(xs, labels, None, 10)
    suspect = FunctionSuspect(lambda z: victim.classes_[thief.predict(z)], n_features=64)
    doc = verify(evidence_of(oracle), suspect, max_queries=500)
    assert doc["verdict"]["accused"], doc["verdict"]["summary"]
    assert doc["verdict"]["log2_p"] <= -64
    assert suspect.asked <= 500
    # one caller: its principal, its tenant and all records are the same set, tested once
    (only,) = doc["tests"]["sets"]
    assert only["set"] == "principal:mallory" and only["log2_p_adjusted"] == only["log2_p"]
    assert only["same_as"] == ["tenant:tenant", "all"]
    assert doc["verdict"]["convicting_set"] == "principal:mallory"
    # signed, it verifies; edited, it does not
    key = Ed25519PrivateKey.generate()
    signed = bundle.sign(doc, key)
    assert bundle.problem(signed, key.public_key()) is None
    signed["tests"]["sets"][0]["log2_p"] = -1.0
    assert bundle.problem(signed, key.public_key()) == bundle.EDITED


def test_twenty_independently_trained_models_are_never_accused(
        victim: Any, digits: tuple[Array, Array, Array, Array]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, _ = digits
    oracle = watermarked(victim, 0.1)
    # watermark inputs: the victim's answers to every digit, jittered copies included
    rng = np.random.default_rng(1)
    asked = np.vstack([x_train, x_test, np.clip(x_test + rng.normal(0, 1.0, x_test.shape),
                                                0, 16)])
    oracle.ask(asked)
    evidence = evidence_of(oracle)
    assert len(evidence.watermark) > 150
    p_values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs stopping at max_iter
        for i in range(20):
            if i % 2:
                model = mlp(100 + i, hidden=(32, 48, 64)[i % 3])
            else:
                model = make_pipeline(StandardScaler(), LogisticRegression(
                    C=(0.05, 0.2, 1.0)[i % 3], max_iter=300))
            model.fit(x_train, y_train)
            doc = verify(evidence, FunctionSuspect(model.predict), max_queries=500)
            assert not doc["verdict"]["accused"]
            assert doc["verdict"]["summary"].startswith("no evidence of copying")
            p_values.append(doc["verdict"]["p_value"])
    assert min(p_values) > 1e-3, p_values
