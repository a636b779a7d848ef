"""MkDocs hook: benchmark tables rendered from bench/published/*.json at every build.

A page says where a table goes with a line `<!-- bench-table: NAME -->`; the hook puts the
table of bench/published/NAME.json there, with a line naming the file, the command, the date,
the machine and the commit. The numbers live in the result files only (bench/results.py
defines the format and writes it; the bench scripts' `--save PATH` makes a new one), so a page
cannot quote a number its run did not produce. A placeholder naming no file fails the build.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"^<!--\s*bench-table:\s*([\w.-]+)\s*-->\s*$", re.MULTILINE)


def results_module() -> ModuleType:
    """bench/results.py, loaded by path: bench/ holds scripts, not a package."""
    name = "modelfence_bench_results"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def render(markdown: str) -> str:
    """Every placeholder of a page replaced by its table and caption."""
    results = results_module()

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        doc = results.load(name)
        return "\n".join([*results.table(doc), "", results.caption(name, doc), ""])

    return PLACEHOLDER.sub(table, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return render(markdown)
