"""`modelfence monitor fit|evaluate|calibrate`: the extraction monitor on the command line.

`fit` measures what a model's normal traffic looks like (the summary every detector compares
with), loading the model exactly as the gateway serves it. `evaluate` and `calibrate` answer
the questions an owner asks before turning the monitor on: does it catch the attacks, and
how often does it cry wolf on users. Library imports stay inside the commands so that
`modelfence --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import ModelfenceError
from . import tables
from .common import ConfigOption, console, err_console, fail, settings_from

if TYPE_CHECKING:
    from ..config import ModelSettings
    from ..evaluation.monitor import Calibration, Evaluation

app = typer.Typer(help="Extraction monitor: fit a model's summary, evaluate, calibrate.",
                  no_args_is_help=True)

DataOption = Annotated[str, typer.Option(
    help="Labelled data: sklearn:NAME (digits, iris, wine, breast_cancer), "
         "make_classification[:ROWS], or a .npy/.npz/.csv/.parquet file")]
VictimOption = Annotated[str, typer.Option(help="Victim(s) trained on the data: lr, mlp or lr,mlp")]
LabelColumn = Annotated[str | None, typer.Option(help="CSV/Parquet column holding the labels")]
Streams = Annotated[int, typer.Option(min=1, help="Benign streams (users)")]
Queries = Annotated[int, typer.Option(min=10, help="Queries per benign stream")]
Seed = Annotated[int, typer.Option(help="Random seed (same seed, same result)")]


@app.command("fit")
def fit(
    model: Annotated[str, typer.Option(help="Name of the model in the configuration")],
    data: Annotated[Path, typer.Option(
        help="Rows that look like real use (.npy, .npz, .csv, .parquet), ideally not the "
             "training rows")],
    config: ConfigOption = None,
    out: Annotated[Path | None, typer.Option(
        help="Where to write the summary \\[default: <policy.state_dir or the config's folder>"
             "/monitor/<model>.summary.npz]", show_default=False)] = None,
    label_column: Annotated[str | None, typer.Option(
        help="CSV/Parquet column of the rows' true classes: not a feature; it lets the fit "
             "simulate honest callers who ask about one class (an .npz's y is used too)"
    )] = None,
) -> None:
    """Fit the monitor's summary of a model's data, with the model's own probabilities."""
    from ..monitor import Summary
    from ..redteam.data import load_pool

    path, settings = settings_from(config)
    ms = settings.model(model)
    if ms is None:
        raise fail(f"no model {model!r} in {path}; configured: "
                   + (", ".join(m.name for m in settings.models) or "none"), 2)
    target = (out or (settings.policy.state_dir or path.parent) / "monitor" / (
        f"{model}.summary.npz")).absolute()
    if not data.is_file():
        raise fail(f"--data {data} does not exist", 2)
    try:
        with console.status(f"loading {model} and scoring {data}…"):
            pool = load_pool(data, label_column=label_column)
            proba = _model_proba(ms, pool.x)
            summary = Summary.fit(pool.x, proba, predict=lambda rows: _model_proba(ms, rows),
                                  truth=pool.y)
        summary.save(target)
    except ModelfenceError as exc:
        raise fail(f"--data {data}: {exc}", 2) from None
    console.print(f"wrote {target}: {len(pool.x):,} rows, {summary.n_features} features, "
                  f"{summary.n_classes} classes, {len(summary.centroids)} cells "
                  f"({target.stat().st_size:,} bytes)", soft_wrap=True, markup=False)
    console.print(f"to use it, give model {model} in {path}: monitor: {{summary: {target}}}",
                  soft_wrap=True, markup=False)


