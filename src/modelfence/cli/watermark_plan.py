"""`modelfence watermark plan`: marks needed per model, the rate used, its honest cost.

Per model: its class count (from the local model file, else from the plan file), how often
independently trained models disagree with it (measured on labelled `--data` by training
reference models of several families and comparing their answers with the model's on
held-out rows; else the plan file's or the configured assumption), the marks a holder needs
for `watermark.target_log2_p`, the share of answers that gives them, what a perfect copy
holds and reaches at 1,000 / 2,000 / 5,000 answers, and what the marks cost honest callers.
`--write` saves it as the plan file the gateway reads (`watermark.plan_file`).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape

from ..config import LocalBackend, ModelSettings, Settings
from ..errors import ModelfenceError
from . import tables
from .common import ConfigOption, console, fail

if TYPE_CHECKING:
    from ..watermark.power import Measured, ModelPlan
    from ..watermark.settings import WatermarkSettings

#: Rows each reference trains on, and rows the disagreement is measured on, at most.
TRAIN_ROWS = 5000
MEASURE_ROWS = 5000
HOLD_OUT = 0.3


@dataclass(frozen=True)
class Measurement:
    """Disagreement of reference models with the protected one on held-out rows."""

    disagreement: float
    accuracy: float | None
    per_reference: dict[str, float]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"references": self.per_reference, "rows": self.rows}


def plan(
    config: ConfigOption = None,
    model: Annotated[str | None, typer.Option(
        help="Only this model (default: every watermarked model)", show_default=False)] = None,
    data: Annotated[str | None, typer.Option(
        help="Labelled rows of the model's task, ideally not its training rows (.npz with "
             "x and y, .csv/.parquet with --label-column, or sklearn:NAME): reference models "
             "train on 70% and their disagreement with the model is measured on the rest",
        show_default=False)] = None,
    label_column: Annotated[str | None, typer.Option(
        help="CSV/Parquet column of the rows' true classes", show_default=False)] = None,
    references: Annotated[int, typer.Option(
        min=2, max=50, help="Reference models trained on --data (several families)")] = 6,
    trust: Annotated[list[str] | None, typer.Option(
        "--trust", help="A type in a skops file to trust; repeat for more")] = None,
    write: Annotated[Path | None, typer.Option(
        help="Write the plan file the gateway reads (watermark.plan_file); other models "
             "already in it are kept", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON")] = False,
) -> None:
    """Print, per model, the marks a holder needs and the marking rate that gives them."""
    from ..watermark.power import VOLUMES, plan_model, read_plan, write_plan
    from .watermark import watermark_settings

    path, settings, ws = watermark_settings(config)
    names = _models(settings, ws, model, path)
    if data is not None and len(names) != 1:
        raise fail("--data measures one model: name it with --model", 2)
    try:
        known = read_plan(ws.plan_file) if ws.plan_file is not None and (
            ws.plan_file.is_file()) else {}
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    volumes = tuple(sorted({*VOLUMES, ws.holding}))
    plans: list[ModelPlan] = []
    entries: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    for name in names:
        ms = settings.model(name)
        assert ms is not None
        try:
            k, victim = _classes(ms, known.get(name), tuple(trust or ()))
        except ModelfenceError as exc:
            if model is not None:
                raise fail(str(exc), 2) from None
            skipped.append({"model": name, "reason": str(exc)})
            continue
        measurement: Measurement | None = None
        if data is not None:
            measurement = _measure(victim, data, label_column, references, json_out)
        prior = known.get(name)
        if prior is not None and not prior.measured:
            prior = None  # an assumption written earlier: today's assumption stands
        d = (measurement.disagreement if measurement is not None
             else prior.disagreement if prior is not None else None)
        acc = (measurement.accuracy if measurement is not None
               else prior.accuracy if prior is not None else None)
        try:
            p = plan_model(ws, name, k, disagreement=d, measured=d is not None,
                           accuracy=acc, volumes=volumes)
        except ModelfenceError as exc:
            raise fail(f"model {name}: {exc}", 2) from None
        plans.append(p)
        entries[name] = {**p.to_dict(), "measurement": (
            measurement.to_dict() if measurement is not None else None)}
    if not entries:
        raise fail("no model could be planned: " + "; ".join(
            f"{s['model']}: {s['reason']}" for s in skipped), 2)
    if write is not None:
        try:
            write_plan(write, entries)
        except ModelfenceError as exc:
            raise fail(str(exc), 2) from None
    if json_out:
        console.print_json(orjson.dumps({
            "target_log2_p": ws.target_log2_p, "holding": ws.holding,
            "fraction": ws.fraction, "max_fraction": ws.max_fraction,
            "control_ratio": ws.control_ratio, "repeats": ws.repeats,
            "models": list(entries.values()), "skipped": skipped,
            "written": str(write) if write is not None else None}).decode())
        return
    _print(plans, skipped, ws, write)


def _models(settings: Settings, ws: WatermarkSettings, model: str | None,
            path: Path) -> list[str]:
    if model is not None:
        if settings.model(model) is None:
            raise fail(f"no model {model!r} in {path}; configured: "
                       + (", ".join(m.name for m in settings.models) or "none"), 2)
        if not ws.marks(model):
            raise fail(f"model {model!r} is not watermarked (watermark.models: "
                       f"{', '.join(ws.models)})", 2)
        return [model]
    names = [m.name for m in settings.models if ws.marks(m.name)]
    if not names:
        raise fail(f"{path}: no watermarked models", 2)
    return names


def _classes(ms: ModelSettings, prior: Measured | None, trusted: tuple[str, ...]
             ) -> tuple[int, Any]:
    """The model's class count, and the loaded model when it is a local file."""
    from ..errors import ConfigurationError

    if isinstance(ms.backend, LocalBackend) and ms.backend.type != "pickle":
        from ..redteam.victims import victim_source

        victim = victim_source(ms.backend.path, trusted_types=(
            *ms.backend.trusted_types, *trusted)).load()
        return victim.n_classes, victim
    if prior is not None:
        return prior.n_classes, None
    raise ConfigurationError(
        f"model {ms.name!r} is not a local .skops/.onnx file, so its class count is unknown "
        "here; add it to watermark.plan_file (n_classes, disagreement)")


