"""The evidence bundle as one self-contained HTML page, for people who are not statisticians.

It says what was asked of the suspect, what matched, what each p-value means in words (as
unlikely as N fair coins all landing heads, N = -log2 p), every test on its own, the
verdict and its reasons, and the timestamp's status. No script, no external resource;
every value from the bundle is escaped. It renders defensively: a member the bundle lacks
is shown as "not run", and bundles of the first schema (one decoy test, per-principal
table) still render. Only the JSON is signed; this page is a rendering of it.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from .stats import format_p

CSS = """body{font:15px/1.5 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f5f5f5}.v{padding:.7em 1em;
border-left:6px solid}.yes{background:#fdecea;border-color:#c62828}.no{background:#eef5ee;
border-color:#2e7d32}.muted{color:#666}.hit{font-weight:bold;color:#c62828}
code{font-size:12px}.box{background:#f7f7fb;padding:.6em 1em;border-radius:4px}"""
MAX_ROWS = 500
NOT_RUN = "not run"


def _e(v: Any) -> str:
    return escape("-" if v is None else str(v), quote=True)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _p(log2_p: Any) -> str:
    """A p-value for the table: 3.1e-12 (2^-38.2), or "not run"."""
    lp = _num(log2_p)
    return NOT_RUN if lp is None else format_p(lp)


def coins(log2_p: Any) -> str:
    """The p-value in words: as unlikely as N fair coins all landing heads."""
    lp = _num(log2_p)
    if lp is None:
        return NOT_RUN
    n = -lp
    if n < 1:
        return "no more unlikely than a single fair coin landing heads: no surprise at all"
    count = f"{n:,.0f}" if n >= 10 else f"{n:.1f}".rstrip("0").rstrip(".")
    return f"as unlikely as {count} fair coins, tossed together, all landing heads"


def _d(doc: dict[str, Any], key: str) -> dict[str, Any]:
    v = doc.get(key)
    return v if isinstance(v, dict) else {}


def _l(doc: dict[str, Any], key: str) -> list[Any]:
    v = doc.get(key)
    return v if isinstance(v, list) else []


def _counts(d: Any) -> str:
    if not isinstance(d, dict) or not d:
        return "none"
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items()))


def _table(head: list[str], rows: list[list[Any]], marked: set[int] | None = None) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        ("<tr class=hit>" if marked and i in marked else "<tr>")
        + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for i, r in enumerate(rows))
    return f"<table><tr>{th}</tr>{body}</table>"


def _kv(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                               for k, v in rows) + "</table>"


def _verdict(doc: dict[str, Any]) -> list[str]:
    v = _d(doc, "verdict")
    accused = v.get("accused") is True
    parts = [f"<div class='v {'yes' if accused else 'no'}'><b>"
             f"{'Copy identified' if accused else 'Not identified as a copy'}</b>: "
             f"{_e(v.get('summary', 'no verdict in the bundle'))}</div>"]
    reasons = [r for r in _l(v, "reasons") if r is not None]
    if reasons:
        parts.append("<p>Why:</p><ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons)
                     + "</ul>")
    alpha = _num(v.get("alpha"))
    lp = _num(v.get("log2_p"))
    words = ["<div class=box><p><b>What the p-value means.</b> Suppose the suspect had been "
             "made <i>without</i> this model's answers (an independent model). The p-value is "
             "the chance that such a model would still match this model's answers (above all "
             "our secret, deliberately altered ones) at least as well as the suspect did. "
             "A small p-value means the match is too good to be chance. It is <i>not</i> "
             "the chance that the suspect is innocent.</p>"]
    if lp is not None:
        words.append(f"<p>Here p = <b>{_e(format_p(lp))}</b>: {_e(coins(lp))}.</p>")
    if alpha is not None and 0 < alpha < 1:
        words.append(f"<p>A copy is declared only when p is at most alpha = {_e(f'{alpha:g}')}"
                     f" ({_e(coins(math.log2(alpha)))}), decided before the suspect was "
                     "asked.</p>")
    words.append("</div>")
    return parts + words


