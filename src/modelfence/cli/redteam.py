"""`modelfence attack` and `modelfence assess`: the red team on the command line.

Thin, as every command: parse, call `modelfence.redteam`, print with rich. The library is
imported inside the commands so that `modelfence --help` stays fast. A refusal by the
gateway during an attack (401, 403, 429) is a finding, not a crash: the partial results are
printed, then one yellow line says what stopped it, and the exit code is 3. With the
gateway's admin token, the monitor's risk score for the attacking key is read as the attack
goes and printed per budget; the token is never printed or logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..config import ADMIN_TOKEN_ENV, KEY_ENV
from ..errors import ModelfenceError, RequestError, UpstreamError
from . import tables
from .common import check_skops_trust, console, err_console, fail

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..redteam.results import Assessment, AttackResult, AttackRun

STOPPED_EXIT = 3
TargetArg = Annotated[str, typer.Argument(
    help="A model file (.skops, .onnx), 'demo', or a gateway address "
         "http://HOST:PORT/v2/models/NAME")]
PoolOption = Annotated[str, typer.Option(
    help="Attacker's data: a .npy/.npz/.csv/.parquet file, sklearn:NAME "
         "(digits, iris, wine, breast_cancer) or synthetic[:ROWS]")]
ThiefOption = Annotated[str, typer.Option(
    help="lr, mlp, torch-mlp or torch-cnn (the torch ones need modelfence\\[torch])")]
LabelColumn = Annotated[str | None, typer.Option(
    help="CSV/Parquet column with the true labels (for accuracy)")]
Trust = Annotated[list[str] | None, typer.Option(
    "--trust", help="A type in the skops file to trust; repeat for more")]
AdminToken = Annotated[str | None, typer.Option(
    envvar=ADMIN_TOKEN_ENV, show_default=False, show_envvar=True,
    help="The gateway's admin token: read the monitor's risk score as the attack goes "
    "(assess: also mint one key per cell)")]
AdminUrl = Annotated[str | None, typer.Option(
    envvar="MODELFENCE_ADMIN_URL", show_default=False, show_envvar=True,
    help="The gateway's admin listener (server.admin_listen), e.g. http://127.0.0.1:9090 "
    "\\[default: port 9090 of the gateway's host]")]
RiskEvery = Annotated[int, typer.Option(
    min=1, help="Over HTTP with --admin-token: read the risk score every N queries")]
ModelName = Annotated[str | None, typer.Option(
    help="Model name, if the address does not end in /v2/models/NAME")]
BatchOption = Annotated[int, typer.Option(min=1, help="Rows per request over HTTP")]


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise fail(f"{option} {text!r}: expected numbers separated by commas", 2) from None
    if not values or min(values) < 1:
        raise fail(f"{option} {text!r}: expected positive numbers", 2)
    return values


def _names(text: str | None) -> list[str] | None:
    """Comma-separated names; a bare number continues the previous one (``rsig:0.8,1.2``)."""
    if text is None:
        return None
    out: list[str] = []
    for part in (v.strip() for v in text.split(",")):
        if out and part.replace(".", "", 1).isdigit():
            out[-1] += "," + part
        elif part:
            out.append(part)
    return out


def attack(
    target: TargetArg,
    attack_name: Annotated[str, typer.Option(
        "--attack", "-a", help="random, adaptive, jacobian, equation, uniform or active; "
        "add :labels for the label-only variant")] = "random",
    budgets: Annotated[str, typer.Option(help="Query budgets, e.g. 100,500,2000")] = "100,500,1000",
    thief: ThiefOption = "mlp",
    pool: PoolOption = "sklearn:digits",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same result)")] = 0,
    defense: Annotated[str, typer.Option(
        help="In-process only: none, round:D, topk:K, labels, rsig:BETA,GAMMA, noise:SCALE"
    )] = "none",
    key: Annotated[str | None, typer.Option(
        envvar=KEY_ENV, help="API key for a gateway address", show_default=False,
        show_envvar=True)] = None,
    eval_key: Annotated[str | None, typer.Option(
        help="Key for the held-out evaluation queries (default: --key)", show_default=False
    )] = None,
    model_name: ModelName = None,
    batch: BatchOption = 1,
    label_column: LabelColumn = None,
    trust: Trust = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON"
                                                  )] = None,
    admin_token: AdminToken = None,
    admin_url: AdminUrl = None,
    principal: Annotated[str | None, typer.Option(
        help="With --admin-token: the key's principal \\[default: looked up by the key's id]",
        show_default=False)] = None,
    risk_every: RiskEvery = 10,
) -> None:
    """Run one extraction attack and print fidelity and accuracy per budget."""
    from ..redteam import run_attack

    budget_list = _ints(budgets, "--budgets")
    over_http = target.startswith(("http://", "https://"))
    check_skops_trust(target, tuple(trust or ()), what="target")
    try:
        with console.status(f"attacking {target} ({attack_name})…"):
            run = run_attack(target, attack=attack_name, thief=thief, pool=pool,
                             budgets=budget_list, seed=seed, defense=defense, key=key,
                             eval_key=eval_key, model_name=model_name, batch=batch,
                             label_column=label_column, trusted_types=tuple(trust or ()),
                             admin_token=admin_token if over_http else None,
                             principal=principal, risk_every=risk_every,
                             admin_url=admin_url)
    except UpstreamError as exc:  # unreachable, or a 5xx whose message says so
        raise fail(exc.message) from None
    except RequestError as exc:
        raise fail(f"the endpoint answered {exc.status}: {exc.message}") from None
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    _print_run(run)
    if json_out is not None:
        import orjson

        doc = {"target": run.target, "pool": run.pool, "eval_rows": run.eval_rows,
               "victim_accuracy": run.victim_accuracy, **run.result.to_dict()}
        json_out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    stop = run.result.stopped
    if stop is not None:
        if not run.result.points:
            raise fail(f"no query answered: {stop.describe()}")
        err_console.print(f"[bold yellow]stopped:[/] {escape(stop.describe())}; the results above "
                          f"cover the {stop.after} answered quer"
                          f"{'y' if stop.after == 1 else 'ies'}", soft_wrap=True)
        raise typer.Exit(STOPPED_EXIT)


def _print_run(run: AttackRun) -> None:
    r = run.result
    variant = "soft labels" if r.variant == "soft" else "labels only"
    console.print(f"[bold]{r.title}[/], {variant}; thief: {r.thief}; defense: {r.defense}",
                  soft_wrap=True)
    console.print(f"target: {run.target} ({run.n_classes} classes, {run.n_features} features)",
                  soft_wrap=True, markup=False)
    acc = "" if run.victim_accuracy is None else f"; model accuracy {run.victim_accuracy:.3f}"
    asked = f" (asked in {run.eval_requests} requests)" if run.eval_requests else ""
    console.print(f"pool: {run.pool}: {run.attack_rows:,} rows to query, {run.eval_rows:,} "
                  f"held out{asked}{acc}", soft_wrap=True, markup=False)
    table = tables.Grid(("budget", "queries", "fidelity", "accuracy", "train s",
                          *(["risk"] if r.risk_trail else [])),
                         right=("budget", "queries", "fidelity", "accuracy", "train s", "risk"))
    for p in r.points:
        row = [f"{p.budget:,}", f"{p.queries:,}", f"{p.fidelity:.3f}",
               "—" if p.accuracy is None else f"{p.accuracy:.3f}", f"{p.train_s:.2f}"]
        if r.risk_trail:
            risk = r.risk_at(p.queries)
            row.append("—" if risk is None else f"{risk:.2f}")
        table.add_row(*row)
    console.print(table)
    over_http = run.target.startswith(("http://", "https://"))
    sent = f" in {r.requests:,} requests" if over_http else ""
    console.print(f"{r.queries:,} queries{sent}; {r.total_s:.2f} s")
    if r.bands:
        console.print("answers per shaping band: " + ", ".join(
            f"{band} {n:,}" for band, n in r.bands.items()), soft_wrap=True, markup=False)
    if r.risk_trail:
        last, peak = r.risk_trail[-1], r.peak_risk
        console.print(f"risk score of {r.principal}: {r.risk_trail[0][1]:.2f} at the start, "
                      f"{last[1]:.2f} after {last[0]:,} queries (peak {peak:.2f})",
                      soft_wrap=True, markup=False)
    if run.note:
        err_console.print(f"[yellow]note:[/] {escape(run.note)}", soft_wrap=True, highlight=False)


def assess(
    target: TargetArg,
    attacks: Annotated[str | None, typer.Option(
        help="Comma-separated attacks \\[default: all six with soft labels, plus random:labels]",
        show_default=False)] = None,
    defenses: Annotated[str | None, typer.Option(
        help="Comma-separated defenses \\[default: none, round:2, topk:3, labels, "
        "rsig:0.8,1.2, noise:2]", show_default=False)] = None,
    budgets: Annotated[str, typer.Option(help="Query budgets")] = "100,300,1000",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per cell")] = 3,
    thief: ThiefOption = "mlp",
    pool: PoolOption = "sklearn:digits",
    label_column: LabelColumn = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Local worker processes \\[default: one per core]", show_default=False
    )] = None,
    dask: Annotated[str | None, typer.Option(
        help="Run the cells on a Dask cluster: scheduler address, e.g. tcp://host:8786",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="Folder for assessment.json and report.html")] = Path(
        "redteam-report"),
    trust: Trust = None,
    admin_token: AdminToken = None,
    admin_url: AdminUrl = None,
    model_name: ModelName = None,
    batch: BatchOption = 1,
    risk_every: RiskEvery = 10,
) -> None:
    """Run attacks x defenses x budgets x seeds and write JSON and an HTML report.

    Against a model file the defenses are applied in-process, cells in parallel. Against a
    gateway address (with its admin token) the attacks go through the gateway one cell at a
    time, each with a freshly minted key: its own output shaping, monitor and quotas act.
    """
    if target.startswith(("http://", "https://")):
        _assess_http(target, attacks, defenses, budgets, seeds, thief, pool, label_column,
                     workers, dask, out, admin_token, model_name, batch, risk_every,
                     admin_url)
        return
    check_skops_trust(target, tuple(trust or ()), what="target")
    from ..redteam import assess as run_assessment
    from ..redteam.executors import executor_for
    from ..redteam.matrix import DEFAULT_ATTACKS, canonical_attack
    from ..shaping import DEFAULT_DEFENSES

    try:
        attack_list = [canonical_attack(a) for a in _names(attacks) or DEFAULT_ATTACKS]
        defense_list = _names(defenses) or list(DEFAULT_DEFENSES)
        executor = executor_for(dask, workers)
        budget_list = _ints(budgets, "--budgets")
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    # the bars are shown once the first cell is done: the settings were accepted
    progress, tick = _cell_bars(attack_list, len(set(defense_list)) * seeds, start=True)
    _run_and_report(lambda: run_assessment(
        target, attacks=attack_list, defenses=defense_list, budgets=budget_list, seeds=seeds,
        thief=thief, pool=pool, label_column=label_column, executor=executor, progress=tick,
        trusted_types=tuple(trust or ())), progress, out)


def _assess_http(target: str, attacks: str | None, defenses: str | None, budgets: str,
                 seeds: int, thief: str, pool: str, label_column: str | None,
                 workers: int | None, dask: str | None, out: Path, admin_token: str | None,
                 model_name: str | None, batch: int, risk_every: int,
                 admin_url: str | None) -> None:
    """`assess ADDRESS`: cells one after the other through the gateway, a bar per cell."""
    from ..redteam.matrix import DEFAULT_ATTACKS, canonical_attack
    from ..redteam.run import assess_http

    if not admin_token:
        raise fail("assessing a gateway needs its admin token (--admin-token or "
                   f"{ADMIN_TOKEN_ENV}) to mint one key per cell", 2)
    if defenses is not None:
        raise fail("--defenses apply in-process; through a gateway its own output shaping "
                   "is what is measured", 2)
    if workers is not None or dask is not None:
        raise fail("through a gateway the cells run one after the other; drop --workers "
                   "and --dask", 2)
    budget_list = _ints(budgets, "--budgets")
    try:
        attack_list = [canonical_attack(a) for a in _names(attacks) or DEFAULT_ATTACKS]
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    progress, tick = _cell_bars(attack_list, seeds, start=False)
    queries = progress.add_task("queries", total=max(budget_list))

    def on_query(cell: str, answered: int, budget: int) -> None:
        if not progress.live.is_started:  # shown once the gateway accepted the settings
            progress.start()
        progress.update(queries, completed=answered, total=budget,
                        description=f"{cell} queries")

    _run_and_report(lambda: assess_http(
        target, admin_token=admin_token, admin_url=admin_url, model_name=model_name,
        attacks=attack_list, budgets=budget_list, seeds=seeds, thief=thief, pool=pool,
        batch=batch, risk_every=risk_every, label_column=label_column, progress=tick,
        on_query=on_query), progress, out)


def _cell_bars(attacks: list[str], per_attack: int, *, start: bool
               ) -> tuple[Progress, Callable[[AttackResult, int, int], None]]:
    """A bar per attack and one for all cells, and the tick a finished cell advances them
    with (`start`: the first tick shows the bars)."""
    progress = _progress()
    bars = {a: progress.add_task(a, total=per_attack) for a in dict.fromkeys(attacks)}
    total = progress.add_task("all cells", total=per_attack * len(bars))

    def tick(result: AttackResult, done: int, count: int) -> None:
        if start and not progress.live.is_started:
            progress.start()
        progress.advance(bars[result.name])
        progress.update(total, completed=done, total=count)

    return progress, tick


def _run_and_report(run: Callable[[], Assessment], progress: Progress, out: Path) -> None:
    """Run an assessment under its bars, write its JSON and HTML reports, print its table."""
    from ..redteam import write_report

    try:
        try:
            result = run()
        finally:
            progress.stop()
        json_path, html_path = write_report(result, out)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    _print_assessment(result)
    console.print(f"wrote {json_path} and {html_path}", soft_wrap=True, markup=False)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


def _print_assessment(a: Assessment) -> None:
    top = a.budgets[-1]
    table = tables.Grid(["attack"], title=f"fidelity at {top:,} queries (mean of "
                                           f"{len(a.seeds)} seeds)")
    for d in a.defenses:
        table.add_column(d.spec, whole=True, right=True)
    for at in a.attacks:
        row = []
        for d in a.defenses:
            v = a.fidelity(at, d.spec, top)
            row.append(f"{sum(v) / len(v):.3f}" if v else "—")
        table.add_row(at, *row)
    console.print(table)
    if a.remote:
        cells = tables.Grid(("attack", "seed", "queries", "fidelity", "peak risk",
                              "stopped"), right=("seed", "queries", "fidelity", "peak risk"),
                             title="cells through the gateway")
        for c in a.cells:
            last = c.points[-1] if c.points else None
            peak = c.peak_risk
            cells.add_row(c.name, str(c.seed), f"{c.queries:,}",
                          "—" if last is None else f"{last.fidelity:.3f}",
                          "—" if peak is None else f"{peak:.2f}",
                          "—" if c.stopped is None else f"{c.stopped.status} after "
                          f"{c.stopped.after:,}")
        console.print(cells)
    console.print(f"{len(a.cells)} cells on {a.executor} in {a.elapsed_s:.1f} s")