def _model_proba(ms: ModelSettings, x: Any) -> Any:
    """The model's probabilities for `x`, through the backend the gateway would build."""
    import asyncio

    import numpy as np

    from ..backends import backend_from_settings
    from ..errors import ConfigurationError
    from ..kernel.oip import NUMPY_DTYPES, InferRequest, Tensor

    async def go() -> Any:
        backend = backend_from_settings(ms)
        await backend.start()
        try:
            spec = backend.metadata.inputs[0]
            width = spec.shape[-1] if len(spec.shape) == 2 else -1
            if x.ndim != 2 or (width != -1 and x.shape[1] != width):
                raise ConfigurationError(
                    f"{x.shape[-1]} features per row but model {ms.name} expects {width}")
            dtype = NUMPY_DTYPES.get(spec.datatype, np.float32)
            step, out = ms.limits.max_batch, []
            for i in range(0, len(x), step):
                rows = np.asarray(x[i:i + step], dtype=dtype)
                answer = await backend.infer(InferRequest(
                    [Tensor(spec.name, spec.datatype, list(rows.shape), rows)]))
                p = answer.output("probabilities")
                if p is None:
                    raise ConfigurationError(f"model {ms.name} returns no probabilities")
                out.append(np.asarray(p.data, dtype=np.float64).reshape(len(rows), -1))
            return np.concatenate(out)
        finally:
            await backend.close()

    return asyncio.run(go())


def _configured_world(config: Path | None, model: str, data: str,
                      label_column: str | None) -> Any:
    """The monitor's world for a served model: its summary, its answers, the user's rows."""
    import numpy as np

    from ..errors import ConfigurationError
    from ..evaluation.monitor import World
    from ..monitor import Summary
    from ..redteam.data import Pool, load_pool
    from ..redteam.victims import LocalVictim

    path, settings = settings_from(config)
    ms = settings.model(model)
    if ms is None or ms.monitor is None:
        raise ConfigurationError(f"model {model!r} in {path} has no monitor.summary; run "
                                 "`modelfence monitor fit` first")
    summary = Summary.load(ms.monitor.summary)
    pool = load_pool(data, label_column=label_column)
    proba = _model_proba(ms, pool.x)
    victim = LocalVictim(lambda x: _model_proba(ms, x), n_classes=summary.n_classes,
                         n_features=summary.n_features, classes=np.arange(summary.n_classes),
                         description=model, dtype=np.float64)
    return World(str(data), "configured", victim, float("nan"), summary,
                 Pool(str(data), pool.x, None), np.argmax(proba, axis=1))


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, transient=True)


@app.command("evaluate")
def evaluate(
    data: DataOption = "sklearn:digits",
    victim: VictimOption = "lr",
    threshold: Annotated[float, typer.Option(min=0.001, max=1.0,
                                             help="Risk at which a caller is flagged")] = 0.5,
    attack_queries: Annotated[int, typer.Option(min=10, help="Queries per attack")] = 2000,
    benign_streams: Streams = 22,
    benign_queries: Queries = 5000,
    seed: Seed = 0,
    label_column: LabelColumn = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON",
                                                  show_default=False)] = None,
    html_out: Annotated[Path | None, typer.Option(
        "--html", help="Write a self-contained HTML report with risk plots",
        show_default=False)] = None,
    suite: Annotated[str | None, typer.Option(
        help="Run the efficacy corpus instead: dev, test or all (victims x honest callers x "
             "thieves through the recommended configuration)", show_default=False)] = None,
    victims: Annotated[str | None, typer.Option(
        help="With --suite: only these corpus victims (comma-separated names)",
        show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="With --suite: local worker processes \\[default: one per core]",
        show_default=False)] = None,
    dask: Annotated[str | None, typer.Option(
        help="With --suite: run on a Dask cluster, e.g. tcp://host:8786",
        show_default=False)] = None,
    markdown_out: Annotated[Path | None, typer.Option(
        "--markdown", help="With --suite: write the tables as Markdown",
        show_default=False)] = None,
    behaviours: Annotated[str | None, typer.Option(
        help="With --suite: only these callers (behaviour or family names, comma-separated)",
        show_default=False)] = None,
    queries: Annotated[int, typer.Option(min=10, help="With --suite: queries per caller")] = 2000,
    benign_per_victim: Annotated[int, typer.Option(
        min=0, help="With --suite: honest streams per victim")] = 34,
) -> None:
    """Replay attacks and benign users through the monitor; when is each flagged?

    With --suite, run the efficacy corpus: many victims, honest callers and thieves through
    the recommended monitor and output bands, reported against the targets.
    """
    if suite is not None:
        cells = _suite_cells(suite, victims, behaviours, seed, queries, benign_per_victim)
        _evaluate_suite(cells, suite, workers, dask, seed, json_out, html_out, markdown_out)
        return
    from ..evaluation import monitor as ev

    results: list[Evaluation] = []
    try:
        base = ev.load_data(data, label_column=label_column, seed=seed)
        for kind in _victims(victim):
            with console.status(f"training {kind} on {base.name}, fitting the summary…"):
                world = ev.build_world(data, kind, seed=seed, pool=base)
            with _progress() as progress:
                task = progress.add_task(f"{kind}: streams", total=None)

                def tick(label: str, done: int, total: int, task: Any = task,
                         progress: Progress = progress) -> None:
                    progress.update(task, description=label, completed=done, total=total)

                result = ev.evaluate(world, threshold=threshold, attack_queries=attack_queries,
                                     benign_streams=benign_streams,
                                     benign_queries=benign_queries, seed=seed, progress=tick)
            results.append(result)
            _print_evaluation(result)
        if json_out is not None:
            ev.write_json(results, json_out)
            console.print(f"wrote {json_out}", markup=False)
        if html_out is not None:
            ev.write_html(results, html_out)
            console.print(f"wrote {html_out}", markup=False)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None


