"""Efficacy corpus: the recommended configuration on victims and callers nobody tuned it on.

Runs `modelfence.monitor.corpus` (the same as `modelfence monitor evaluate --suite`): 12
victims per half (2 to 20 classes, 5 to 200 features, MLP, gradient boosting, random forest,
logistic regression), honest callers (random order, class-skewed, exact repeats, re-sends
with measurement noise, small batches, bursts, drift, short-lived users) and thieves
(Knockoff, augmentation, Jacobian, active learning, uniform, equation solving, line search,
boundary walks, Sybil splits, slow-and-low), each replayed through an in-process gateway
with README's recommended monitor settings and output bands. Detectors and defaults are
tuned on the ``dev`` half; README quotes the ``test`` half.

Targets (issue 15, test half):
- benign: 0 flagged among >= 400 streams of 2,000 queries; an honest caller forced into the
  strongest band keeps >= 95% of its correct top-1 answers;
- synthetic queries (uniform, equation solving, Jacobian, line search, boundary walks)
  flagged within 200 queries on >= 95% of victims;
- augmentation at >= 5% of feature spread and active learning within 500 on >= 90%;
- Sybil over 10 keys of one tenant: the tenant flagged no later than one key would be;
  natural-data Knockoff: reported;
- at most 2 band changes and exactly 1 alert per episode;
- a thief that knows the defence gains <= 2 points of fidelity;
- the whole corpus (dev and test) in <= 10 minutes on this machine; observe <= 100 us p99.

    python bench/corpus.py --suite test --workers 2 [--json corpus.json] [--victims A,B]
    python bench/corpus.py --suite all --workers 2 --json corpus.json --html corpus.html
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import orjson

from modelfence.monitor.corpus import report, run
from modelfence.redteam.executors import executor_for
from results import corpus_result, save


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="test", choices=run.SUITES)
    ap.add_argument("--workers", type=int, default=None, help="local worker processes")
    ap.add_argument("--dask", default=None, help="Dask scheduler address")
    ap.add_argument("--victims", default="", help="only these victims (comma-separated)")
    ap.add_argument("--behaviours", default="", help="only these behaviours or families")
    ap.add_argument("--queries", type=int, default=run.QUERIES)
    ap.add_argument("--benign-per-victim", type=int, default=run.BENIGN_PER_VICTIM)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument("--html", type=Path, default=None, help="write the HTML report here")
    ap.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    ap.add_argument("--save", type=Path, default=None,
                    help="write the targets as a result file the docs render (bench/results.py)")
    args = ap.parse_args(argv)

    def names(text: str) -> list[str] | None:
        return [v.strip() for v in text.split(",") if v.strip()] or None

    cells = run.plan(args.suite, victims=names(args.victims),
                     behaviours=names(args.behaviours), seed=args.seed,
                     queries=args.queries, benign_per_victim=args.benign_per_victim)
    executor = executor_for(args.dask, args.workers)
    print(f"{len(cells)} callers on {executor.name}…", file=sys.stderr, flush=True)

    def tick(label: str, done: int, total: int) -> None:
        print(f"\r{done}/{total} {label:<40}", end="", file=sys.stderr, flush=True)

    result = run.run(cells, executor, suite=args.suite, seed=args.seed, progress=tick)
    print(file=sys.stderr)
    text = report.markdown(result)
    print(text)
    print("\n".join(["", "Targets:", *report.targets_markdown(result)]))
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    if args.html is not None:
        args.html.write_text(report.html(result), encoding="utf-8")
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(report.to_dict(result), option=orjson.OPT_INDENT_2))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.save is not None:
        command = "python bench/corpus.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        save(args.save, corpus_result("corpus", command, report.targets(result)))
        print(f"wrote {args.save}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
