"""`modelfence shaping tradeoff`: what each output defense costs honest callers and thieves.

Thin, as every command: parse, call `modelfence.shaping.tradeoff`, print with rich (or as
markdown, for reports and issues). The library is imported inside the command so that
`modelfence --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import ModelfenceError
from .common import console, fail
from .redteam import _ints

if TYPE_CHECKING:
    from ..shaping.tradeoff_table import Tradeoff

WIDE = 132
app = typer.Typer(help="Output shaping: measure what each defense costs callers and thieves.",
                  no_args_is_help=True)


@app.command()
def tradeoff(
    data: Annotated[str, typer.Option(
        help="Labelled data to train the victim on: sklearn:NAME or a .npz/.csv/.parquet file"
    )] = "sklearn:digits",
    defense: Annotated[list[str] | None, typer.Option(
        "--defense", "-d", help="A defense to measure (repeat for more): none, round:D, "
        "topk:K, labels, rsig:BETA,GAMMA, noise:SCALE, misinfo[:TAU[,NU]], dp-rr:EPS, "
        "dp-bdpl:EPS[,MARGIN], dp-laplace:EPS, dp-gauss:EPS[,DELTA], A+B, "
        "watched:DEFENSE (DEFENSE once the monitor flags the caller) "
        "\\[default: one of each kind and the settings tuned on digits]", show_default=False
    )] = None,
    budgets: Annotated[str, typer.Option(
        help="Query budgets of the natural-data thieves")] = "500,2000,5000",
    augmented_budget: Annotated[int, typer.Option(
        min=1, help="Budget of the rescaled, Jacobian and uniform thieves")] = 2000,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per cell (mean reported)")] = 3,
    thief: Annotated[str, typer.Option(help="lr, mlp, torch-mlp or torch-cnn")] = "mlp",
    workers: Annotated[int, typer.Option(
        min=1, help="Local worker processes (1: in this process)")] = 1,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the result as JSON", show_default=False)] = None,
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="Print the table as markdown")] = False,
    wide: Annotated[bool, typer.Option(
        "--wide", "-w", help="Every budget's column (132 columns); without it a narrower "
                             "terminal shows each thief at its largest budget")] = False,
) -> None:
    """Benign top-1 accuracy and thief fidelity per defense, on a victim trained here."""
    from ..evaluation.tradeoff import DEFAULT_DEFENSES
    from ..evaluation.tradeoff import tradeoff as run_tradeoff
    from ..redteam.executors import executor_for

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)
    task = progress.add_task("thieves", total=None)

    def tick(done: int, total: int) -> None:
        if not progress.live.is_started:  # shown once the settings were accepted
            progress.start()
        progress.update(task, completed=done, total=total)

    try:
        try:
            result = run_tradeoff(
                data, defenses=defense or DEFAULT_DEFENSES,
                budgets=_ints(budgets, "--budgets"), augmented_budget=augmented_budget,
                seeds=seeds, thief=thief, executor=executor_for(None, workers),
                progress=tick)
        finally:
            progress.stop()
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    if markdown:
        console.print(result.markdown(), markup=False, highlight=False, soft_wrap=True)
    else:
        _print_table(result, wide)
    if json_out is not None:
        import orjson

        json_out.write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2))
        console.print(f"wrote {json_out}", soft_wrap=True, markup=False)


@app.command()
def privacy(
    suite: Annotated[str, typer.Option(
        help="Efficacy corpus half: dev (choose settings on it) or test (report it)")] = "dev",
    mechanism: Annotated[list[str] | None, typer.Option(
        "--mechanism", "-m", help="A private defense to measure (repeat for more): dp-rr:EPS, "
        "dp-bdpl:EPS[,MARGIN], dp-laplace:EPS, dp-gauss:EPS[,DELTA] "
        "\\[default: a grid of each]", show_default=False)] = None,
    placement: Annotated[list[str] | None, typer.Option(
        "--placement", "-p", help="always (every answer), flagged (the flagged band only), "
        "flagged-budget (and the default ε budget) \\[default: all three]",
        show_default=False)] = None,
    victims: Annotated[str, typer.Option(help="Only these victims (comma-separated)")] = "",
    queries: Annotated[int, typer.Option(min=10, help="Queries per thief")] = 2000,
    honest_queries: Annotated[int, typer.Option(
        min=10, help="Queries per honest stream")] = 1000,
    workers: Annotated[int, typer.Option(
        min=1, help="Local worker processes (1: in this process)")] = 1,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write every number as JSON", show_default=False)] = None,
) -> None:
    """Differential privacy on the efficacy corpus: per mechanism, ε and placement, what
    active-learning and boundary-walking thieves lose and what honest callers pay."""
    from ..evaluation import privacy_tradeoff as pt
    from ..redteam.executors import executor_for

    names = [v.strip() for v in victims.split(",") if v.strip()] or None
    try:
        result = pt.run(suite, mechanism or pt.DEFAULT_MECHANISMS,
                        placements=placement or pt.PLACEMENTS, victim_names=names,
                        queries=queries, honest_queries=honest_queries,
                        executor=executor_for(None, workers))
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    console.print(result.markdown(), markup=False, highlight=False, soft_wrap=True)
    if json_out is not None:
        import orjson

        json_out.write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2))
        console.print(f"wrote {json_out}", soft_wrap=True, markup=False)



def _print_table(result: Tradeoff, wide: bool) -> None:
    """One row per defense; headers stacked ("soft / 2,000") to keep the table narrow.

    Ten numeric columns do not fit 80: unless `wide` (or the terminal is wide), each thief
    shows at its largest budget only.
    """
    from ..shaping.tradeoff_table import changes

    columns = list(result.columns)
    narrow = not wide and console.width < WIDE
    if narrow:
        largest: dict[str, Any] = {}
        for c in columns:
            name, _, budget = c.title.rpartition(" ")
            held = largest.get(name)
            if held is None or _budget(budget) > _budget(held.title.rpartition(" ")[2]):
                largest[name] = c
        columns = [c for c in columns if largest[c.title.rpartition(" ")[0]] is c]
    table = Table(title=f"thief fidelity (mean of {len(result.seeds)} seeds) and benign "
                        "cost per defense", box=box.SIMPLE_HEAD)
    table.add_column("defense", overflow="fold")
    table.add_column("benign\nacc", justify="right")
    table.add_column("top-1\nchanged", justify="right")
    for c in columns:
        name, _, budget = c.title.rpartition(" ")
        table.add_column(f"{name.replace(' ', chr(10))}\n{budget}", justify="right")
    for r in result.rows:
        acc = "—" if r.benign_accuracy is None else f"{r.benign_accuracy:.3f}"
        table.add_row(r.spec, acc, changes(r.top1_changes),
                      *(f"{r.fidelity[c.key]:.3f}" if c.key in r.fidelity else "—"
                        for c in columns))
    # the whole table: never squeezed into a narrow (or absent) terminal
    out = console if narrow or console.width >= WIDE else Console(width=WIDE,
                                                                  highlight=False)
    out.print(table)
    if len(columns) < len(result.columns):
        console.print(f"(each thief at its largest budget; --wide for all "
                      f"{len(result.columns)} thief columns)", markup=False)
    acc_text = "—" if result.victim_accuracy is None else f"{result.victim_accuracy:.3f}"
    console.print(f"{result.data}: victim test accuracy {acc_text}; {result.machine}; "
                  f"{result.elapsed_s:.0f} s", soft_wrap=True, markup=False)


def _budget(text: str) -> int:
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else 0