def _examined(doc: dict[str, Any]) -> list[str]:
    sus, ev = _d(doc, "suspect"), _d(doc, "evidence")
    asked = _d(ev, "asked")
    keys = ev.get("watermark_keys")
    return ["<h2>What was examined</h2>", _kv([
        ("suspect", f"{sus.get('description', '-')} ({sus.get('kind', '-')})"),
        ("suspect file SHA-256", sus.get("sha256")),
        ("questions put to the suspect", sus.get("queries")),
        ("principal", doc.get("principal") or "all principals"),
        ("watermark keys", ", ".join(map(str, keys)) if isinstance(keys, list) else None),
        ("records (by kind)", _counts(ev.get("records"))),
        ("excluded records", _counts(ev.get("excluded"))),
        ("marked inputs asked", asked.get("watermark")),
        ("control inputs asked", asked.get("control")),
        ("started", doc.get("started")), ("finished", doc.get("finished")),
        ("modelfence version", doc.get("modelfence"))])]


def _asked(doc: dict[str, Any]) -> list[str]:
    """What was asked and what matched, in counts, before any statistics."""
    queries = [q for q in _l(doc, "queries") if isinstance(q, dict)]
    marks = [q for q in queries if q.get("kind") == "watermark"]
    controls = [q for q in queries if q.get("kind") == "control"]
    repeated = sum(q.get("repeats_watermark") is True for q in marks)
    mark_dis = sum(q.get("agrees_with_model") is False for q in marks)
    ctl_dis = sum(q.get("agrees_with_model") is False for q in controls)
    out = ["<h2>What was asked, and what matched</h2>",
           "<p>When callers queried the protected model through the gateway, a small share of "
           "its answers were deliberately altered (<b>marked</b>): a wrong label chosen by a "
           "secret key. Other answers of the same callers were recorded unaltered as "
           "<b>controls</b>. Each recorded input was put to the suspect again.</p>"]
    if not queries:
        return [*out, "<p>No recorded inputs were put to the suspect.</p>"]
    out.append(_kv([
        ("marked inputs asked", len(marks)),
        ("… where the suspect disagreed with the protected model", mark_dis),
        ("… where the suspect gave exactly our altered answer", repeated),
        ("control inputs asked", len(controls)),
        ("… where the suspect disagreed with the protected model", ctl_dis)]))
    if marks:
        rate = f"{mark_dis / len(marks):.1%}"
        base = f"{ctl_dis / len(controls):.1%}" if controls else "unknown (no controls)"
        out.append(f"<p>A model made independently has no reason to disagree with the "
                   f"protected model more often on marked inputs than on controls, nor to "
                   f"pick our altered label. The suspect disagreed on {_e(rate)} of marked "
                   f"inputs and {_e(base)} of controls, and gave our altered answer on "
                   f"{_e(repeated)} of {_e(len(marks))} marked inputs.</p>")
    return out


def _sets(tests: dict[str, Any], convicting: Any) -> list[str]:
    sets = [s for s in _l(tests, "sets") if isinstance(s, dict)]
    out = ["<h3>Test 1: the marked answers, per group of records</h3>"]
    if not sets:
        return [*out, f"<p class=muted>{NOT_RUN}</p>"]
    out.append("<p>Each group is tested on its own: every principal (API caller), every tenant, "
               "and all records together. Because several groups were tested, each p-value "
               "is multiplied by the number of groups (the <b>adjusted</b> p, Bonferroni), so "
               "testing many groups cannot manufacture a conviction by luck.</p>")
    rows, hits = [], set()
    for i, s in enumerate(sets):
        convicts = convicting is not None and s.get("set") == convicting
        if convicts:
            hits.add(i)
        rows.append([s.get("set"), s.get("kind"), s.get("marks"), s.get("controls"),
                     s.get("mark_disagreements"), s.get("decoy_hits"),
                     s.get("control_disagreements"), _p(s.get("log2_p")),
                     _p(s.get("log2_p_adjusted")), coins(s.get("log2_p_adjusted")),
                     "convicted" if convicts else ""])
    out.append(_table(["group", "kind", "marks asked", "controls asked",
                       "disagreed on marks", "repeated our altered answer",
                       "disagreed on controls", "p", "adjusted p", "in words", ""], rows, hits))
    statements = {str(s.get("statement")) for s in sets if s.get("statement")}
    out += [f"<p class=muted>{_e(t)}</p>" for t in sorted(statements)]
    return out


