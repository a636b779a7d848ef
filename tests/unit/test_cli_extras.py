"""A feature whose extra is not installed stops the command in one line that names the extra,
printed as written (rich must not read "modelfence[local]" as a markup tag)."""

from __future__ import annotations

import pytest
import typer

from modelfence.cli.common import fail


def test_an_error_prints_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    message = ("model m needs the 'local' extra (missing: skops): "
               "pip install 'modelfence[local]' [bold]not markup[/]")
    exit_ = fail(message, 2)
    assert isinstance(exit_, typer.Exit) and exit_.exit_code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
