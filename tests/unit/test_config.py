"""A bad config fails in one line naming file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfence.config import load_settings
from modelfence.errors import ConfigurationError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "modelfence.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("server:\n  port: 99999\n", "server.port: input should be less than or equal to 65535"),
    ("server:\n  prot: 8000\n", "server.prot: unknown key (check its spelling)"),
    ("models:\n  - name: m\n    backend: {type: skops}\n",
     "models[0].backend.path: field required"),
    ("models:\n  - name: m\n    backend: {type: tensorflow, path: x}\n",
     "models[0].backend: input tag 'tensorflow'"),
    ("models:\n  - name: m\n    backend: {type: pickle, path: m.pkl}\n",
     "models[0].backend: value error, pickle runs arbitrary code"),
    ("models:\n  - name: 'bad name'\n    backend: {type: skops, path: x}\n", "models[0].name"),
    ("models:\n  - {name: a, backend: {type: skops, path: x}}\n"
     "  - {name: a, backend: {type: onnx, path: y}}\n", "models: value error, model names must "
     "be unique; repeated: a"),
    ("models:\n  - name: m\n    backend: {type: oip, url: 'ftp://x'}\n",
     "models[0].backend.url: string should match pattern"),
    ("models:\n  - name: m\n    backend: {type: oip, url: 'http://x', "
     "forward_parameters: [content_type]}\n",
     "models[0].backend.forward_parameters: value error, content_type cannot be forwarded"),
    ("models:\n  - name: m\n    backend: {type: skops, path: x}\n    limits: "
     "{max_abs_value: 0}\n", "models[0].limits.max_abs_value: input should be greater than 0"),
    ("server: [1, 2\n", "YAML syntax error"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("quotas:\n  limits: [{scope: principal, rate: 'lots'}]\n",
     "quotas.limits[0].rate: value error, 'lots' is not a rate"),
    ("quotas:\n  limits: [{scope: user, rate: '1/second'}]\n", "quotas.limits[0].scope"),
    ("quotas:\n  budgets: [{period: month}]\n",
     "quotas.budgets[0]: value error, a budget needs queries, rows, tokens or some of them"),
    ("quotas:\n  risk_curve: [[0.5, 1], [0.2, 2]]\n", "quotas.risk_curve: value error"),
    ("quotas:\n  risk_curve: [[0.0, 0.5]]\n", "costs must be >= 1"),
    ("stores:\n  keys: ${MODELFENCE_TEST_UNSET_VAR}\n",
     "stores.keys: environment variable MODELFENCE_TEST_UNSET_VAR is not set"),
    ("audit:\n  sink: none://\n", "audit: value error, sink none:// records no call at all; "
     "set audit.disabled_acknowledged: true to run without an audit trail"),
])
def test_errors_name_file_key_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read config: No such file"):
        load_settings(tmp_path / "absent.yaml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = write(tmp_path, "secret_file: secret\nstores: {keys: 'sqlite:///k.db'}\n"
                 "audit: {sink: 'jsonl:///a.jsonl'}\n"
                 "models:\n  - {name: m, backend: {type: skops, path: m.skops}}\n")
    s = load_settings(path)
    assert s.secret_file == tmp_path / "secret"
    assert s.stores.keys == f"sqlite:///{tmp_path}/k.db"
    assert s.audit.sink == f"jsonl:///{tmp_path}/a.jsonl"
    assert s.models[0].backend.path == tmp_path / "m.skops"  # type: ignore[union-attr]


def test_env_references_expand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_TEST_PG", "postgresql://u:p@db/x")
    s = load_settings(write(tmp_path, "stores: {keys: '${MF_TEST_PG}'}\n"))
    assert s.stores.keys == "postgresql://u:p@db/x"


def test_secret_must_be_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFENCE_SECRET", raising=False)
    (tmp_path / "secret").write_text("short")
    s = load_settings(write(tmp_path, "secret_file: secret\n"))
    with pytest.raises(ConfigurationError, match="at least 32 characters"):
        s.server_secret()
    monkeypatch.setenv("MODELFENCE_SECRET", "x" * 40)
    assert s.server_secret() == b"x" * 40


def test_examples_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFENCE_PG_PASSWORD", "example")
    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
    assert examples, "examples/ should hold configs"
    for path in examples:
        settings = load_settings(path)
        if settings.policy.files:  # the example policies validate against the schema
            from modelfence.policy import engine_from_settings

            engine_from_settings(settings).load()
