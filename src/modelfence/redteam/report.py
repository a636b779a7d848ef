"""The assessment report: one self-contained HTML page (inline CSS and SVG) and the JSON.

The page answers the owner's questions in order: how much does a given query budget steal
with no defense; what does each defense change (fidelity vs budget, one chart per defense);
what does each defense cost honest callers (benign accuracy vs protection); and the exact
numbers. An assessment run through a live gateway has one defense column, ``gateway``: the
page then shows what the gateway itself did to each cell instead of the benign cost (which
a caller cannot measure from outside): the monitor's risk score over the attack, the answers
per output-shaping band and the refusal that stopped the cell. Nothing is fetched from
anywhere, so the file can be mailed or archived as is.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np
import orjson

from .attacks import ATTACKS, split_attack
from .results import Assessment, AttackResult
from .svg import PALETTE, Point, Series, line_chart, scatter_chart

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222;
padding:0 1em}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f5f5f5}td.l,th.l{text-align:left}.grid{display:flex;
flex-wrap:wrap;gap:12px}.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
.key{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}.muted{color:#666}"""


def attack_label(name: str) -> str:
    kind, variant = split_attack(name)
    return f"{ATTACKS[kind].title}, {'soft labels' if variant == 'soft' else 'labels only'}"


def _stats(a: Assessment, attack: str, defense: str, budget: int) -> tuple[float, float, float]:
    v = a.fidelity(attack, defense, budget)
    return (float(np.mean(v)), float(np.min(v)), float(np.max(v))) if v else (np.nan,) * 3


def protection(a: Assessment, defense: str, *, soft_only: bool = False) -> tuple[float, str]:
    """1 - the strongest attack's mean fidelity at the largest budget, and that attack.

    With `soft_only`, only attacks that see the (shaped) probabilities count: a label-only
    thief sees the same answers under every top-1-preserving defense, so including it would
    rank every defense alike. (Falls back to all attacks when none is soft.)
    """
    top = a.budgets[-1]
    pool = [at for at in a.attacks if not at.endswith(":labels")] if soft_only else []
    best = max(pool or a.attacks, key=lambda at: _stats(a, at, defense, top)[0])
    return 1.0 - _stats(a, best, defense, top)[0], best


def _charts(a: Assessment) -> str:
    colors = {at: PALETTE[i % len(PALETTE)] for i, at in enumerate(a.attacks)}
    legend = "".join(f'<span><i class="sw" style="background:{colors[at]}"></i>'
                     f"{escape(attack_label(at))}</span>" for at in a.attacks)
    charts = []
    for d in a.defenses:
        series = []
        for at in a.attacks:
            s = [_stats(a, at, d.spec, b) for b in a.budgets]
            series.append(Series(attack_label(at), list(a.budgets), [m for m, _, _ in s],
                                 colors[at], [lo for _, lo, _ in s], [hi for _, _, hi in s]))
        charts.append(line_chart(series, title=f"{d.description}", x_label="queries (budget)",
                                 y_label="fidelity"))
    return f'<p class="legend">{legend}</p><div class="grid">{"".join(charts)}</div>'


def _tradeoff(a: Assessment) -> str:
    labelled = all(d.benign_accuracy is not None for d in a.defenses)
    points = []
    for i, d in enumerate(a.defenses):
        benign = d.benign_accuracy if labelled and d.benign_accuracy is not None \
            else d.benign_agreement
        if benign is None:
            continue
        points.append(Point(d.spec, protection(a, d.spec, soft_only=True)[0], benign,
                            PALETTE[i % len(PALETTE)]))
    low = min([p.y for p in points] + [0.8])
    y_range = (max(0.0, np.floor(low * 10) / 10 - 0.1), 1.0)
    x_max = min(1.0, max(0.2, float(np.ceil(max([p.x for p in points] + [0.0]) * 5) / 5)))
    what = "benign accuracy" if labelled else "agreement with the model"
    return scatter_chart(points, title=f"{what} vs protection at {a.budgets[-1]:,} queries",
                         x_label="protection = 1 - strongest soft-label attack's fidelity",
                         y_label=what, y_range=y_range, x_range=(0.0, x_max))


