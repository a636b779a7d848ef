"""The evidence bundle as one self-contained HTML page, for people (the JSON is signed)."""

from __future__ import annotations

from html import escape
from typing import Any

from .stats import format_p

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}h1{font-size:1.5em}h2{margin-top:1.5em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left}th{background:#f5f5f5}.v{padding:.6em 1em;border-left:5px solid}
.yes{background:#fdecea;border-color:#c62828}.no{background:#eef5ee;border-color:#2e7d32}
.muted{color:#666}code{font-size:12px}"""
MAX_ROWS = 500


def _e(v: Any) -> str:
    return escape("-" if v is None else str(v))


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items()))


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _test(t: dict[str, Any] | None) -> str:
    if t is None:
        return "<p class=muted>not run (no control answers)</p>"
    return (f"<p><b>{_e(t['name'])}</b>: {_e(t['successes'])} of {_e(t['trials'])}, "
            f"p0 = {t['p0']:.4g}, <b>p = {_e(format_p(t['log2_p']))}</b> "
            f"(log2 p = {t['log2_p']:.2f})</p><p class=muted>{_e(t['statement'])}</p>")


def render_html(doc: dict[str, Any]) -> str:
    v = doc["verdict"]
    sus = doc["suspect"]
    ev = doc["evidence"]
    parts = [
        f"<h1>Ownership evidence: model {_e(doc['model'])}</h1>",
        f"<div class='v {'yes' if v['accused'] else 'no'}'><b>"
        f"{'Copy identified' if v['accused'] else 'Not identified as a copy'}</b>: "
        f"{_e(v['summary'])}</div>",
        "<h2>What was examined</h2>",
        _table(["", ""], [
            ["suspect", f"{sus['description']} ({sus['kind']})"],
            ["suspect file SHA-256", sus.get("sha256")],
            ["queries to the suspect", sus["queries"]],
            ["principal", doc.get("principal") or "all principals"],
            ["watermark keys", ", ".join(ev["watermark_keys"])],
            ["records (by kind)", _counts(ev["records"])],
            ["excluded records", _counts(ev["excluded"]) or "none"],
            ["started", doc["started"]], ["finished", doc["finished"]],
            ["significance level (alpha)", v["alpha"]]]),
        "<h2>Tests</h2>", _test(doc["tests"]["decoy"]), _test(doc["tests"]["conservative"]),
        f"<p>Control inputs: {doc['control']['asked']} asked, "
        f"{doc['control']['disagreements']} answered differently from the protected model, "
        f"{doc['control']['decoy_hits']} equal to their would-be decoy.</p>",
    ]
    if doc["by_principal"]:
        parts += ["<h2>Who received the repeated answers</h2>", _table(
            ["principal", "tenants", "watermark inputs", "repeated", "p"],
            [[p["principal"], ", ".join(p["tenants"]), p["watermark_inputs"], p["repeats"],
              format_p(p["log2_p"])] for p in doc["by_principal"]])]
    fp = doc.get("fingerprint")
    if fp:
        parts += ["<h2>Second opinion: decision-boundary fingerprint</h2>",
                  f"<p>{_e(fp['method'])}</p>",
                  _table(["points", "suspect agreement", "reference agreements", "z",
                          "rank p"],
                         [[fp["points"], f"{fp['suspect_agreement']:.3f}",
                           ", ".join(f"{a:.3f}" for a in fp["reference_agreements"]),
                           "-" if fp["z"] is None else f"{fp['z']:.2f}",
                           f"{fp['rank_p']:.3f}"]])]
    queries = doc["queries"]
    parts += [f"<h2>What was asked and what came back ({len(queries)})</h2>", _table(
        ["kind", "input SHA-256", "recorded", "principals", "model said", "gateway answered",
         "suspect answered", "repeats watermark"],
        [[q["kind"], q["input_sha256"][:16], q["recorded_at"], ", ".join(q["principals"]),
          q["protected_label"], q["answer_given"], q["suspect_label"],
          "yes" if q["repeats_watermark"] else ""] for q in queries[:MAX_ROWS]])]
    if len(queries) > MAX_ROWS:
        parts.append(f"<p class=muted>… {len(queries) - MAX_ROWS} more in the JSON.</p>")
    sig = doc.get("signature") or {}
    parts.append(f"<p class=muted>Signed ({_e(sig.get('algorithm'))}, key "
                 f"{_e(sig.get('key_id'))}) in the JSON file only; check it with "
                 "<code>modelfence evidence verify BUNDLE.json --public-key KEY.pem</code>. "
                 "This page is a rendering and carries no signature of its own.</p>")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Ownership evidence: "
            f"{_e(doc['model'])}</title><style>{CSS}</style></head><body>"
            + "".join(parts) + "</body></html>")
