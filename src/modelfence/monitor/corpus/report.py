"""The corpus's report: the issue's targets as distributions over victims, never one number.

Every target is computed per half (tuning happens on ``dev``; README quotes ``test``) and
shown with its median and worst value over victims (or cells) and whether it was met:

- benign: no honest stream flagged; the share of correct answers kept in the strongest band;
- synthetic thieves flagged within their target on at least 95% of victims, augmentation at
  5% of the spread or more and active learning on at least 90%;
- a Sybil split over keys of one tenant: the tenant flagged no later than one key would be;
- at most 2 band changes and exactly 1 alert per episode;
- a thief that knows the defence gains at most 2 points of fidelity;
- the whole run's time and the monitor's observe cost.

Three forms: JSON (everything), Markdown (for README) and one self-contained HTML page with
the red team's inline SVG charts.
"""

from __future__ import annotations

import math
import platform
import statistics
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

import numpy as np

from ...evaluation.target import Target
from .run import CellResult, CorpusRun, as_dicts

#: Families whose rows are synthetic (issue: flagged within 200 on >= 95% of victims).
SYNTHETIC = ("uniform", "equation", "linesearch", "jacobian", "boundary-walk")
#: Families with a 500-query target on >= 90% of victims (at 5% of spread or more).
AUGMENTED = ("augment-noise", "augment-shift", "augment-mixup", "augment-interp",
             "active-uncertainty", "active-kcenter")
NATURAL = ("knockoff", "slow-low", "sybil-tenants")
#: Issue 15's limits.
BENIGN_STREAMS, KEPT, SYNTH_SHARE, AUG_SHARE = 400, 0.95, 0.95, 0.90
BAND_CHANGES, GAIN_POINTS, ELAPSED_S, OBSERVE_US = 2.0, 2.0, 600.0, 100.0


def _fmt_q(v: float | int | None) -> str:
    return "never" if v is None or (isinstance(v, float) and math.isinf(v)) else f"{int(v):,}"


def _q(v: int | None) -> float:
    return math.inf if v is None else float(v)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def _by_victim(rs: Iterable[CellResult]) -> dict[str, list[CellResult]]:
    out: dict[str, list[CellResult]] = {}
    for r in rs:
        out.setdefault(r.victim, []).append(r)
    return out


def halves(run: CorpusRun) -> list[str]:
    return [h for h in ("dev", "test") if any(r.half == h for r in run.results)]


def targets(run: CorpusRun) -> list[Target]:
    """Every target of every half in the run, then the run-wide ones."""
    out: list[Target] = []
    for half in halves(run):
        rs = [r for r in run.results if r.half == half]
        out += _benign_targets(half, [r for r in rs if r.side == "benign"])
        thieves = [r for r in rs if r.side == "thief"]
        out.append(_detection(half, "synthetic queries flagged in time", SYNTH_SHARE,
                              [r for r in thieves if r.family in SYNTHETIC
                               and r.target is not None]))
        out.append(_detection(half, "augmented (>= 5%) and active flagged in time", AUG_SHARE,
                              [r for r in thieves if r.family in AUGMENTED
                               and r.target is not None]))
        out.append(_sybil(half, [r for r in thieves if r.family == "sybil-keys"]))
        out += _natural(half, [r for r in thieves if r.family in NATURAL])
        out += _episode_targets(half, rs)
        out.append(_gain(half, thieves))
    full = run.suite == "all"
    out.append(Target("all", "whole corpus time", f"<= {ELAPSED_S:.0f} s",
                      f"{run.elapsed_s:.0f} s", f"{run.elapsed_s:.0f} s",
                      run.elapsed_s <= ELAPSED_S if full else None,
                      "" if full else f"suite {run.suite} only"))
    p99 = run.observe_p99_us
    out.append(Target("all", "observe cost p99", f"<= {OBSERVE_US:.0f} us",
                      "—" if run.observe_p50_us is None else f"{run.observe_p50_us:.0f} us (p50)",
                      "—" if p99 is None else f"{p99:.0f} us", None if p99 is None
                      else p99 <= OBSERVE_US, "one row with a tenant, after 2,000 rows"))
    return out


