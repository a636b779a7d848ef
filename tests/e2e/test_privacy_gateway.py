"""Differentially private answers through the real gateway, over loopback HTTP.

A model whose band is ``dp-rr:1`` (ε = 1 per answer, k = 10 classes: the true label only
23% of the time): a repeated question gets the same randomised answer and spends nothing,
a spent budget is refused with 429 (or answered with labels only), a repeat is still
answered once the budget is spent, policy reads `context.epsilon_spent`, the admin API and
`modelfence alerts` show the spend, and two replicas sharing PostgreSQL hold one budget.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelfence.policy.engine import DEFAULT_POLICY

from ..outage_support import scratch_database
from ..support import Gateway, cli, digits_rows, free_port, infer_body

ROWS = digits_rows(12)
BAND = [{"from_risk": 0.0, "defense": "dp-rr:1", "name": "private"}]


def post(gw: Gateway, key: str, rows: list[list[float]]) -> tuple[int, dict[str, Any], Any]:
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        f"{gw.url}/v2/models/digits/infer", data=json.dumps(infer_body(rows)).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (loopback only)
            return int(r.status), _lower(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), _lower(exc.headers), json.loads(exc.read())


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def labels(answer: dict[str, Any]) -> list[int]:
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert set(outputs) == {"label"}, "randomized response answers carry the label only"
    return [int(v) for v in outputs["label"]["data"]]


def risk(gw: Gateway, principal: str) -> dict[str, Any]:
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        f"{gw.admin_url}/admin/risk/digits?principal={principal}",
        headers={"Authorization": f"Bearer {gw.admin_token}"})
    with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 (loopback only)
        out: dict[str, Any] = json.loads(r.read())
    return out


def spent(gw: Gateway, principal: str = "alice") -> float:
    return float(risk(gw, principal)["privacy"]["epsilon_spent"])


def models(digits_files: dict[str, Path], *, reveal: bool = False) -> list[dict[str, Any]]:
    return [{"name": "digits", "backend": {"type": "skops", "path": str(digits_files["skops"])},
             "limits": {"max_batch": 64}, "shaping": BAND, "reveal_band": reveal}]


@pytest.fixture
def refusing(tmp_path: Path, digits_files: dict[str, Path]) -> Iterator[Gateway]:
    extra = {"privacy": {"store": "sqlite:///privacy.db", "principal_epsilon": 3.5,
                         "alert_at": 0.5},
             "audit": {"sink": "sqlite:///audit.db"}}  # `modelfence alerts` reads it
    gw = Gateway(tmp_path / "gw", models(digits_files), extra=extra).start()
    yield gw
    gw.stop()


def test_repeats_spend_nothing_and_return_the_same_draw(refusing: Gateway) -> None:
    key = refusing.key()
    first = [labels(post(refusing, key, [ROWS[0]])[2]) for _ in range(8)]
    # fresh draws would agree 8 times with probability below 0.77**7 (about 16%) even for
    # the likeliest label; here all agree because the first draw is remembered
    assert all(f == first[0] for f in first)
    assert spent(refusing) == pytest.approx(1.0)
    status, _, answer = post(refusing, key, [ROWS[1], ROWS[0], ROWS[1]])
    assert status == 200
    got = labels(answer)
    assert got[1] == first[0][0] and got[0] == got[2]  # a batch reuses the draws too
    assert spent(refusing) == pytest.approx(2.0)  # one new question, charged once
    # another principal is shown the same draw (no averaging across identities) and pays
    bob = refusing.key(principal="bob")
    assert labels(post(refusing, bob, [ROWS[0]])[2]) == first[0]
    assert spent(refusing, "bob") == pytest.approx(1.0)
    assert spent(refusing) == pytest.approx(2.0)


def test_a_spent_budget_is_refused_but_repeats_are_answered(refusing: Gateway) -> None:
    key = refusing.key()
    for row in ROWS[:3]:
        assert post(refusing, key, [row])[0] == 200
    assert spent(refusing) == pytest.approx(3.0)
    status, headers, body = post(refusing, key, [ROWS[3]])
    assert status == 429
    assert body["error"].startswith("your privacy budget on model 'digits' is spent")
    assert "retry-after" not in headers  # a lifetime budget does not come back
    assert spent(refusing) == pytest.approx(3.0)  # a refused charge is given back
    assert post(refusing, key, [ROWS[0]])[0] == 200  # a repeat costs nothing
    # a batch with one new row is refused whole: nothing of its draws is shown
    assert post(refusing, key, [ROWS[0], ROWS[4]])[0] == 429
    # the alert at half the budget, once, in the audit log and `modelfence alerts`
    alerts = cli("alerts", "--config", str(refusing.config), "--json").stdout
    assert alerts.count("alert:privacy") == 1
    assert "alice has spent ε 2 of 3.5 on model digits" in alerts
    # and in the metrics: ε charged per model (never per principal), refusals, the alert
    with urllib.request.urlopen(f"{refusing.admin_url}/metrics",  # noqa: S310 (loopback)
                                timeout=15) as r:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(r.read().decode())
                   for s in family.samples}
    assert samples[("modelfence_privacy_epsilon_total", (("model", "digits"),))] == 3.0
    assert samples[("modelfence_privacy_budget_spent_total",
                    (("budget", "principal"), ("model", "digits")))] == 2
    assert samples[("modelfence_privacy_alerts_total",
                    (("model", "digits"), ("scope", "principal")))] == 1


def test_labels_only_once_spent(tmp_path: Path, digits_files: dict[str, Path]) -> None:
    extra = {"privacy": {"store": "memory://", "principal_epsilon": 1.5,
                         "on_spent": "labels"}}
    gw = Gateway(tmp_path / "gw", models(digits_files, reveal=True), extra=extra).start()
    try:
        key = gw.key()
        status, _, answer = post(gw, key, [ROWS[0]])
        assert status == 200 and answer["parameters"]["shaping"] == "private"
        status, _, answer = post(gw, key, [ROWS[1], ROWS[2]])
        assert status == 200 and answer["parameters"]["shaping"] == "private:labels"
        assert labels(answer) == [1, 2]  # the model's own labels for digits 1 and 2
        assert spent(gw) == pytest.approx(1.0)
    finally:
        gw.stop()


def test_policy_reads_epsilon_spent(tmp_path: Path, digits_files: dict[str, Path]) -> None:
    folder = tmp_path / "gw"
    folder.mkdir()
    (folder / "policy.cedar").write_text(Path(str(DEFAULT_POLICY)).read_text() + '''
@id("epsilon-cap")
forbid (principal, action == Action::"infer", resource)
when { context.epsilon_spent.greaterThanOrEqual(decimal("2.0")) };
''')
    extra = {"privacy": {"store": "memory://", "principal_epsilon": None},
             "policy": {"files": ["policy.cedar"]}}
    gw = Gateway(folder, models(digits_files), extra=extra).start()
    try:
        key = gw.key()
        assert [post(gw, key, [r])[0] for r in ROWS[:2]] == [200, 200]
        status, _, body = post(gw, key, [ROWS[0]])
        assert status == 403 and "epsilon-cap" in body["error"]
    finally:
        gw.stop()


@pytest.fixture
def shared_db(pg_url: str) -> Iterator[str]:
    with scratch_database(pg_url, "modelfence_privacy") as url:
        yield url


@pytest.mark.postgres
def test_one_budget_across_two_replicas_on_postgresql(
        tmp_path: Path, digits_files: dict[str, Path], shared_db: str) -> None:
    extra = {"stores": {"keys": shared_db},
             "privacy": {"store": shared_db, "principal_epsilon": 3.5, "window": "month"}}
    one, two = tmp_path / "one", tmp_path / "two"
    Gateway(one, models(digits_files), extra=extra).write_config()
    two.mkdir()
    shutil.copy(one / "secret", two / "secret")  # replicas share the server secret
    a = Gateway(one, models(digits_files), extra=extra).start()
    b = Gateway(two, models(digits_files), extra=extra)
    try:
        b.start()
        key = a.key()
        first = labels(post(a, key, [ROWS[0]])[2])
        assert all(labels(post(b, key, [ROWS[0]])[2]) == first for _ in range(5))
        assert post(b, key, [ROWS[1]])[0] == 200
        assert post(a, key, [ROWS[2]])[0] == 200
        assert spent(a) == pytest.approx(3.0) and spent(b) == pytest.approx(3.0)
        for gw, row in ((a, ROWS[3]), (b, ROWS[4])):
            status, headers, _ = post(gw, key, [row])
            assert status == 429
            assert 0 < int(headers["retry-after"]) <= 31 * 86_400  # the month's end
        a.stop()
        a.start()  # a restart keeps the spend
        assert post(a, key, [ROWS[5]])[0] == 429
        assert labels(post(a, key, [ROWS[0]])[2]) == first
    finally:
        a.stop()
        b.stop()


def test_grpc_answers_from_the_same_memory_and_budget(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    """The gRPC service runs the same chain: a question asked over REST and again over gRPC
    gets the one draw and is charged once; a spent budget is refused there too."""
    pytest.importorskip("tritonclient.grpc")
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    gw = Gateway(tmp_path / "gw", models(digits_files))
    grpc_port = free_port()
    gw.extra = {"server": {"host": "127.0.0.1", "port": gw.port, "max_body_bytes": 256 * 1024,
                           "admin_listen": f"127.0.0.1:{gw.admin_port}",
                           "grpc_port": grpc_port},
                "privacy": {"store": "memory://", "principal_epsilon": 2.5}}
    gw.start()
    client = triton.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
    try:
        key = gw.key()
        auth = {"authorization": f"Bearer {key}"}

        def over_grpc(row: list[float]) -> list[int]:
            tensor = triton.InferInput("input", [1, len(row)], "FP32")
            tensor.set_data_from_numpy(np.asarray([row], dtype=np.float32))
            result = client.infer("digits", [tensor], headers=auth, client_timeout=20)
            assert result.as_numpy("probabilities") is None  # label only
            return [int(v) for v in result.as_numpy("label").ravel()]

        rest = labels(post(gw, key, [ROWS[0]])[2])
        assert all(over_grpc(ROWS[0]) == rest for _ in range(5))
        assert spent(gw) == pytest.approx(1.0)
        over_grpc(ROWS[1])
        assert spent(gw) == pytest.approx(2.0)
        with pytest.raises(InferenceServerException) as err:
            over_grpc(ROWS[2])
        assert "your privacy budget on model 'digits' is spent" in str(err.value)
        assert over_grpc(ROWS[0]) == rest  # a repeat is still answered
    finally:
        client.close()
        gw.stop()


def test_a_policy_pins_the_private_band_and_other_bands_are_shaped_as_before(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    folder = tmp_path / "gw"
    folder.mkdir()
    (folder / "policy.cedar").write_text(Path(str(DEFAULT_POLICY)).read_text() + '''
@id("carol-gets-private-answers")
@shaping("private")
permit (principal == Principal::"carol", action == Action::"infer", resource);
''')
    bands = [{"from_risk": 0.0, "defense": "round:2", "name": "standard"},
             {"from_risk": 0.99, "defense": "dp-rr:1", "name": "private"}]
    model = {**models(digits_files)[0], "shaping": bands}
    extra = {"privacy": {"store": "memory://"}, "policy": {"files": ["policy.cedar"]}}
    gw = Gateway(folder, [model], extra=extra).start()
    try:
        status, _, answer = post(gw, gw.key(), [ROWS[3]])
        assert status == 200
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert set(outputs) == {"label", "probabilities"}  # the shaping guard's own band
        assert all(round(v, 2) == v for v in outputs["probabilities"]["data"])
        assert spent(gw) == 0.0
        carol = gw.key(principal="carol")
        assert post(gw, carol, [ROWS[3]])[0] == 200
        assert spent(gw, "carol") == pytest.approx(1.0)
        labels(post(gw, carol, [ROWS[3]])[2])  # label only
    finally:
        gw.stop()


@pytest.mark.postgres
def test_a_privacy_store_outage_fails_closed(tmp_path: Path, digits_files: dict[str, Path],
                                             shared_db: str) -> None:
    """With the PostgreSQL privacy store unreachable, a private model's answers are refused
    (503 naming the store), never sent uncharged; they come back with the store."""
    from urllib.parse import urlsplit

    from ..outage_support import postgres_via
    from ..tcp_proxy import TcpProxy

    parts = urlsplit(shared_db)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        url = postgres_via(shared_db, proxy)
        gw = Gateway(tmp_path / "gw", models(digits_files),
                     extra={"privacy": {"store": url}}).start()
        try:
            key = gw.key()
            assert post(gw, key, [ROWS[0]])[0] == 200
            proxy.cut()
            status, _, body = post(gw, key, [ROWS[1]])
            assert status == 503
            assert body["error"] == ("the privacy budget store is unavailable; request "
                                     "denied")
            proxy.restore()
            for _ in range(100):  # the breaker lets a probe through within seconds
                status = post(gw, key, [ROWS[1]])[0]
                if status == 200:
                    break
                time.sleep(0.2)
            assert status == 200
        finally:
            gw.stop()


def test_noisy_probabilities_through_the_gateway(tmp_path: Path,
                                                 digits_files: dict[str, Path]) -> None:
    """A vector mechanism after a step keyed on the inputs: a distribution whose label is its
    top class, the same on a repeat, charged once."""
    model = {**models(digits_files)[0],
             "shaping": [{"from_risk": 0.0, "defense": "noise:0.5+dp-laplace:2",
                          "name": "private"}]}
    gw = Gateway(tmp_path / "gw", [model], extra={"privacy": {"store": "memory://"}}).start()
    try:
        key = gw.key()
        answers = []
        for _ in range(3):
            status, _, answer = post(gw, key, [ROWS[5], ROWS[6]])
            assert status == 200
            answers.append({o["name"]: o["data"] for o in answer["outputs"]})
        first = answers[0]
        proba = [first["probabilities"][:10], first["probabilities"][10:]]
        for row, label in zip(proba, first["label"], strict=True):
            assert min(row) >= 0 and abs(sum(row) - 1) < 1e-6
            assert int(label) == row.index(max(row))
        assert all(a == first for a in answers)
        assert spent(gw) == pytest.approx(4.0)  # two questions at ε 2, once
    finally:
        gw.stop()
