"""The base install is the gateway: its import and an LLM-only app load no heavy library, and a
feature that needs an extra refuses to start naming the extra, not with an ImportError."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from modelfence.backends import backend_from_settings
from modelfence.config import ModelSettings
from modelfence.errors import ConfigurationError
from modelfence.extras import missing, require

#: What the base install does not have; none may load on the gateway's own path.
HEAVY = ("sklearn", "scipy", "onnxruntime", "skops", "joblib", "model_signing", "picklescan",
         "modelscan", "pkcs11", "PyKCS11", "OpenSSL", "torch", "transformers", "sigstore",
         "opentelemetry")

APP = """
import json, sys
from pathlib import Path
from modelfence.config import settings_from_mapping
from modelfence.gateway.app import build_app
import modelfence.cli.main  # the command itself

folder = Path(sys.argv[1])
(folder / "secret").write_text("s" * 48)
settings = settings_from_mapping({
    "secret_file": "secret",
    "stores": {"keys": "sqlite:///keys.db"},
    "audit": {"sink": "jsonl:///audit.jsonl"},
    "models": [{"name": "oip", "backend": {"type": "oip",
                                          "url": "http://127.0.0.1:1/v2/models/m"}}],
    "llm": {"models": [{"name": "chat", "upstream": "http://127.0.0.1:1/v1",
                        "canary": {"mode": "block"}, "screening": {"heuristics": True}}]},
}, base_dir=folder)
build_app(settings)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)))
"""


def test_the_gateway_and_an_llm_app_import_no_heavy_library(tmp_path: Path) -> None:
    code = f"HEAVY = {HEAVY!r}\n" + textwrap.dedent(APP)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == []


def _local(tmp_path: Path, kind: str, **backend: Any) -> ModelSettings:
    path = tmp_path / f"model.{kind}"
    path.write_bytes(b"\0")
    return ModelSettings.model_validate(
        {"name": "m", "backend": {"type": kind, "path": str(path), **backend}})


@pytest.mark.parametrize(("kind", "gone"), [("skops", "skops"), ("onnx", "onnxruntime")])
def test_a_local_model_without_the_local_extra_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, gone: str) -> None:
    monkeypatch.setitem(sys.modules, gone, None)  # as if not installed
    with pytest.raises(ConfigurationError) as err:
        backend_from_settings(_local(tmp_path, kind))
    assert f"(missing: {gone})" in str(err.value)
    assert "pip install 'modelfence[local]'" in str(err.value)


def test_signature_checks_without_the_artifacts_extra_name_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "key.pub"
    key.write_text("-")
    monkeypatch.setitem(sys.modules, "model_signing", None)
    settings = _local(tmp_path, "skops", artifact={"signature": {"public_key": str(key)}})
    with pytest.raises(ConfigurationError, match=r"signature checks needs the 'artifacts' "
                                                 r"extra \(missing: model-signing\)"):
        backend_from_settings(settings)


def test_a_model_with_its_extras_builds(tmp_path: Path) -> None:
    pytest.importorskip("skops")
    assert backend_from_settings(_local(tmp_path, "skops")).name == "m"


def test_require_names_distributions_not_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert missing("sklearn", "json") == ["scikit-learn"]
    with pytest.raises(ConfigurationError, match=r"^fitting needs the 'local' extra"):
        require("local", "fitting", "sklearn")
    require("local", "nothing missing", "json")