def _measure(victim: Any, data: str, label_column: str | None, count: int,
             quiet: bool) -> Measurement:
    """Train `count` references on part of `data`; their disagreement on the rest."""
    import numpy as np
    from rich.progress import Progress

    from ..redteam.data import load_pool
    from ..watermark.references import DEFAULT_FAMILIES, train_references

    if victim is None:
        raise fail("--data needs the model as a local .skops/.onnx file", 2)
    try:
        pool = load_pool(data, n_features=victim.n_features, label_column=label_column)
    except ModelfenceError as exc:
        raise fail(f"--data {data}: {exc}", 2) from None
    if pool.y is None:
        raise fail(f"--data {data}: has no labels (an .npz's y, or --label-column)", 2)
    train, held = pool.split(HOLD_OUT, 0)
    assert train.y is not None and held.y is not None
    rng = np.random.default_rng(0)
    tx, ty = _cap(train.x, train.y, TRAIN_ROWS, rng)
    hx, hy = _cap(held.x, held.y, MEASURE_ROWS, rng)
    classes = victim.classes
    ours = [_norm(classes[i] if classes is not None else i) for i in victim.ask(hx).labels]
    truth = [_norm(v) for v in hy]
    if not set(truth) & set(ours):
        raise fail(f"--data {data}: its labels ({', '.join(sorted(set(truth))[:5])}) do not "
                   "name the model's classes", 2)
    accuracy = float(np.mean([a == b for a, b in zip(ours, truth, strict=True)]))
    per: dict[str, float] = {}
    show = console.is_terminal and not quiet
    with Progress(console=console, transient=True) if show else nullcontext() as bar:
        task = bar.add_task("training reference models", total=count) if bar else None
        for i in range(count):
            try:
                (ref,) = train_references(tx, ty, count=1, seed=i,
                                          families=[DEFAULT_FAMILIES[i % len(DEFAULT_FAMILIES)]])
            except ModelfenceError as exc:
                raise fail(f"--data {data}: {exc}", 2) from None
            theirs = [_norm(v) for v in ref.labels(hx)]
            per[ref.name] = float(np.mean([a != b for a, b in zip(ours, theirs, strict=True)]))
            if bar is not None and task is not None:
                bar.update(task, advance=1)
    return Measurement(float(np.mean(list(per.values()))), accuracy, per, len(hx))