def _fidelity_table(a: Assessment) -> str:
    top = a.budgets[-1]
    head = "".join(f"<th>{escape(d.spec)}</th>" for d in a.defenses)
    rows = []
    for at in a.attacks:
        cells = []
        for d in a.defenses:
            m, lo, hi = _stats(a, at, d.spec, top)
            if np.isnan(m):
                cells.append("<td>—</td>")
                continue
            shade = f"rgba(214,39,40,{max(0.0, m) * 0.45:.2f})"
            cells.append(f'<td style="background:{shade}" title="min {lo:.3f}, max {hi:.3f}">'
                         f"{m:.3f}</td>")
        rows.append(f'<tr><td class="l">{escape(attack_label(at))}</td>{"".join(cells)}</tr>')
    return (f'<table><tr><th class="l">attack \\ defense</th>{head}</tr>{"".join(rows)}'
            "</table>")


def _defense_table(a: Assessment) -> str:
    rows = []
    for d in a.defenses:
        prot, strongest = protection(a, d.spec)
        soft, soft_best = protection(a, d.spec, soft_only=True)
        acc, agree, tv = (_num(v) for v in (d.benign_accuracy, d.benign_agreement,
                                             d.distortion))
        rows.append(
            f'<tr><td class="l">{escape(d.spec)}</td><td class="l">{escape(d.description)}</td>'
            f"<td>{acc}</td><td>{agree}</td><td>{tv}</td>"
            f"<td>{1 - soft:.3f}</td><td class=\"l\">{escape(attack_label(soft_best))}</td>"
            f"<td>{1 - prot:.3f}</td><td class=\"l\">{escape(attack_label(strongest))}</td></tr>")
    top = f"{a.budgets[-1]:,}"
    return ('<table><tr><th class="l">defense</th><th class="l">what callers see</th>'
            "<th>benign accuracy</th><th>agreement with model</th><th>distortion (TV)</th>"
            f"<th>strongest soft-label attack's fidelity at {top}</th>"
            '<th class="l">that attack</th>'
            f"<th>strongest attack's fidelity at {top}</th>"
            f'<th class="l">that attack</th></tr>{"".join(rows)}</table>')


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _cell_label(c: AttackResult) -> str:
    return f"{attack_label(c.name)}, seed {c.seed}"


def _risk_chart(a: Assessment) -> str:
    """Risk score vs queries answered, one line per cell that has a risk trail."""
    series = [Series(_cell_label(c), [q for q, _ in c.risk_trail],
                     [r for _, r in c.risk_trail], PALETTE[i % len(PALETTE)])
              for i, c in enumerate(a.cells) if c.risk_trail]
    legend = "".join(f'<span><i class="sw" style="background:{s.color}"></i>'
                     f"{escape(s.name)}</span>" for s in series)
    chart = line_chart(series, title="risk score over the attack", x_label="queries answered",
                       y_label="risk score", log_x=False, markers=False)
    return f'<p class="legend">{legend}</p>{chart}'


def _bands(c: AttackResult) -> str:
    total = sum(c.bands.values())
    return ", ".join(f"{escape(b)} {n:,}" for b, n in c.bands.items()) if total else "—"


def _cells_table(a: Assessment) -> str:
    """Per cell: whose key, how far it got, what the gateway shaped, risk, and the stop."""
    rows = []
    for c in a.cells:
        last = c.points[-1] if c.points else None
        fid = "—" if last is None else f"{last.fidelity:.3f} at {last.queries:,}"
        stop = "—" if c.stopped is None else (
            f"<b>{c.stopped.status}</b> after {c.stopped.after:,}: {escape(c.stopped.message)}")
        rows.append(
            f'<tr><td class="l">{escape(attack_label(c.name))}</td><td>{c.seed}</td>'
            f'<td class="l">{escape(c.principal or "—")}</td><td>{c.queries:,}</td>'
            f"<td>{c.requests:,}</td><td>{fid}</td><td class=\"l\">{_bands(c)}</td>"
            f"<td>{_num(c.peak_risk)}</td><td class=\"l\">{stop}</td></tr>")
    return ('<table><tr><th class="l">attack</th><th>seed</th><th class="l">principal</th>'
            "<th>queries answered</th><th>requests</th><th>last fidelity</th>"
            '<th class="l">answers per band</th><th>peak risk</th>'
            f'<th class="l">stopped by the gateway</th></tr>{"".join(rows)}</table>')