def _benign_targets(half: str, rs: list[CellResult]) -> list[Target]:
    groups = _by_victim(rs)
    flagged = {v: sum(r.flagged for r in g) for v, g in groups.items()}
    total = sum(flagged.values())
    note = (f"{len(rs)} streams of {max((r.queries for r in rs), default=0):,} queries, "
            f"{len(groups)} victims")
    if len(rs) < BENIGN_STREAMS:
        note += f" (fewer than {BENIGN_STREAMS})"
    out = [Target(half, "benign streams flagged", "0", _fmt_n(_median(list(flagged.values()))),
                  f"{max(flagged.values(), default=0)} (total {total})", total == 0, note)]
    kept = [min(r.forced_kept for r in g if r.forced_kept is not None)
            for g in groups.values() if any(r.forced_kept is not None for r in g)]
    out.append(Target(half, "correct answers kept in the strongest band",
                      f">= {KEPT:.0%}", _pct(_median(kept)), _pct(min(kept, default=math.nan)),
                      bool(kept) and min(kept) >= KEPT, "per victim: its worst stream"))
    loss = [max(_loss(r) for r in g) for g in groups.values()]
    out.append(Target(half, "accuracy lost by honest callers", "reported",
                      _pts(_median(loss)), _pts(max(loss, default=math.nan)), None,
                      "per victim: its worst stream, answers shown vs unshaped"))
    return out


def _loss(r: CellResult) -> float:
    if r.accuracy_shown is None or r.accuracy_unshaped is None:
        return 0.0
    return 100.0 * (r.accuracy_unshaped - r.accuracy_shown)


def _detection(half: str, name: str, share: float, rs: list[CellResult]) -> Target:
    """Per behaviour, the share of victims flagging it within its target; met if every
    behaviour reaches `share`."""
    by_b: dict[str, list[CellResult]] = {}
    for r in rs:
        by_b.setdefault(r.behaviour, []).append(r)
    shares = {b: sum(_q(r.flagged_at) <= (r.target or 0) for r in g) / len(g)
              for b, g in by_b.items()}
    at = [_q(r.flagged_at) for r in rs]
    worst_b = min(shares, key=lambda b: shares[b], default="")
    goal = f"within {rs[0].target if rs else '?'} queries on >= {share:.0%} of victims"
    return Target(half, name, goal, f"{_fmt_q(_median(at)) if at else '—'}",
                  f"{_fmt_q(max(at, default=None))}; {worst_b} "
                  f"{shares.get(worst_b, math.nan):.0%} of victims" if rs else "—",
                  bool(rs) and min(shares.values()) >= share,
                  f"{len(by_b)} behaviours x {len(_by_victim(rs))} victims")


def _sybil(half: str, rs: list[CellResult]) -> Target:
    ok = [_q(r.flagged_at) <= _q(r.one_key_flagged_at) for r in rs]
    at = [_q(r.flagged_at) for r in rs]
    lag = [_q(r.flagged_at) - _q(r.one_key_flagged_at) for r in rs
           if r.flagged_at is not None and r.one_key_flagged_at is not None]
    return Target(half, "Sybil over keys: tenant no later than one key", "every victim",
                  f"tenant at {_fmt_q(_median(at)) if at else '—'}",
                  f"tenant at {_fmt_q(max(at, default=None))}; "
                  f"{sum(ok)}/{len(ok)} victims no later", bool(rs) and all(ok),
                  f"worst lag behind one key: {max(lag, default=0):+.0f} queries")


def _natural(half: str, rs: list[CellResult]) -> list[Target]:
    out = []
    for family in dict.fromkeys(r.family for r in rs):
        g = [r for r in rs if r.family == family]
        at = [_q(r.flagged_at) for r in g]
        flagged = sum(r.flagged_at is not None for r in g)
        fd = [r.fidelity_defended / r.fidelity_undefended for r in g
              if r.fidelity_defended is not None and r.fidelity_undefended]
        out.append(Target(half, f"natural-data thief: {family}", "reported (flagged at)",
                          f"{_fmt_q(_median(at))}; keeps {_pct(_median(fd))}",
                          f"{_fmt_q(max(at))}; keeps {_pct(max(fd, default=math.nan))}",
                          None, f"flagged on {flagged}/{len(g)} victims; 'keeps': fidelity "
                          "defended / undefended"))
    return out


