"""Red-team attacks in-process: the correctness anchors from issue 5, every attack and variant,
pools, thieves and the errors an owner can make."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from modelfence.errors import ConfigurationError
from modelfence.redteam import ATTACKS, Pool, load_pool, make_thief, run_attack
from modelfence.redteam.attacks import mlp_input_gradient

DIGITS = load_digits()


@pytest.fixture(scope="module")
def mlp_victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's recipe (scaled MLP on digits), saved as skops like an owner's model file."""
    x_train, _, y_train, _ = train_test_split(DIGITS.data, DIGITS.target, test_size=0.25,
                                              random_state=0, stratify=DIGITS.target)
    model = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(64,), solver="lbfgs", alpha=1e-3, max_iter=400, random_state=0))
    model.fit(x_train, y_train)
    path = tmp_path_factory.mktemp("victim") / "digits-mlp.skops"
    sio.dump(model, path)
    return path


def test_label_only_knockoff_steals_an_mlp_at_500_queries(mlp_victim: Path) -> None:
    """Issue 5's anchor (IBM ART measured 0.96 fidelity here)."""
    run = run_attack(mlp_victim, attack="random:labels", budgets=[100, 500], seed=0)
    points = {p.budget: p for p in run.result.points}
    assert points[500].queries == 500 and points[500].fidelity >= 0.90
    assert points[100].fidelity < points[500].fidelity
    assert run.victim_accuracy is not None and run.victim_accuracy > 0.95
    assert run.result.stopped is None and run.result.thief == "MLP (scikit-learn)"


def test_equation_solving_recovers_logistic_regression_within_its_parameter_count(
        digits_files: dict[str, Path]) -> None:
    """Tramèr et al.: soft answers of a softmax-linear model are linear equations in W.

    The victim is tests/support.py's logistic regression on digits/16, loaded from skops.
    """
    x, y = DIGITS.data / 16.0, DIGITS.target
    k, d = 10, x.shape[1]
    budget = d + 1  # far below k * (d + 1) = 650
    run = run_attack(digits_files["skops"], attack="equation", budgets=[budget],
                     pool=Pool("digits/16", x, y))
    point = run.result.points[0]
    assert run.n_classes == k and point.queries == budget <= k * (d + 1)
    assert point.fidelity >= 0.99
    assert run.result.thief == "softmax-linear (solved)"


def test_fixed_seeds_give_identical_results(mlp_victim: Path) -> None:
    for attack, defense in (("adaptive", "noise:1"), ("jacobian", "rsig:0.8,1.2"),
                            ("active:labels", "none")):
        runs = [run_attack(mlp_victim, attack=attack, budgets=[60, 150], seed=s,
                           defense=defense) for s in (4, 4, 5)]
        assert runs[0].result == runs[1].result, attack
        assert runs[0].result.metrics() == runs[1].result.metrics()
        assert runs[0].result.metrics() != runs[2].result.metrics(), attack


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("variant", ["", ":labels"])
def test_every_attack_spends_its_budget(mlp_victim: Path, name: str, variant: str) -> None:
    run = run_attack(mlp_victim, attack=name + variant, budgets=[40, 120], thief="lr")
    r = run.result
    assert [p.queries for p in r.points] == [40, 120] and r.queries == 120
    assert r.variant == ("labels" if variant else "soft")
    assert all(0 <= p.fidelity <= 1 for p in r.points)
    assert r.title == ATTACKS[name].title


def test_budgets_beyond_the_pool_use_jittered_rows() -> None:
    iris = load_pool("sklearn:iris")
    victim = LogisticRegression(max_iter=1000).fit(iris.x, iris.y)
    run = run_attack(victim, attack="random:labels", pool=iris, budgets=[200], thief="lr")
    assert run.attack_rows == 112 and run.result.points[0].queries == 200
    assert run.result.points[0].fidelity > 0.8


