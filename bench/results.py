"""One result file per benchmark run: the numbers the docs quote, kept in one place.

A bench script given `--save PATH` writes its headline table in this format; the runs the
docs quote are committed under bench/published/, and the docs hook (docs/hooks/benchmarks.py)
renders each `<!-- bench-table: NAME -->` line of a page as the table of
bench/published/NAME.json, so a number lives in the JSON and nowhere else. A file:

    {"format": "modelfence-bench/1", "bench": "overhead",
     "command": "python bench/overhead.py --duration 5 --rounds 3",
     "date": "2026-11-29", "machine": "2 cores (AMD EPYC), Python 3.11.7", "commit": null,
     "note": "how the file was made",
     "columns": [{"key": "target", "title": "target"},
                 {"key": "p50_ms", "title": "p50 ms", "format": "{:.3f}"}],
     "rows": [{"target": "direct", "p50_ms": 0.407, "emphasis": ["p50_ms"]}]}

A cell is a row's value under the column's key, formatted with the column's `format` (a
str.format template) when it is a number, as it is when it is text, and `—` when absent or
null; a row's `emphasis` names the cells printed in bold. `commit` is null when the run did
not record it (the runs transcribed from the pages before this format existed).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FORMAT = "modelfence-bench/1"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "published"
REQUIRED = ("bench", "command", "date", "machine", "commit", "columns", "rows")


def commit() -> str | None:
    """The checkout's short commit, `+dirty` when src/ has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD")
    if not rev:
        return None
    return rev + ("+dirty" if git("status", "--porcelain", "--", "src") else "")


def machine() -> str:
    """Cores, CPU model, Python and the load at the time of writing."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{len(os.sched_getaffinity(0))} cores ({model}), Python "
            f"{platform.python_version()}, load average {load}")


def result(bench: str, command: str, columns: list[dict[str, Any]],
           rows: list[dict[str, Any]], note: str = "") -> dict[str, Any]:
    """A result of a run made now, on this machine, from this checkout."""
    return {"format": FORMAT, "bench": bench, "command": command,
            "date": datetime.now(UTC).isoformat(timespec="minutes"), "machine": machine(),
            "commit": commit(), "note": note, "columns": columns, "rows": rows}


def save(path: Path, doc: dict[str, Any]) -> None:
    problems = check(doc)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load(name_or_path: str | Path) -> dict[str, Any]:
    """bench/published/NAME.json, or a path; refused with the reason when malformed."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = RESULTS / f"{name_or_path}.json"
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    problems = check(doc)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return doc


def check(doc: dict[str, Any]) -> list[str]:
    """What keeps a document from being a result: missing keys, unknown columns."""
    problems = [] if doc.get("format") == FORMAT else [f"format is not {FORMAT!r}"]
    problems += [f"no {key!r}" for key in REQUIRED if key not in doc]
    if problems:
        return problems
    keys = [c.get("key") for c in doc["columns"]]
    if not keys or not all(isinstance(k, str) and "title" in c
                            for k, c in zip(keys, doc["columns"], strict=True)):
        problems.append("every column needs a key and a title")
    for n, row in enumerate(doc["rows"]):
        unknown = set(row) - set(keys) - {"emphasis"}
        if unknown:
            problems.append(f"row {n} has values no column shows: {sorted(unknown)}")
        stray = set(row.get("emphasis", [])) - set(keys)
        if stray:
            problems.append(f"row {n} emphasises unknown columns: {sorted(stray)}")
    return problems


def cell(row: dict[str, Any], column: dict[str, Any]) -> str:
    """A row's value as the table prints it."""
    value = row.get(column["key"])
    if value is None:
        text = "—"
    elif isinstance(value, int | float) and not isinstance(value, bool) and "format" in column:
        text = str(column["format"]).format(value, **row)
    else:
        text = str(value)
    text = text.replace("|", "\\|")
    return f"**{text}**" if column["key"] in row.get("emphasis", []) and value is not None \
        else text


def table(doc: dict[str, Any]) -> list[str]:
    """The result's table as Markdown lines."""
    columns = [c for c in doc["columns"] if not c.get("hidden")]
    lines = ["| " + " | ".join(c["title"] for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in doc["rows"]]
    return lines


def caption(name: str, doc: dict[str, Any]) -> str:
    """The line under a rendered table: where its numbers come from."""
    made = f"commit {doc['commit']}" if doc.get("commit") else "commit not recorded"
    return (f"<small>`bench/published/{name}.json`: `{doc['command']}`, {doc['date']}, "
            f"{doc['machine']}, {made}.</small>")


CORPUS_COLUMNS = [
    {"key": "half", "title": "half"}, {"key": "target", "title": "target"},
    {"key": "goal", "title": "goal"}, {"key": "median", "title": "median"},
    {"key": "worst", "title": "worst"}, {"key": "met", "title": "met"},
    {"key": "note", "title": "note"},
]


def corpus_result(bench: str, command: str, targets: list[Any]) -> dict[str, Any]:
    """An efficacy corpus's targets (modelfence.evaluation.target.Target) as a result."""
    rows = [{"half": t.half, "target": t.name, "goal": t.goal, "median": t.median,
             "worst": t.worst, "note": t.note,
             "met": "reported" if t.met is None else "met" if t.met else "**missed**"}
            for t in targets]
    return result(bench, command, CORPUS_COLUMNS, rows)
