"""Differential privacy: the empirical audit at scale, and the trade-off on the efficacy corpus.

Targets (issue 20):
- the audit's lower bound on ε (95% confidence) never exceeds the stated ε, for every
  mechanism and ε (`--audit`; the unit test runs the same audit with fewer draws);
- efficacy corpus, test half: at <= 1 point of honest top-1 accuracy lost, the active-learning
  and boundary-walking thieves lose >= 10 points of fidelity at 2,000 queries, on >= 80% of
  victims. The mechanism and ε are chosen on the dev half (`--suite dev`), then the test
  half is run once with the chosen one (`--mechanisms`).

    python bench/privacy.py --audit [--draws 50000] [--save bench/published/privacy-audit.json]
    python bench/privacy.py --suite dev --workers 2 [--victims A,B] [--mechanisms dp-rr:4,...]
    python bench/privacy.py --suite test --workers 2 --mechanisms M --json RUN.json
    python bench/privacy.py --suite test --load RUN.json --command "..." --report CONFIG \\
        --save PATH --save-victims PATH   # CONFIG: the one the dev half chose
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import orjson

from modelfence.evaluation import privacy_tradeoff as pt
from modelfence.redteam.executors import executor_for
from results import result, save

SUMMARY_COLUMNS = [
    {"key": "half", "title": "half"},
    {"key": "mechanism", "title": "mechanism"},
    {"key": "meeting", "title": "victims meeting"},
    {"key": "honest_median", "title": "honest top-1 loss, median (pts)", "format": "{:.2f}"},
    {"key": "honest_worst", "title": "worst", "format": "{:.2f}"},
    {"key": "thief_median", "title": "least thief fidelity loss, median (pts)",
     "format": "{:.1f}"},
    {"key": "thief_worst", "title": "worst", "format": "{:.1f}"},
    {"key": "met", "title": "target (≥ 80% of victims)"},
]

AUDIT_COLUMNS = [
    {"key": "mechanism", "title": "mechanism"},
    {"key": "relation", "title": "neighbouring inputs"},
    {"key": "epsilon", "title": "stated ε", "format": "{:g}"},
    {"key": "lower", "title": "ε lower bound (95%)", "format": "{:.3f}"},
    {"key": "event", "title": "most distinguishing event"},
    {"key": "draws", "title": "draws per input", "format": "{:,}"},
    {"key": "verdict", "title": "bound ≤ ε"},
]


def summary_result(run: pt.PrivacyTradeoff, command: str) -> dict[str, Any]:
    """Each configuration's share of victims meeting the target and its distributions."""
    rows = []
    for c in run.configs():
        s = run.summary(c)
        rows.append({"half": run.suite, "mechanism": c, "meeting": f"{s.meeting}/{s.victims}",
                     "honest_median": s.honest_loss_median, "honest_worst": s.honest_loss_worst,
                     "thief_median": s.thief_loss_median, "thief_worst": s.thief_loss_worst,
                     "met": "met" if s.met else "**missed**"})
    note = (f"run {run.created} ({run.elapsed_s:.0f} s, {run.machine}); "
            f"{run.queries:,} queries per thief, {run.honest_queries:,} per honest stream, "
            f"copy fidelity the mean of {run.fits} copies; losses in points against the "
            "undefended model's answers")
    return result("privacy", command, SUMMARY_COLUMNS, rows, note)


def victims_result(run: pt.PrivacyTradeoff, config: str, command: str) -> dict[str, Any]:
    """One configuration, a row per victim: honest loss and each thief's fidelity loss."""
    rows_in = [r for r in run.results if r.config == config]
    thieves = sorted({t for r in rows_in for t in r.fidelity})
    short = {t: t.split("-")[0] + "-" + t.split("-")[1] for t in thieves}
    columns = [{"key": "victim", "title": "victim"},
               {"key": "honest", "title": "honest top-1 loss (pts)", "format": "{:.2f}"}]
    columns += [{"key": f"t{i}", "title": f"{short[t]} ({t})", "format": "{:.1f}"}
                for i, t in enumerate(thieves)]
    columns.append({"key": "meets", "title": "meets"})
    rows = []
    for r in rows_in:
        loss = r.thief_loss_pts
        row: dict[str, Any] = {"victim": r.victim, "honest": r.honest_loss_pts,
                               "meets": "yes" if r.meets else "no"}
        row.update({f"t{i}": loss.get(t) for i, t in enumerate(thieves)})
        rows.append(row)
    return result("privacy-victims", command, columns, rows,
                  f"{config} on the {run.suite} half: fidelity points lost per thief")