def _episode_targets(half: str, rs: list[CellResult]) -> list[Target]:
    episodic = [r for r in rs if r.episodes or r.alerts or r.band_changes]
    per = [r.band_changes_per_episode for r in episodic]
    wrong = [r for r in episodic if not r.alerts_match_episodes]
    return [
        Target(half, "band changes per episode", f"<= {BAND_CHANGES:g}", _fmt_n(_median(per)),
               _fmt_n(max(per, default=math.nan)), max(per, default=0.0) <= BAND_CHANGES,
               f"{len(episodic)} callers with an episode or a band change"),
        Target(half, "alerts per episode", "exactly 1",
               f"{sum(r.alerts for r in episodic)} alerts / "
               f"{sum(r.episodes for r in episodic)} episodes",
               f"{len(wrong)} callers off" + (f" (e.g. {wrong[0].victim} {wrong[0].behaviour})"
                                              if wrong else ""), not wrong,
               "per subject (key, tenant): alerts == rising edges of its flag"),
    ]


def _gain(half: str, rs: list[CellResult]) -> Target:
    per_victim = [max(g) for g in ([r.knowing_gain for r in v if r.knowing_gain is not None]
                                   for v in _by_victim(rs).values()) if g]
    worst = max(per_victim, default=math.nan)
    how = max((r for r in rs if r.knowing_gain is not None), key=lambda r: r.knowing_gain or 0,
              default=None)
    return Target(half, "defence-aware thief's gain", f"<= {GAIN_POINTS:g} points",
                  _pts(_median(per_victim)), _pts(worst),
                  bool(per_victim) and worst <= GAIN_POINTS,
                  "" if how is None else f"worst: {how.victim} {how.behaviour} "
                  f"({how.knowing_strategy})")


def _fmt_n(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:g}"


def _pct(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.1%}"


def _pts(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:+.1f} pts"


def _met(m: bool | None) -> str:
    return "reported" if m is None else ("met" if m else "**missed**")


# JSON ---------------------------------------------------------------------------------------


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def to_dict(run: CorpusRun) -> dict[str, Any]:
    from dataclasses import asdict

    return {"suite": run.suite, "seed": run.seed, "executor": run.executor,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "elapsed_s": run.elapsed_s, "observe_p50_us": run.observe_p50_us,
            "observe_p99_us": run.observe_p99_us,
            "bands": [list(b) for b in run.bands], "monitor": _plain(run.monitor),
            "victims": run.victims, "targets": [asdict(t) for t in targets(run)],
            "cells": as_dicts(run.results)}


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


# Markdown ----------------------------------------------------------------------------------


def markdown(run: CorpusRun) -> str:
    lines = [f"Corpus suite **{run.suite}**, seed {run.seed}: {len(run.results):,} callers on "
             f"{len(run.victims)} victims in {run.elapsed_s:.0f} s ({run.executor}; "
             f"{machine()}; {datetime.now(UTC):%Y-%m-%d}). Bands: "
             + "; ".join(f"`{spec}` from {r:g}" for r, spec, _ in run.bands) + ".", ""]
    lines += targets_markdown(run)
    for half in halves(run):
        lines += ["", f"#### {half} half: thieves over victims", ""]
        lines += behaviour_table([r for r in run.results if r.half == half])
        lines += ["", f"#### {half} half: per victim", ""]
        for name, g in _by_victim(r for r in run.results if r.half == half).items():
            lines += [*victim_table(name, run.victims.get(name, {}), g), ""]
    return "\n".join(lines).rstrip() + "\n"


def targets_markdown(run: CorpusRun) -> list[str]:
    out = ["| half | target | goal | median | worst | met | note |",
           "|---|---|---|---|---|:---:|---|"]
    out += [f"| {t.half} | {t.name} | {t.goal} | {t.median} | {t.worst} | {_met(t.met)} | "
            f"{t.note} |" for t in targets(run)]
    return out