def _fingerprint(fp: Any) -> list[str]:
    out = ["<h3>Test 2: the fingerprint (needs no marked answers)</h3>"]
    if not isinstance(fp, dict):
        return [*out, f"<p class=muted>{NOT_RUN} (no reference data given)</p>"]
    if "log2_p" in fp or "statement" in fp:
        out.append(f"<p>p = <b>{_e(_p(fp.get('log2_p')))}</b>: {_e(coins(fp.get('log2_p')))}"
                   ".</p>")
        if fp.get("statement"):
            out.append(f"<p class=muted>{_e(fp['statement'])}</p>")
        rest = [(k, v) for k, v in sorted(fp.items()) if k not in ("log2_p", "statement")
                and not isinstance(v, (dict, list))]
        if rest:
            out.append(_kv(rest))
        return out
    # the first schema: decision-boundary agreement with reference models
    agreements = fp.get("reference_agreements")
    out += [f"<p>{_e(fp.get('method'))}</p>", _table(
        ["points", "suspect agreement", "reference agreements", "z", "rank p"],
        [[fp.get("points"), _fmt(fp.get("suspect_agreement"), ".3f"),
          ", ".join(_fmt(x, ".3f") for x in agreements) if isinstance(agreements, list)
          else None, _fmt(fp.get("z"), ".2f"), _fmt(fp.get("rank_p"), ".3f")]])]
    return out


def _fmt(v: Any, spec: str) -> str:
    n = _num(v)
    return "-" if n is None else format(n, spec)


def _combined(c: Any) -> list[str]:
    out = ["<h3>The tests together</h3>"]
    if not isinstance(c, dict):
        return [*out, f"<p class=muted>{NOT_RUN}</p>"]
    inputs = c.get("inputs")
    shown = ", ".join(_e(_p(x) if _num(x) is not None else x) for x in inputs) \
        if isinstance(inputs, list) else "-"
    out.append(f"<p>{_e(c.get('method', 'combined'))} combination of [{shown}]: p = "
               f"<b>{_e(_p(c.get('log2_p')))}</b>: {_e(coins(c.get('log2_p')))}.</p>")
    if c.get("method") == "Fisher":
        out.append("<p class=muted>Fisher's method: the p-values of independent tests are "
                   "combined into one that is valid for the tests together.</p>")
    return out


def _old_test(t: Any) -> str:
    if not isinstance(t, dict):
        return f"<p class=muted>{NOT_RUN} (no control answers)</p>"
    return (f"<p><b>{_e(t.get('name'))}</b>: {_e(t.get('successes'))} of "
            f"{_e(t.get('trials'))}, p0 = {_e(_fmt(t.get('p0'), '.4g'))}, "
            f"<b>p = {_e(_p(t.get('log2_p')))}</b>: {_e(coins(t.get('log2_p')))}</p>"
            f"<p class=muted>{_e(t.get('statement'))}</p>")