def _gateway_findings(a: Assessment) -> str:
    top = a.budgets[-1]
    prot, best = protection(a, "gateway")
    out = [f"Through the gateway, the strongest attack ({escape(attack_label(best))}) copies "
           f"the model to <b>{1 - prot:.1%}</b> fidelity with a budget of {top:,} queries."
           if not np.isnan(prot) else "No attack got an answer through the gateway."]
    stopped = [c for c in a.cells if c.stopped is not None]
    if stopped:
        by = {s: sum(1 for c in stopped if c.stopped and c.stopped.status == s)
              for s in sorted({c.stopped.status for c in stopped if c.stopped})}
        what = ", ".join(f"{n} by a {s}" for s, n in by.items())
        out.append(f"The gateway stopped {len(stopped)} of {len(a.cells)} cells before their "
                   f"budget ({what}).")
    else:
        out.append(f"No cell was stopped: every attack got its {top:,} queries answered.")
    peaks = [(c.peak_risk, c) for c in a.cells if c.peak_risk is not None]
    if peaks:
        peak, cell = max(peaks, key=lambda pc: pc[0] or 0.0)
        out.append(f"The monitor's risk score peaked at <b>{peak:.2f}</b> "
                   f"({escape(_cell_label(cell))}).")
    bands: dict[str, int] = {}
    for c in a.cells:
        for b, n in c.bands.items():
            bands[b] = bands.get(b, 0) + n
    if bands:
        total = sum(bands.values())
        out.append("Answers per output-shaping band, all cells: " + ", ".join(
            f"{escape(b)} {n / total:.0%}" for b, n in bands.items()) + ".")
    return "".join(f"<li>{line}</li>" for line in out)


def _findings(a: Assessment) -> str:
    if a.remote:
        return _gateway_findings(a)
    top = a.budgets[-1]
    out = []
    if any(d.spec == "none" for d in a.defenses):
        prot, best = protection(a, "none")
        out.append(f"Undefended, the strongest attack ({escape(attack_label(best))}) copies the "
                   f"model to <b>{1 - prot:.1%}</b> fidelity with {top:,} queries.")
    others = [d for d in a.defenses if d.spec != "none"]
    if others:
        best_d = max(others, key=lambda d: protection(a, d.spec, soft_only=True)[0])
        prot, best = protection(a, best_d.spec, soft_only=True)
        out.append(f"Against thieves that learn from the probabilities, the most protective "
                   f"defense here is <b>{escape(best_d.description)}</b>: the strongest such "
                   f"attack ({escape(attack_label(best))}) reaches {1 - prot:.1%} at {top:,} "
                   f"queries, and honest callers get the model's decision on "
                   f"{best_d.benign_agreement:.1%} of the held-out rows.")
    label_only = [at for at in a.attacks if at.endswith(":labels")]
    if label_only and others:
        worst = min(min(_stats(a, at, d.spec, top)[0] for d in a.defenses)
                    for at in label_only)
        out.append(f"A label-only thief is not slowed by defenses that keep the top class: "
                   f"it reaches at least {worst:.1%} under every defense here. Only query "
                   "budgets and detection limit it.")
    return "".join(f"<li>{line}</li>" for line in out)