def _suite_cells(suite: str, victims: str | None, behaviours: str | None, seed: int,
                 queries: int, benign_per_victim: int) -> list[Any]:
    from ..monitor.corpus import run

    def names(text: str | None) -> list[str] | None:
        return [v.strip() for v in (text or "").split(",") if v.strip()] or None

    try:
        cells = run.plan(suite, victims=names(victims), behaviours=names(behaviours),
                         seed=seed, queries=queries, benign_per_victim=benign_per_victim)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    if not cells:
        raise fail(f"--behaviours {behaviours!r} names no caller of suite {suite}", 2)
    return cells


def _evaluate_suite(cells: list[Any], suite: str, workers: int | None, dask: str | None,
                    seed: int, json_out: Path | None, html_out: Path | None,
                    markdown_out: Path | None) -> None:
    """`evaluate --suite`: the corpus on local processes or Dask, with a progress bar."""
    import orjson

    from ..monitor.corpus import report, run
    from ..redteam.executors import executor_for

    try:
        executor = executor_for(dask, workers)
        with _progress() as progress:
            task = progress.add_task(f"corpus {suite}", total=len(cells))
            result = run.run(cells, executor, suite=suite, seed=seed,
                             progress=lambda label, done, total: progress.update(
                                 task, description=label, completed=done, total=total))
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    console.print(report.markdown(result), markup=False, soft_wrap=True)
    for path, text in ((markdown_out, report.markdown(result)), (html_out, report.html(result))):
        if path is not None:
            path.write_text(text, encoding="utf-8")
            console.print(f"wrote {path}", markup=False)
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(report.to_dict(result), option=orjson.OPT_INDENT_2
                                          | orjson.OPT_SERIALIZE_NUMPY))
        console.print(f"wrote {json_out}", markup=False)


def _victims(text: str) -> list[str]:
    from ..evaluation.monitor import VICTIMS

    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in VICTIMS]
    if not names or bad:
        raise fail(f"--victim {text!r}: use {', '.join(VICTIMS)} (comma-separated)", 2)
    return names


def _print_evaluation(e: Evaluation) -> None:
    table = tables.Grid(("stream", "side", "queries", "flagged at", "top risk",
                         "top detector"), right=("queries", "flagged at", "top risk"),
                        title=f"{e.data}, victim {e.victim} (accuracy {e.accuracy:.3f}), "
                              f"threshold {e.threshold}")
    rows = [*e.attacks, *([e.tenant] if e.tenant else []), *e.benign]
    for r in rows:
        wrong = (r.flagged_at is not None) != r.attack
        at = "—" if r.flagged_at is None else f"{r.flagged_at:,}"
        table.add_row(r.name, "attack" if r.attack else "benign", f"{r.queries:,}",
                      f"[red]{at}[/]" if wrong else at, f"{r.top_risk:.3f}", r.top_detector)
    console.print(table)
    if e.tenant is not None:
        key = ("no single key was flagged" if e.tenant_key_flagged_at is None
               else f"the first single key at {e.tenant_key_flagged_at:,}")
        tenant = ("never" if e.tenant.flagged_at is None
                  else f"at {e.tenant.flagged_at:,} queries")
        console.print(f"tenant: Knockoff split over keys flagged {tenant}; {key}")
    alarms = sum(r.alarms for r in e.benign)
    console.print(f"benign: {len(e.benign)} streams, {e.benign_queries:,} queries, "
                  f"{e.benign_flagged} flagged; per-query false alarms {e.false_alarm_rate:.3%} "
                  f"({alarms:,} queries); {e.elapsed_s:.1f} s")