def _tests(doc: dict[str, Any]) -> list[str]:
    tests, v = _d(doc, "tests"), _d(doc, "verdict")
    out = ["<h2>Each test on its own</h2>"]
    if "sets" in tests or "combined" in tests:
        out += _sets(tests, v.get("convicting_set"))
        out += _fingerprint(tests.get("fingerprint", doc.get("fingerprint")))
        out += _combined(tests.get("combined"))
        return out
    # the first schema: one decoy test, a conservative cross-check, per principal
    out += [_old_test(tests.get("decoy")), _old_test(tests.get("conservative"))]
    ctl = _d(doc, "control")
    if ctl:
        out.append(f"<p>Control inputs: {_e(ctl.get('asked'))} asked, "
                   f"{_e(ctl.get('disagreements'))} answered differently from the protected "
                   f"model, {_e(ctl.get('decoy_hits'))} equal to their would-be altered "
                   "answer.</p>")
    by = [p for p in _l(doc, "by_principal") if isinstance(p, dict)]
    if by:
        out += ["<h3>Who received the repeated answers</h3>", _table(
            ["principal", "tenants", "marked inputs", "repeated", "p", "in words"],
            [[p.get("principal"), ", ".join(map(str, _l(p, "tenants"))),
              p.get("watermark_inputs"), p.get("repeats"), _p(p.get("log2_p")),
              coins(p.get("log2_p"))] for p in by])]
    out += _fingerprint(doc.get("fingerprint"))
    return out


def _timestamp(doc: dict[str, Any]) -> list[str]:
    ts = doc.get("timestamp")
    out = ["<h2>Timestamp</h2>"]
    if not isinstance(ts, dict):
        return [*out, "<p>Not timestamped: the bundle's own times are those of the machine "
                      "that made it.</p>"]
    if "token" not in ts:
        return [*out, f"<p>Not timestamped: requesting a timestamp from {_e(ts.get('tsa'))} "
                      f"failed ({_e(ts.get('error'))}). The bundle is signed all the same.</p>"]
    return [*out, f"<p>Timestamped at <b>{_e(ts.get('time'))}</b> by the time-stamping "
                  f"authority {_e(ts.get('tsa'))} (RFC 3161, over the {_e(ts.get('hash'))} "
                  "of the signature). This page does not check the token; check it with "
                  "<code>modelfence evidence verify BUNDLE.json --public-key KEY.pem "
                  "--tsa-cert TSA.pem</code>.</p>"]


def _queries(doc: dict[str, Any]) -> list[str]:
    queries = [q for q in _l(doc, "queries") if isinstance(q, dict)]
    rows = [[q.get("kind"), str(q.get("input_sha256", ""))[:16], q.get("recorded_at"),
             ", ".join(map(str, _l(q, "principals"))), q.get("protected_label"),
             q.get("answer_given"), q.get("suspect_label"),
             "yes" if q.get("repeats_watermark") is True else ""]
            for q in queries[:MAX_ROWS]]
    hits = {i for i, q in enumerate(queries[:MAX_ROWS]) if q.get("repeats_watermark") is True}
    out = [f"<h2>Every question and answer ({len(queries)})</h2>", _table(
        ["kind", "input SHA-256", "recorded", "principals", "model said", "gateway answered",
         "suspect answered", "repeats our altered answer"], rows, hits)]
    if len(queries) > MAX_ROWS:
        out.append(f"<p class=muted>… {len(queries) - MAX_ROWS} more in the JSON.</p>")
    return out


def render_html(doc: dict[str, Any]) -> str:
    """The page (see the module's docstring)."""
    sig = _d(doc, "signature")
    model = doc.get("model")
    parts = [f"<h1>Ownership evidence: model {_e(model)}</h1>", *_verdict(doc),
             *_examined(doc), *_asked(doc), *_tests(doc), *_timestamp(doc), *_queries(doc),
             f"<p class=muted>Signed ({_e(sig.get('algorithm'))}, key "
             f"{_e(sig.get('key_id'))}) in the JSON file only; check it with "
             "<code>modelfence evidence verify BUNDLE.json --public-key KEY.pem</code>. "
             "This page is a rendering and carries no signature of its own.</p>"]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Ownership "
            f"evidence: {_e(model)}</title><style>{CSS}</style></head><body>"
            + "".join(parts) + "</body></html>")