def render_html(a: Assessment) -> str:
    """The report as one HTML string."""
    acc = "unknown (the pool has no labels)" if a.victim_accuracy is None \
        else f"{a.victim_accuracy:.3f}"
    meta = (f"<tr><td class=l>model</td><td class=l>{escape(a.target)}</td></tr>"
            f"<tr><td class=l>classes, features</td><td class=l>{a.n_classes}, "
            f"{a.n_features}</td></tr>"
            f"<tr><td class=l>attacker's pool</td><td class=l>{escape(a.pool)}: "
            f"{a.attack_rows:,} rows to query, {a.eval_rows:,} held out</td></tr>"
            f"<tr><td class=l>model accuracy (held out)</td><td class=l>{acc}</td></tr>"
            f"<tr><td class=l>thief</td><td class=l>{escape(a.thief)}</td></tr>"
            f"<tr><td class=l>budgets; seeds</td><td class=l>"
            f"{', '.join(f'{b:,}' for b in a.budgets)}; {len(a.seeds)} seed(s)</td></tr>"
            f"<tr><td class=l>ran on</td><td class=l>{escape(a.executor)}, "
            f"{a.elapsed_s:.0f} s, {escape(a.created)}</td></tr>")
    if a.remote:
        return _render_remote(a, meta)
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>modelfence red-team assessment</title><style>{CSS}</style></head><body>
<h1>What a query budget steals: red-team assessment</h1>
<table>{meta}</table>
<div class="key"><ul>{_findings(a)}</ul></div>
<h2>Fidelity vs budget, per defense</h2>
<p>Each chart is one defense applied to the model's answers; each line is an attack (mean over
{len(a.seeds)} seed(s), band = min to max). <b>Fidelity</b> is the share of {a.eval_rows:,}
held-out rows on which the thief's copy decides like the model.</p>
{_charts(a)}
<h2>Benign accuracy vs protection</h2>
<p>Up is better for honest callers; right is better against thieves. Protection is
1 &minus; the fidelity of the strongest attack that learns from the probabilities, at
{a.budgets[-1]:,} queries (label-only thieves see the same answers under every defense
here, so they would rank all defenses alike).</p>
{_tradeoff(a)}
<h2>Fidelity at {a.budgets[-1]:,} queries</h2>{_fidelity_table(a)}
<h2>Defenses</h2>{_defense_table(a)}
<h2>How to read this</h2>
<p class="muted">Each cell is one run of an attack to the largest budget; the thief at a smaller
budget is trained on that run's first queries. Soft-label attacks see the (shaped)
probabilities, label-only attacks see only the decision. Defenses run in-process on the
model's answers exactly as the gateway's output shaping would apply them; keyed noise uses a
secret fixed per seed. Benign accuracy is measured on the held-out rows through each defense.
Risk over time is not shown: an in-process run has no extraction monitor, so there is no
per-caller risk score to plot. Run <code>modelfence assess</code> against a live gateway
address with its admin token to see the monitor's risk score, output shaping and quotas
act on each attack.</p>
</body></html>"""


def _render_remote(a: Assessment, meta: str) -> str:
    """The page of an assessment run through a live gateway."""
    risk = ""
    if any(c.risk_trail for c in a.cells):
        risk = f"""<h2>Risk score over the attack</h2>
<p>The gateway's extraction monitor scores each caller from 0 to 1; each line is one cell's
key, read through the admin API as its queries were answered. The output-shaping bands of
the model switch on this score.</p>
{_risk_chart(a)}"""
    else:
        risk = ("<p class=\"muted\">No risk trail: the model is not monitored by this gateway "
                "(<code>models[].monitor</code>), so there is no risk score to plot.</p>")
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>modelfence red-team assessment</title><style>{CSS}</style></head><body>
<h1>What a query budget steals through the gateway: red-team assessment</h1>
<table>{meta}</table>
<div class="key"><ul>{_findings(a)}</ul></div>
<h2>Fidelity vs budget through the gateway</h2>
<p>Each line is an attack (mean over {len(a.seeds)} seed(s), band = min to max).
<b>Fidelity</b> is the share of {a.eval_rows:,} held-out rows on which the thief's copy
decides like the model as the gateway answers an honest caller. A cell the gateway stopped
is measured on the queries it had answered.</p>
{_charts(a)}
{risk}
<h2>Cells</h2>{_cells_table(a)}
<h2>Fidelity at {a.budgets[-1]:,} queries</h2>{_fidelity_table(a)}
<h2>How to read this</h2>
<p class="muted">Each cell is one run of an attack to the largest budget with its own freshly
minted API key (revoked afterwards), so cells share neither risk nor budgets; the thief at
a smaller budget is trained on that run's first queries. The gateway acted on every query as
on any caller: its output shaping (a soft-label thief given only a label uses it as a
one-hot answer), its monitor and its quotas. The held-out rows were labelled through one more
key, as an honest caller sees the model.</p>
</body></html>"""


def write_report(a: Assessment, folder: str | Path) -> tuple[Path, Path]:
    """Write ``assessment.json`` and ``report.html`` into `folder`; return both paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "assessment.json", out / "report.html"
    json_path.write_bytes(orjson.dumps(a.to_dict(), option=orjson.OPT_INDENT_2))
    html_path.write_text(render_html(a), encoding="utf-8")
    return json_path, html_path