@app.command("calibrate")
def calibrate(
    data: DataOption = "sklearn:digits",
    victim: Annotated[str, typer.Option(help="Victim trained on the data: lr or mlp")] = "lr",
    false_alarm_rate: Annotated[float, typer.Option(
        min=0.0, max=0.5, help="Highest share of benign queries (or of benign callers, with "
        "--per stream) flagged; met with the confidence below, not just on the sample")
    ] = 0.001,
    benign_streams: Streams = 22,
    benign_queries: Queries = 5000,
    seed: Seed = 0,
    label_column: LabelColumn = None,
    per: Annotated[str, typer.Option(
        help="What the rate counts: query (benign queries answered while flagged) or stream "
        "(benign callers ever flagged)")] = "query",
    confidence: Annotated[float, typer.Option(
        min=0.5, max=0.999, help="Confidence of the Clopper-Pearson upper bound on the rate"
    )] = 0.95,
    yaml_out: Annotated[Path | None, typer.Option(
        "--yaml", help="Write `monitor: {threshold: X}` to this file", show_default=False
    )] = None,
    model: Annotated[str | None, typer.Option(
        help="Calibrate a configured model instead (its own summary; --data is then rows of "
             "its real, benign traffic)", show_default=False)] = None,
    config: ConfigOption = None,
) -> None:
    """Replay benign users and print the threshold that keeps false alarms under a rate."""
    from ..evaluation import monitor as ev

    try:
        ev.check_sample(false_alarm_rate, per, confidence, benign_streams, benign_queries)
        if model is not None:
            with console.status(f"loading {model} and scoring {data}…"):
                world = _configured_world(config, model, data, label_column)
        else:
            kind = _victims(victim)[0]
            with console.status(f"training {kind} on {data}, fitting the summary…"):
                world = ev.build_world(data, kind, seed=seed, label_column=label_column)
        with _progress() as progress:
            task = progress.add_task("benign streams", total=benign_streams)
            result = ev.calibrate(
                world, false_alarm_rate, benign_streams=benign_streams,
                benign_queries=benign_queries, seed=seed, per=per, confidence=confidence,
                progress=lambda label, done, total: progress.update(
                    task, description=label, completed=done, total=total))
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    _print_calibration(result)
    if not result.feasible:
        raise fail(f"no threshold up to 1.0 keeps false alarms at {false_alarm_rate:.3%} per "
                   f"{per} at {confidence:.0%} confidence: {result.achieved_rate:.3%} of benign "
                   f"{per}s reach risk 1.0 (upper bound {result.upper_bound:.3%})", 1)
    if result.sample < 2 * result.needed:
        err_console.print(f"warning: {result.sample:,} benign {per}s only just support a "
                          f"rate of {false_alarm_rate:g} (no alarm at all needs "
                          f"{result.needed:,}); the threshold is the cautious end of what "
                          "they allow, and a larger sample gives a tighter one", markup=False)
    if yaml_out is not None:
        yaml_out.write_text(result.yaml())
        console.print(f"wrote {yaml_out}", markup=False)


def _print_calibration(c: Calibration) -> None:
    quantile = f"{1 - c.target_rate:.2%} quantile"
    table = tables.Grid(("detector", quantile, "max"), right=(quantile, "max"),
                        title=f"benign detector scores ({c.streams} streams, {c.queries:,} "
                              "queries)")
    for name, q in c.detectors.items():
        table.add_row(name, f"{q['quantile']:.3f}", f"{q['max']:.3f}")
    console.print(table)
    console.print(f"threshold {c.threshold} keeps per-{c.per} false alarms at "
                  f"{c.achieved_rate:.3%} of the sample, at most {c.upper_bound:.3%} at "
                  f"{c.confidence:.0%} confidence (Clopper-Pearson; target ≤ "
                  f"{c.target_rate:.3%}); risk at the {1 - c.target_rate:.2%} quantile of "
                  f"queries: {c.risk_quantile:.3f}", markup=False)