def audit_result(audits: list[Any], command: str) -> dict[str, Any]:
    rows = [{"mechanism": a.mechanism, "relation": a.relation, "epsilon": a.epsilon,
             "lower": a.epsilon_lower, "event": a.event, "draws": a.draws,
             "verdict": "yes" if a.passed else "**no**"} for a in audits]
    return result("privacy-audit", command, AUDIT_COLUMNS, rows,
                  "fresh draws: the mechanisms draw anew for every row (the gateway's repeat "
                  "memory is not in the way); the event is chosen on separate draws")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--suite", default="dev", choices=("dev", "test"))
    ap.add_argument("--audit", action="store_true", help="run the audit instead")
    ap.add_argument("--draws", type=int, default=50_000, help="audit draws per input")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--victims", default="", help="only these victims (comma-separated)")
    ap.add_argument("--mechanisms", default="", help="mechanism specs (comma-free: use ';')")
    ap.add_argument("--placements", default=",".join(pt.PLACEMENTS))
    ap.add_argument("--queries", type=int, default=pt.QUERIES)
    ap.add_argument("--honest-queries", type=int, default=pt.HONEST_QUERIES)
    ap.add_argument("--fits", type=int, default=pt.FITS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument("--load", type=Path, default=None,
                    help="report a run's --json file instead of running (the command recorded "
                         "is the one given with --command)")
    ap.add_argument("--command", default="", help="with --load: the command that made it")
    ap.add_argument("--report", default="",
                    help="the configuration whose per-victim table is printed and saved "
                         "(default: the best on this half; on test, name the one dev chose)")
    ap.add_argument("--save", type=Path, default=None, help="the summary as a result file")
    ap.add_argument("--save-victims", type=Path, default=None,
                    help="the best configuration's per-victim table as a result file")
    args = ap.parse_args(argv)
    command = "python bench/privacy.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    if args.audit:
        from modelfence.evaluation.privacy_audit import audit_all

        audits = audit_all(draws=args.draws)
        for a in audits:
            print(f"{a.mechanism:<28} {a.relation:<40} ε={a.epsilon:<5g} lower "
                  f"{a.epsilon_lower:.3f} {'ok' if a.passed else 'CAUGHT'}  {a.event}")
        if args.save is not None:
            save(args.save, audit_result(audits, command))
            print(f"wrote {args.save}", file=sys.stderr)
        return 0 if all(a.passed for a in audits) else 1

    mechanisms = [m.strip() for m in args.mechanisms.split(";") if m.strip()] or list(
        pt.DEFAULT_MECHANISMS)
    names = [v.strip() for v in args.victims.split(",") if v.strip()] or None
    placements = [p.strip() for p in args.placements.split(",") if p.strip()]

    def tick(label: str, done: int, total: int) -> None:
        print(f"\r{done}/{total} {label:<40}", end="", file=sys.stderr, flush=True)

    if args.load is not None:
        run = pt.PrivacyTradeoff.from_dict(orjson.loads(args.load.read_bytes()))
        command = args.command or command
    else:
        run = pt.run(args.suite, mechanisms, placements=placements, victim_names=names,
                     queries=args.queries, honest_queries=args.honest_queries, fits=args.fits,
                     seed=args.seed, executor=executor_for(None, args.workers), progress=tick)
        print(file=sys.stderr)
    print(run.markdown())
    best = run.best()
    print(f"best on this half: {best.config} ({best.meeting}/{best.victims} victims)\n")
    chosen = args.report or best.config
    print(f"{chosen}:\n")
    print(run.victim_markdown(chosen))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(run.to_dict(), option=orjson.OPT_INDENT_2))
    if args.save is not None:
        save(args.save, summary_result(run, command))
        print(f"wrote {args.save}", file=sys.stderr)
    if args.save_victims is not None:
        save(args.save_victims, victims_result(run, chosen, command))
        print(f"wrote {args.save_victims}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
