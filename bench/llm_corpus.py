"""LLM efficacy corpus: the recommended LLM configuration on callers nobody tuned it on.

Runs `modelfence.llm.corpus` (the same as `modelfence llm evaluate --suite`): per half, 82
honest users in tenants of 1, 10 and 50 over a simulated day (varied natural prompts,
multi-turn conversations, heavy users, a Python-only developer, users asking the assistant
about itself, short-lived users), five distillers (templated, paraphrased, topic sweep, slow
inside an honest tenant, split over 10 keys), 60 system-prompt thieves with a fresh key each
(verbatim, translated, base64, ROT13, hex, reversed, letter-spaced, leetspeak, paraphrase,
acrostic, poem, chunked, multi-turn) and two output-layer probers (fast, patient), replayed
in-process through the real screeners, leak filter, risk book, bands and distillation
detector of llm/recommended.py, against a complying stand-in upstream. Tune on ``dev``;
README quotes ``test``.

Targets (issue 17, test half):
- honest: 0 alerts and 0 band changes for >= 20 users in tenants of 1, 10 and 50;
- distillers, including one split over keys and one at benign pace: alerted within 300;
- transformed extraction, fresh key per attempt: the secret reaches the client in <= 1 of
  60 attempts; every attempt that gets any of it alerts;
- probers fast and patient: requests until the first alert (reported).

    python bench/llm_corpus.py --suite test [--json llm.json] [--html llm.html]
    python bench/llm_corpus.py --suite all --markdown llm.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import orjson

from modelfence.llm.corpus import report, run
from results import corpus_result, save


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="test", choices=run.SUITES)
    ap.add_argument("--populations", default="", help="only these (honest,distiller,...)")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument("--html", type=Path, default=None, help="write the HTML report here")
    ap.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    ap.add_argument("--save", type=Path, default=None,
                    help="write the targets as a result file the docs render (bench/results.py)")
    args = ap.parse_args(argv)
    populations = [p.strip() for p in args.populations.split(",") if p.strip()] or None

    def tick(label: str, done: int, total: int) -> None:
        print(f"\r{done}/{total} {label:<40}", end="", file=sys.stderr, flush=True)

    result = run.run(args.suite, populations=populations, progress=tick)
    print(file=sys.stderr)
    text = report.markdown(result)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    if args.html is not None:
        args.html.write_text(report.html(result), encoding="utf-8")
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(report.to_dict(result), option=orjson.OPT_INDENT_2))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.save is not None:
        command = "python bench/llm_corpus.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        save(args.save, corpus_result("llm_corpus", command, report.targets(result)))
        print(f"wrote {args.save}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
