"""Reference models: several families, deterministic by seed, clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from modelfence.errors import ConfigurationError
from modelfence.watermark.references import (
    DEFAULT_FAMILIES,
    recipe_of,
    train_recipe,
    train_references,
)


def _data(n: int = 300, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n, n_features=8, n_informative=5, n_classes=k,
                               random_state=seed)
    return x, y


def test_every_family_trains_and_answers_with_class_names() -> None:
    x, y = _data()
    refs = train_references(x, y, count=len(DEFAULT_FAMILIES), seed=3)
    assert [r.family for r in refs] == list(DEFAULT_FAMILIES)
    assert len({r.name for r in refs}) == len(refs)
    for r in refs:
        got = r.labels(x[:50])
        assert len(got) == 50 and set(got) <= {"0", "1", "2"}
        assert r(x[:5]) == got[:5]
        # each is a real classifier of this data, not a constant
        assert np.mean(np.asarray(r.labels(x)) == y.astype(str)) > 0.6, r.name


def test_cycles_families_and_variants_and_is_deterministic_by_seed() -> None:
    x, y = _data()
    a = train_references(x, y, count=4, seed=7, families=("lr", "knn"), subsample=0.6)
    b = train_references(x, y, count=4, seed=7, families=("lr", "knn"), subsample=0.6)
    assert [r.name for r in a] == ["lr#0/seed7", "knn#0/seed8", "lr#1/seed9", "knn#1/seed10"]
    assert all(ra.labels(x) == rb.labels(x) for ra, rb in zip(a, b, strict=True))
    c = train_references(x, y, count=1, seed=8, families=("mlp-small",))
    d = train_references(x, y, count=1, seed=9, families=("mlp-small",))
    assert c[0].labels(x) != d[0].labels(x)  # another seed, another model


def test_subsample_keeps_every_class() -> None:
    x, y = _data(n=200, k=3)
    y = y.copy()
    y[:] = 0
    y[:2], y[2] = 1, 2  # two rare classes
    refs = train_references(x, y, count=3, seed=0, families=("dt",), subsample=0.1)
    for r in refs:
        assert set(r.model.classes_) == {"0", "1", "2"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"count": 0}, "count"),
    ({"count": 1, "families": ("nope",)}, "unknown reference families"),
    ({"count": 1, "families": ()}, "at least one family"),
    ({"count": 1, "subsample": 1.5}, "subsample"),
])
def test_bad_arguments_are_configuration_errors(kwargs: dict[str, object],
                                                message: str) -> None:
    x, y = _data(n=60)
    with pytest.raises(ConfigurationError, match=message):
        train_references(x, y, **kwargs)  # type: ignore[arg-type]


def test_bad_data_is_a_configuration_error() -> None:
    x, y = _data(n=60)
    with pytest.raises(ConfigurationError, match="two classes"):
        train_references(x, np.zeros(len(x)), count=1)
    with pytest.raises(ConfigurationError, match="rows"):
        train_references(x, y[:-1], count=1)


def test_recipe_of_makes_the_same_algorithm_with_another_seed() -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _data()
    fitted = make_pipeline(StandardScaler(), RandomForestClassifier(
        n_estimators=7, max_depth=4, random_state=0)).fit(x, y)
    made = recipe_of(fitted)(5)
    forest = made.steps[-1][1]
    assert forest.random_state == 5 and forest.n_estimators == 7 and forest.max_depth == 4
    assert not hasattr(forest, "estimators_")  # unfitted: a clone, not the model
    refs = train_recipe(x, y, recipe_of(fitted), count=2, seed=11)
    assert [r.name for r in refs] == ["recipe/seed11", "recipe/seed12"]
    assert refs[0].labels(x) != refs[1].labels(x)