def behaviour_table(rs: list[CellResult]) -> list[str]:
    """One row per thief behaviour: flagged-at and fidelity over victims."""
    out = ["| thief | family | target | flagged at: median | worst | within target | "
           "fidelity defended (median) | undefended | aware gain (worst) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_b: dict[str, list[CellResult]] = {}
    for r in rs:
        if r.side == "thief":
            by_b.setdefault(r.behaviour, []).append(r)
    for b, g in by_b.items():
        at = [_q(r.flagged_at) for r in g]
        target = g[0].target
        within = ("—" if target is None else
                  f"{sum(a <= target for a in at)}/{len(g)}")
        gains = [r.knowing_gain for r in g if r.knowing_gain is not None]
        out.append(f"| {b} | {g[0].family} | {_fmt_q(target) if target else '—'} | "
                   f"{_fmt_q(_median(at))} | {_fmt_q(max(at))} | {within} | "
                   f"{_f3(_median([r.fidelity_defended for r in g if r.fidelity_defended is not None]))} | "  # noqa: E501
                   f"{_f3(_median([r.fidelity_undefended for r in g if r.fidelity_undefended is not None]))} | "  # noqa: E501
                   f"{_pts(max(gains, default=math.nan))} |")
    return out


def _f3(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.3f}"


def victim_table(name: str, facts: dict[str, Any], rs: list[CellResult]) -> list[str]:
    """Rows = thief families (worst flagged-at over their settings), then the benign row."""
    accuracy = facts.get("accuracy", math.nan)
    head = (f"**{name}** ({facts.get('family', '?')}, {facts.get('classes', '?')} classes, "
            f"{facts.get('features', '?')} features, accuracy {accuracy:.3f})")
    out = [head, "", "| caller | flagged at | fidelity defended | undefended | aware |",
           "|---|---:|---:|---:|---:|"]
    thieves = [r for r in rs if r.side == "thief"]
    for family in dict.fromkeys(r.family for r in thieves):
        g = [r for r in thieves if r.family == family]
        at = " / ".join(_fmt_q(r.flagged_at) for r in g)
        out.append(f"| {family} | {at} | {_mean3(r.fidelity_defended for r in g)} | "
                   f"{_mean3(r.fidelity_undefended for r in g)} | "
                   f"{_mean3(r.fidelity_knowing for r in g)} |")
    benign = [r for r in rs if r.side == "benign"]
    if benign:
        flagged = sum(r.flagged for r in benign)
        shown = [r.accuracy_shown for r in benign if r.accuracy_shown is not None]
        unshaped = [r.accuracy_unshaped for r in benign if r.accuracy_unshaped is not None]
        kept = [r.forced_kept for r in benign if r.forced_kept is not None]
        out.append(f"| benign: {len(benign)} streams, {flagged} flagged | — | accuracy "
                   f"{_mean3(shown)} shown | {_mean3(unshaped)} unshaped | strongest band "
                   f"keeps {_pct(min(kept, default=math.nan))} |")
    return out


def _mean3(values: Iterable[float | None]) -> str:
    v = [x for x in values if x is not None]
    return "—" if not v else f"{statistics.fmean(v):.3f}"


# HTML --------------------------------------------------------------------------------------


GROUPS: dict[str, Callable[[CellResult], bool]] = {
    "benign": lambda r: r.side == "benign",
    "synthetic": lambda r: r.family in SYNTHETIC or r.family == "sybil-keys",
    "augmented / active": lambda r: r.family in AUGMENTED,
    "natural": lambda r: r.side == "thief" and r.family in NATURAL,
}
CDF_AT = (10, 20, 50, 100, 200, 500, 1000, 2000)


def html(run: CorpusRun) -> str:
    """One self-contained page: targets, the behaviour tables, detection CDFs and risk plots."""
    from ...redteam.svg import PALETTE

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>modelfence corpus</title>"
             "<style>body{font:14px sans-serif;margin:24px;color:#222}table{border-collapse:"
             "collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}.no{color:#b00;"
             "font-weight:bold}.yes{color:#070}svg{margin:4px}</style></head><body>",
             f"<h1>Efficacy corpus: {escape(run.suite)}</h1>",
             f"<p>{len(run.results):,} callers on {len(run.victims)} victims in "
             f"{run.elapsed_s:.0f} s ({escape(run.executor)}; {escape(machine())}).</p>",
             "<h2>Targets</h2>", _targets_html(run)]
    colors = dict(zip(GROUPS, PALETTE, strict=False))
    for half in halves(run):
        rs = [r for r in run.results if r.half == half]
        parts.append(f"<h2>{half} half</h2><div>{_cdf(rs, colors, half)}</div>")
        parts.append(_md_table_html(behaviour_table(rs)))
        parts.append("<div>")
        groups = _by_victim(rs)
        for name, g in groups.items():
            parts.append(_risk_chart(name, g, colors, run.monitor.get("threshold", 0.5)))
        parts.append("</div>")
        for name, g in groups.items():
            table = victim_table(name, run.victims.get(name, {}), g)
            parts.append(f"<h3>{escape(name)}</h3><p>{escape(table[0].replace('**', ''))}</p>"
                         + _md_table_html(table[2:]))
    parts.append("</body></html>")
    return "".join(parts)


