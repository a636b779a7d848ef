"""The assessment matrix: executors agree cell for cell (in-process, local processes, Dask),
settings are refused before any cell runs, and the report embeds its plots."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import skops.io as sio
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelfence.errors import ConfigurationError
from modelfence.redteam import (
    Assessment,
    DaskCluster,
    InProcess,
    LocalProcesses,
    assess,
    render_html,
    write_report,
)

from ..support import skip_or_fail

ATTACKS = ["random", "random:labels", "equation"]
DEFENSES = ["none", "labels", "rsig:0.8,1.2"]


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = load_digits(return_X_y=True)
    model = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(32,), solver="lbfgs", alpha=1e-3, max_iter=300, random_state=0))
    path = tmp_path_factory.mktemp("victim") / "digits.skops"
    sio.dump(model.fit(x, y), path)
    return path


@pytest.fixture(scope="module")
def small(victim: Path) -> Assessment:
    seen: list[tuple[int, int]] = []
    result = assess(victim, attacks=ATTACKS, defenses=DEFENSES, budgets=[150, 50], seeds=2,
                    executor=InProcess(), progress=lambda r, done, n: seen.append((done, n)))
    assert seen == [(i, 18) for i in range(1, 19)]
    return result


def test_matrix_shape_order_and_benign_cost(small: Assessment) -> None:
    assert small.budgets == (50, 150) and small.seeds == (0, 1)
    assert [(c.name, c.defense, c.seed) for c in small.cells] == [
        (a, d, s) for a in ATTACKS for d in DEFENSES for s in (0, 1)]
    assert all([p.budget for p in c.points] == [50, 150] for c in small.cells)
    benign = {d.spec: d for d in small.defenses}
    assert all(d.benign_agreement == 1.0 for d in small.defenses)  # all keep the top class
    assert benign["none"].distortion == 0 and benign["rsig:0.8,1.2"].distortion > 0.3
    # label-only thieves do not see the defense: identical fidelity under each one
    label_runs = {c.defense: c.metrics() for c in small.cells
                  if c.name == "random:labels" and c.seed == 0}
    assert len({str(v) for v in label_runs.values()}) == 1
    # equation solving needs exact probabilities: a label-only answer ruins it
    solved = small.fidelity("equation", "none", 150)
    assert min(solved) > max(small.fidelity("equation", "labels", 150))


def test_results_round_trip_through_json(small: Assessment, tmp_path: Path) -> None:
    json_path, html_path = write_report(small, tmp_path / "out")
    import orjson

    again = Assessment.from_dict(orjson.loads(json_path.read_bytes()))
    assert again == small and html_path.read_text().startswith("<!DOCTYPE html>")


def test_report_embeds_one_plot_per_defense_and_the_tradeoff(small: Assessment) -> None:
    page = render_html(small)
    svgs = re.findall(r"<svg .*?</svg>", page, flags=re.S)
    assert len(svgs) == len(DEFENSES) + 1
    for svg in svgs[:-1]:  # fidelity vs budget: a line per attack, a point per budget
        assert len(re.findall(r"<polyline ", svg)) == len(ATTACKS)
        assert len(re.findall(r"<circle ", svg)) == len(ATTACKS) * 2
    assert len(re.findall(r"<circle ", svgs[-1])) == len(DEFENSES)
    assert "benign accuracy vs protection" in svgs[-1]
    assert "no extraction monitor" in page  # the missing risk plot is explained, not faked
    assert not re.search(r"placeholder|TODO|lorem|nan", page, flags=re.I)
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # offline


def test_settings_are_refused_before_any_cell_runs(victim: Path) -> None:
    def boom(*_: object) -> None:
        raise AssertionError("a cell ran")

    for kwargs, message in (({"defenses": ["none", "rsig:1,0.1"]}, "would change answers"),
                            ({"attacks": ["random", "nope"]}, "unknown attack 'nope'"),
                            ({"thief": "svm"}, "unknown thief")):
        with pytest.raises(ConfigurationError, match=message):
            assess(victim, executor=InProcess(), progress=boom, **kwargs)  # type: ignore[arg-type]


def _metrics(a: Assessment) -> list[object]:
    return [(c.name, c.defense, c.seed, c.metrics()) for c in a.cells]


def test_local_processes_match_in_process(victim: Path) -> None:
    kwargs = {"attacks": ["adaptive", "active:labels"], "defenses": ["none", "noise:2"],
              "budgets": [40, 90], "seeds": [3]}
    here = assess(victim, executor=InProcess(), **kwargs)  # type: ignore[arg-type]
    there = assess(victim, executor=LocalProcesses(2), **kwargs)  # type: ignore[arg-type]
    assert there.executor == "2 local processes"
    assert _metrics(there) == _metrics(here)


@pytest.fixture
def dask_cluster() -> Iterator[str]:
    try:
        from distributed import LocalCluster
    except ImportError:
        skip_or_fail("dask[distributed] is not installed (the [dask] extra)")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                           dashboard_address=None)
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


def test_dask_cluster_matches_in_process(victim: Path, dask_cluster: str) -> None:
    kwargs = {"attacks": ["random", "jacobian:labels"], "defenses": ["none", "round:2"],
              "budgets": [40, 90], "seeds": 2}
    here = assess(victim, executor=InProcess(), **kwargs)  # type: ignore[arg-type]
    there = assess(victim, executor=DaskCluster(dask_cluster), **kwargs)  # type: ignore[arg-type]
    assert there.executor == f"Dask at {dask_cluster}"
    assert _metrics(there) == _metrics(here)


def test_dask_unreachable_is_one_clear_error(victim: Path) -> None:
    pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    with pytest.raises(ConfigurationError, match="cannot reach the Dask scheduler"):
        assess(victim, attacks=["random"], defenses=["none"], budgets=[20], seeds=1,
               executor=DaskCluster("tcp://127.0.0.1:9", connect_timeout_s=1))