def _cap(x: Any, y: Any, rows: int, rng: Any) -> tuple[Any, Any]:
    if len(x) <= rows:
        return x, y
    take = rng.choice(len(x), rows, replace=False)
    return x[take], y[take]


def _norm(v: Any) -> str:
    """A class name comparable across files and models: 1, 1.0 and '1' are one class."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if math.isfinite(f) and f.is_integer() else str(v)


def _p(log2_p: float) -> str:
    return "1" if log2_p >= 0 else f"2^{log2_p:.1f}"


def _print(plans: list[ModelPlan], skipped: list[dict[str, str]], ws: WatermarkSettings,
           written: Path | None) -> None:
    if plans:
        numbers = ("classes", "disagreement", "marks needed", "fraction", "honest cost")
        head = tables.Grid(("model", *numbers), right=numbers,
                           title=f"watermark plan: 95% of callers holding {ws.holding:,} "
                                 f"answers hold the marks for p <= 2^{ws.target_log2_p:g}")
        for p in plans:
            frac = f"{p.fraction:.3%}"
            if p.capped:
                frac += "\n(capped; needs " + (
                    "> every answer" if math.isinf(p.wanted_fraction)
                    else f"{p.wanted_fraction:.3%}") + ")"
            cost = f"{p.honest_cost_points:.2f} pts" + (
                "" if p.accuracy is not None else "\n(at most)")
            head.add_row(escape(p.model), str(p.n_classes), f"{p.disagreement:.3f}\n"
                         + ("measured" if p.measured else "assumed"), str(p.marks_needed),
                         frac, cost)
        console.print(head)
        volumes = ("answers", "rate", "marks\n(mean)", "p", "marks\n(95% hold)", "p\n(held)",
                   "honest\ncost")
        reach = tables.Grid(("model", *volumes), right=volumes,
                            title="at each volume: the rate in force, what a perfect copy "
                                  "holds and reaches, what an honest caller paid")
        for p in plans:
            for v in p.volumes:
                reach.add_row(escape(p.model), f"{v.answers:,}", f"{v.rate:.3%}",
                              f"{v.expected_marks:.1f}", _p(v.log2_p_expected),
                              str(v.held_marks), _p(v.log2_p_held),
                              f"{v.honest_cost_points:.2f} pts")
        console.print(reach)
        console.print(f"controls: {ws.control_ratio:g} per mark; repeats: {ws.repeats}. A "
                      "perfect copy repeats every mark it holds and elsewhere disagrees "
                      "with the model as often as independently trained models do. Honest "
                      "cost: points of top-1 accuracy an honest caller loses (at most the "
                      "fraction, when the model's accuracy is unknown)", soft_wrap=True)
    for s in skipped:
        console.print(f"[yellow]skipped[/] {escape(s['model'])}: {escape(s['reason'])}",
                      soft_wrap=True)
    if written is not None:
        used = ws.plan_file is not None and ws.plan_file == written.resolve()
        console.print(f"plan written to {written}" + (
            "; the gateway reads it at start (watermark.plan_file)" if used
            else "; set watermark.plan_file to it for the gateway to use it"))