def _targets_html(run: CorpusRun) -> str:
    rows = ["<table><tr><th>half</th><th>target</th><th>goal</th><th>median</th><th>worst"
            "</th><th>met</th><th>note</th></tr>"]
    for t in targets(run):
        cls = "" if t.met is None else ("yes" if t.met else "no")
        rows.append(f"<tr><td>{t.half}</td><td>{escape(t.name)}</td><td>{escape(t.goal)}</td>"
                    f"<td>{escape(t.median)}</td><td>{escape(t.worst)}</td>"
                    f"<td class='{cls}'>{_met(t.met).strip('*')}</td>"
                    f"<td style='text-align:left'>{escape(t.note)}</td></tr>")
    return "".join(rows) + "</table>"


def _md_table_html(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [escape(c.strip()) for c in line.strip().strip("|").split("|")]

    head, body = cells(lines[0]), [cells(x) for x in lines[2:]]
    return ("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
            + "</table>")


def _cdf(rs: list[CellResult], colors: dict[str, str], half: str) -> str:
    """Share of (victim, behaviour) cells flagged by each number of queries, per group."""
    from ...redteam.svg import Series, line_chart

    series = []
    for group, pick in GROUPS.items():
        g = [r for r in rs if pick(r)]
        if not g:
            continue
        ys = [sum(_q(r.first_alert_at if r.side == "benign" else r.flagged_at) <= q
                  for r in g) / len(g) for q in CDF_AT]
        series.append(Series(f"{group} ({len(g)})", [float(q) for q in CDF_AT], ys,
                             colors[group]))
    return line_chart(series, title=f"{half}: share flagged by query", x_label="queries",
                      y_label="share of callers flagged")


def _risk_chart(name: str, rs: list[CellResult], colors: dict[str, str],
                threshold: float) -> str:
    """Median effective risk over queries per group, with its min-max band."""
    from ...redteam.svg import Series, line_chart

    series = []
    for group, pick in GROUPS.items():
        g = [r for r in rs if pick(r) and r.curve]
        if not g:
            continue
        shortest = min((r.curve for r in g), key=lambda c: c[-1][0])
        xs = [float(q) for q, _ in shortest]
        cols = list(zip(*[np.interp(xs, [q for q, _ in r.curve], [v for _, v in r.curve])
                          .tolist() for r in g], strict=True))
        series.append(Series(group, xs, [_median(list(c)) for c in cols], colors[group],
                             [min(c) for c in cols], [max(c) for c in cols]))
    if series:
        series.append(Series("threshold", series[0].xs, [threshold] * len(series[0].xs),
                             "#999999"))
    return line_chart(series, title=name, x_label="queries", y_label="effective risk",
                      log_x=False, markers=False)
