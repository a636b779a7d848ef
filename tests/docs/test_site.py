"""The docs site builds with `mkdocs build --strict`: a broken link or anchor fails here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .snippets import ROOT


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """Not --quiet: it silences the warnings that --strict counts, and then nothing fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--config-file", str(config), "--site-dir", str(site)],
                          capture_output=True, text=True, timeout=120, cwd=config.parent, env=env)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    result = _build(ROOT / "mkdocs.yml", folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def test_the_site_builds_strictly(site: Path) -> None:
    for page in ["index.html", "getting-started/index.html", "tutorials/kserve/index.html",
                 "concepts/monitor/index.html", "benchmarks/index.html"]:
        assert (site / page).is_file(), page


def test_the_reference_is_generated_from_the_code(site: Path) -> None:
    """The hook walks the settings, the typer app and the Cedar schema at build time."""
    from modelfence.config import Settings

    config = (site / "reference/configuration/index.html").read_text()
    cli = (site / "reference/cli/index.html").read_text()
    cedar = (site / "reference/cedar-schema/index.html").read_text()
    for name in Settings.model_fields:
        assert f"<code>{name}</code>" in config, name
    assert "max_inflight_per_principal" in config
    for command in ["modelfence serve", "modelfence keys create", "modelfence audit verify",
                    "modelfence verify-ownership"]:
        assert f"<code>{command}</code>" in cli, command
    assert "--principal" in cli
    schema = (ROOT / "src/modelfence/policy/schema.cedarschema").read_text()
    entities = re.findall(r"^entity (\w+)", schema, flags=re.MULTILINE)
    assert entities
    for entity in entities:
        assert entity in cedar, entity


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """What makes the build a check: a copy of the docs with one bad link must fail it."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\n[gone](concepts/no-such-page.md)\n")
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr
