"""The docs site builds with `mkdocs build --strict`: a broken link or anchor fails here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path
from types import ModuleType

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


def _copy_of_the_docs(folder: Path) -> Path:
    """docs/, mkdocs.yml and the benchmark results the hook renders, copied into folder."""
    shutil.copytree(ROOT / "docs", folder / "docs")
    shutil.copy(ROOT / "mkdocs.yml", folder / "mkdocs.yml")
    shutil.copytree(ROOT / "bench" / "published", folder / "bench" / "published")
    shutil.copy(ROOT / "bench" / "results.py", folder / "bench" / "results.py")
    return folder / "mkdocs.yml"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """What makes the build a check: a copy of the docs with one bad link must fail it."""
    _copy_of_the_docs(tmp_path)
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\n[gone](concepts/no-such-page.md)\n")
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr


# --- benchmark tables ----------------------------------------------------------------------

BENCH_TABLE = re.compile(r"^<!--\s*bench-table:\s*([\w.-]+)\s*-->\s*$", re.MULTILINE)


def _bench_hook() -> ModuleType:
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import benchmarks
    finally:
        sys.path.remove(str(ROOT / "docs" / "hooks"))
    hook: ModuleType = benchmarks
    return hook


def _bench_results() -> ModuleType:
    results: ModuleType = _bench_hook().results_module()
    return results


def _placeholders() -> dict[str, list[str]]:
    """Each docs page's bench-table names, in order."""
    found = {}
    for page in sorted((ROOT / "docs").rglob("*.md")):
        names = BENCH_TABLE.findall(page.read_text())
        if names:
            found[page.relative_to(ROOT / "docs").as_posix()] = names
    return found


def _html_page(site: Path, page: str) -> str:
    return (site / page.removesuffix(".md") / "index.html").read_text() \
        if not page.endswith("index.md") else (site / page.replace(".md", ".html")).read_text()


def test_every_result_file_is_well_formed_and_shown() -> None:
    """A result no page shows is a number the docs lost; one a page names must exist."""
    results = _bench_results()
    shown = {name for names in _placeholders().values() for name in names}
    files = {p.stem for p in (ROOT / "bench" / "published").glob("*.json")}
    assert {"overhead-2026-11-29", "llm-2026-11-29", "startup-2026-12-03",
            "corpus-test-2026-12-06", "llm-corpus-test-2026-12-03"} <= shown
    assert shown == files, f"not shown: {files - shown}; missing: {shown - files}"
    for name in files:
        doc = results.load(name)
        assert doc["date"] and doc["machine"] and doc["command"].startswith("python bench/"), name


def test_the_benchmark_tables_are_rendered_from_the_results(site: Path) -> None:
    """Every cell of every result file is in its page's HTML, and no placeholder is left."""
    results = _bench_results()
    for page, names in _placeholders().items():
        html = _html_page(site, page)
        assert "bench-table" not in html, page
        for name in names:
            doc = results.load(name)
            assert f"bench/published/{name}.json" in html, (page, name)
            for row in doc["rows"]:
                for column in doc["columns"]:
                    if column.get("hidden") or row.get(column["key"]) is None:
                        continue
                    text = results.cell(row, column).replace("\\|", "|")
                    text = re.sub(r"\*\*|`", "", text)
                    plain = re.sub(r"<[^>]+>", "", html).replace("&amp;", "&")
                    assert unescape(text) in unescape(plain), (page, name, text)


def test_a_changed_result_changes_the_page(tmp_path: Path) -> None:
    """The numbers live in the JSON: editing one there is what changes the built page."""
    config = _copy_of_the_docs(tmp_path)
    result = tmp_path / "bench" / "published" / "overhead-2026-11-29.json"
    doc = json.loads(result.read_text())
    gateway = next(r for r in doc["rows"] if r["target"] == "gateway")
    assert gateway["added_p50_ms"] == 0.879  # as the page quoted it before the results format
    gateway["added_p50_ms"] = 0.123
    result.write_text(json.dumps(doc))
    built = _build(config, tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    html = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "<strong>+0.123</strong>" in html and "+0.879" not in html
    page = (ROOT / "docs" / "benchmarks" / "index.md").read_text()
    with pytest.raises(FileNotFoundError, match=r"no-such-run\.json"):  # fails the build
        _bench_hook().render(page + "\n<!-- bench-table: no-such-run -->\n")


#: Headline numbers README quotes (the forge shows README unrendered by the hook), and the
#: result, row and value each comes from, with the decimals README rounds it to (half up).
README_QUOTES = [
    ("added +{} ms p50 and served", 3, "compare-2026-12-03", ("OpenAI", "modelfence"),
     "added_p50_ms"),
    ("served {:,} req/s at 32", 0, "compare-2026-12-03", ("OpenAI", "modelfence"), "rps"),
    ("{} % of a\nbare passthrough's", 0, "compare-2026-12-03", ("OpenAI", "modelfence"),
     "vs_passthrough_pct"),
    ("LiteLLM Proxy's (+{} ms p50)", 3, "compare-2026-12-03", ("OpenAI", "litellm"),
     "added_p50_ms"),
    ("OIP route it added\n+{} ms p50", 3, "compare-2026-12-03", ("OIP", "modelfence"),
     "added_p50_ms"),
    ("at {} % of the passthrough's throughput", 0, "compare-2026-12-03", ("OIP", "modelfence"),
     "vs_passthrough_pct"),
    ("MLServer: {}\nvalid requests failed", 0, "oip-poison-2026-12-03",
     "4 + 4 connections, seed 19", "failed"),
    ("gRPC added +{} to", 1, "oip-grpc-2026-12-03",
     "1: 3 \N{MULTIPLICATION SIGN} 300, gRPC only", "added"),
    ("to +{} ms p50 against a 1 ms target", 1, "oip-grpc-2026-12-03",
     "6: 5 \N{MULTIPLICATION SIGN} 400 `--rest`, load 5.1", "added"),
]


@pytest.mark.parametrize(("phrase", "places", "name", "row", "key"), README_QUOTES)
def test_the_readme_quotes_the_published_results(phrase: str, places: int, name: str,
                                                 row: str | tuple[str, ...], key: str) -> None:
    from decimal import ROUND_HALF_UP, Decimal

    doc = _bench_results().load(name)
    wanted = (row,) if isinstance(row, str) else row
    value = next(r[key] for r in doc["rows"] if all(w in r.values() for w in wanted))
    shown = Decimal(str(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    readme = re.sub(r"[ \t]*\n[ \t]*", "\n", (ROOT / "README.md").read_text())
    assert phrase.format(shown) in readme, (phrase.format(shown), name)