def test_pools_from_files(tmp_path: Path) -> None:
    x, y = DIGITS.data[:40], DIGITS.target[:40]
    np.save(tmp_path / "p.npy", x)
    np.savez(tmp_path / "p.npz", x=x, y=y)
    header = ",".join([f"f{i}" for i in range(64)] + ["digit"])
    rows = [",".join([*map(str, r), str(t)]) for r, t in zip(x, y, strict=True)]
    (tmp_path / "p.csv").write_text("\n".join([header, *rows]) + "\n")
    assert load_pool(tmp_path / "p.npy", n_features=64).y is None
    npz = load_pool(tmp_path / "p.npz")
    csv = load_pool(tmp_path / "p.csv", label_column="digit")
    assert np.array_equal(npz.x, x) and np.array_equal(csv.x, x)
    assert np.array_equal(npz.y, y) and [int(v) for v in csv.y] == list(y)  # type: ignore[union-attr]
    synthetic = load_pool("synthetic:50", n_features=7)
    assert synthetic.x.shape == (50, 7) and synthetic.y is None
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (Parquet pools)")
    import pyarrow.parquet as pq

    table = pa.table({**{f"f{i}": x[:, i] for i in range(64)}, "digit": y})
    pq.write_table(table, tmp_path / "p.parquet")
    parquet = load_pool(tmp_path / "p.parquet", label_column="digit")
    assert np.array_equal(parquet.x, x) and np.array_equal(parquet.y, y)


def test_owner_mistakes_are_one_clear_error(tmp_path: Path, mlp_victim: Path) -> None:
    cases = [
        ({"pool": "sklearn:iris"}, "pool sklearn:iris has 4 features but the model expects 64"),
        ({"pool": "sklearn:mnist"}, "unknown scikit-learn data set 'mnist'"),
        ({"pool": str(tmp_path / "missing.npy")}, "does not exist"),
        ({"attack": "carlini"}, "unknown attack 'carlini'"),
        ({"attack": "random:logits"}, "the variant is soft or labels"),
        ({"thief": "xgboost"}, "unknown thief 'xgboost'"),
        ({"budgets": [0]}, "budgets must be positive"),
        ({"defense": "rsig:1,0.1"}, "would change answers of a 10-class model"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            run_attack(mlp_victim, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"give a \.skops or \.onnx model file"):
        run_attack(tmp_path / "model.pkl")
    with pytest.raises(ConfigurationError, match="needs an API key"):
        run_attack("http://127.0.0.1:9/v2/models/digits")


def test_onnx_victims_load_through_the_gateway_loader(digits_files: dict[str, Path]) -> None:
    if "onnx" not in digits_files:
        pytest.skip("skl2onnx is not installed, so there is no ONNX model to attack")
    pool = Pool("digits/16", DIGITS.data / 16.0, DIGITS.target)
    run = run_attack(digits_files["onnx"], attack="random:labels", pool=pool, budgets=[300],
                     thief="lr")
    assert run.n_classes == 10 and run.result.points[0].fidelity > 0.9


def test_torch_thieves_are_lazy_and_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch → ImportError
    with pytest.raises(ConfigurationError, match=r"the \[torch\] extra"):
        make_thief("torch-mlp", 0)


@pytest.mark.parametrize("thief", ["torch-mlp", "torch-cnn"])
def test_torch_thieves_steal(mlp_victim: Path, thief: str) -> None:
    pytest.importorskip("torch", reason="torch is not installed (the [torch] extra)")
    labels = run_attack(mlp_victim, attack="random:labels", thief=thief, budgets=[400])
    soft = run_attack(mlp_victim, attack="random", thief=thief, budgets=[400])
    assert labels.result.points[0].fidelity > 0.85 and soft.result.points[0].fidelity > 0.85
    assert run_attack(mlp_victim, attack="random", thief=thief, budgets=[100]).result == \
        run_attack(mlp_victim, attack="random", thief=thief, budgets=[100]).result


def test_mlp_input_gradient_matches_finite_differences() -> None:
    x, y = DIGITS.data[:300] / 16.0, DIGITS.target[:300]
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=50, random_state=0)
    with pytest.warns(Warning):  # ConvergenceWarning: a 50-step net is enough here
        mlp.fit(x, y)
    grad = mlp_input_gradient(mlp, x[:5], y[:5])
    eps = 1e-6
    for i in range(5):
        for j in (10, 20, 43):
            up, down = x[i].copy(), x[i].copy()
            up[j] += eps
            down[j] -= eps
            col = list(mlp.classes_).index(y[i])
            fd = (mlp.predict_proba([up])[0, col] - mlp.predict_proba([down])[0, col]) / (2 * eps)
            assert grad[i, j] == pytest.approx(fd, abs=1e-6)


def test_pipeline_victims_keep_their_class_values() -> None:
    x, y = load_pool("sklearn:wine").x, np.array(["red", "white", "rose"])[
        load_pool("sklearn:wine").y]  # type: ignore[index]
    victim: Pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    run = run_attack(victim, attack="random:labels", pool=Pool("wine", x, y), budgets=[80],
                     thief="lr")
    assert run.victim_accuracy == 1.0 and run.result.points[0].accuracy is not None
