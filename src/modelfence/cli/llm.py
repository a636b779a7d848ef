"""`modelfence llm evaluate`: the LLM efficacy corpus on the command line.

Replays honest users, distillers, system-prompt thieves and output-layer probers through the
recommended LLM configuration (llm/recommended.py) in-process on a simulated day and prints
issue 17's targets per half. Library imports stay inside the command so that
`modelfence --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import ModelfenceError
from .common import console, err_console, fail

app = typer.Typer(help="LLM routes: the efficacy corpus.", no_args_is_help=True)

POPULATIONS = ("honest", "distiller", "thief", "prober")


def _writable(path: Path | None, option: str) -> None:
    if path is not None and (path.is_dir() or not path.parent.is_dir()):
        raise fail(f"{option} {path}: not a file in an existing folder", 2)


@app.command("evaluate")
def evaluate(
    suite: Annotated[str, typer.Option(
        help="Which half: dev (tune on it), test (report it), holdout (written after "
             "tuning, never tuned on) or all (dev and test)")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number as JSON",
                                                  show_default=False)] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write an HTML report",
                                                  show_default=False)] = None,
    markdown_out: Annotated[Path | None, typer.Option(
        "--markdown", help="Write the tables as Markdown", show_default=False)] = None,
    populations: Annotated[str | None, typer.Option(
        help="Only these callers: honest, distiller, thief, prober (comma-separated)",
        show_default=False)] = None,
) -> None:
    """Replay the LLM corpus through the recommended configuration; print the targets.

    Exits 0 once the report is printed, whatever it says (a missed target is a finding,
    not a failure of the command); 2 on bad options.
    """
    if suite not in ("dev", "test", "holdout", "all"):
        raise fail(f"--suite {suite!r}: use dev, test, holdout or all", 2)
    chosen = None
    if populations is not None:
        chosen = [p.strip() for p in populations.split(",") if p.strip()]
        bad = [p for p in chosen if p not in POPULATIONS]
        if not chosen or bad:
            raise fail(f"--populations {populations!r}: use {', '.join(POPULATIONS)} "
                       "(comma-separated)", 2)
    for path, option in ((json_out, "--json"), (html_out, "--html"),
                         (markdown_out, "--markdown")):
        _writable(path, option)
    import orjson

    from ..llm.corpus import report, run

    progress = Progress(TextColumn("{task.description:<34}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=err_console,
                        transient=True)
    try:
        with progress:
            task = progress.add_task(f"LLM corpus {suite}", total=None)
            result = run.run(suite, populations=chosen,
                             progress=lambda label, done, total: progress.update(
                                 task, description=label, completed=done, total=total))
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    text = report.markdown(result)
    console.print(text, markup=False, soft_wrap=True)
    for path, body in ((markdown_out, text), (html_out, report.html(result))):
        if path is not None:
            path.write_text(body, encoding="utf-8")
            console.print(f"wrote {path}", markup=False)
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(report.to_dict(result), option=orjson.OPT_INDENT_2))
        console.print(f"wrote {json_out}", markup=False)
