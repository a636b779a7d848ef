"""The system-prompt leak filter on the LLM corpus, and what it costs.

Every thief attempt and every honest request of a corpus half goes straight to the leak
filter (no screening, no risk, no policy in front: what is measured is the filter alone):
the complying stand-in upstream answers the canary-protected request, the answer is fed to
the filter in random chunks of 1-8 characters as a stream, and what the filter releases is
what the client gets. Per thief attempt: did the secret (or any part of it) reach the
client, judged by the corpus's own inverse transform (`corpus.transforms.Judge`), and did the
filter flag a leak (the evidence that alerts). Per honest request: was its answer stopped.

A second run has the stand-in model leave the canary line out of what it recites (a model
asked to paraphrase might): the marks and views alone must then catch the thief.

Cost: the filter's CPU time (its thread's, so that other processes on a shared machine do
not count) per chunk (p50/p99) and per answer (p50/p99), with views on (the
default) and off (canary and verbatim spans only), over the same answers.

    python bench/leak.py --half dev [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from typing import Any


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(half_name: str, *, views: bool = True, recite_canary: bool = True,
        seed: int = 1) -> dict[str, Any]:
    from modelfence.llm.canary import Canary
    from modelfence.llm.corpus import build
    from modelfence.llm.corpus.callers import timeline
    from modelfence.llm.corpus.transforms import Judge
    from modelfence.llm.corpus.upstream import ComplyingUpstream, cut
    from modelfence.llm.recommended import llm_model

    half = build(half_name)
    systems = {s.name: s for s in half.systems}
    models = {s.name: llm_model(s.name, "http://127.0.0.1:1/v1", public=s.persona)
              for s in half.systems}
    upstream = ComplyingUpstream({s.text: s.secret for s in half.systems})
    rng = random.Random(seed)
    callers = [c for c in half.callers if c.population in ("thief", "honest")]
    by_name = {c.name: c for c in callers}
    history: dict[str, list[tuple[str, str]]] = defaultdict(list)
    received: dict[str, list[str]] = defaultdict(list)
    flagged: dict[str, bool] = defaultdict(bool)
    why: dict[str, str] = {}  # thief -> what first caught it (kind/view)
    honest_stopped: list[dict[str, str]] = []
    honest_answers = 0
    chunk_s: list[float] = []
    answer_s: list[float] = []
    build_s: list[float] = []
    per_kb: list[float] = []  # seconds per 1,000 characters of answer
    lengths: list[int] = []
    for r in timeline(callers):
        if r.kind != "chat":
            continue
        caller = by_name[r.caller]
        settings = models[r.model].canary
        assert settings is not None
        conv = history[r.conversation] if r.conversation else []
        messages = r.body(systems[r.model].text, conv)["messages"]
        canary = Canary(b"bench-leak-secret", r.model)
        t0 = time.thread_time()
        policy = canary.policy(messages, mode=settings.mode, span_len=settings.span_len,
                               public=settings.public, views=views and settings.views,
                               hold_max=settings.hold_max, weak_needed=settings.weak_needed)
        build_s.append(time.thread_time() - t0)
        seen = canary.protect(messages) if recite_canary else messages
        text, _ = cut(upstream.answer(seen),
                      int(r.options.get("max_tokens") or 1024))
        f = policy.filter()
        got: list[str] = []
        pos = 0
        spent = 0.0
        while pos < len(text):
            step = rng.randint(1, 8)
            t0 = time.thread_time()
            got.append(f.feed(text[pos:pos + step]))
            dt = time.thread_time() - t0
            chunk_s.append(dt)
            spent += dt
            pos += step
        t0 = time.thread_time()
        got.append(f.finish())
        spent += time.thread_time() - t0
        answer_s.append(spent)
        per_kb.append(spent / max(len(text), 1) * 1000)
        lengths.append(len(text))
        out = "".join(got)
        if r.conversation:
            conv.append((r.text, out))
        if caller.population == "thief":
            received[caller.name].append(out)
            flagged[caller.name] |= f.leaked
            if f.detections and not why.get(caller.name):
                first = min(f.detections, key=lambda d: d.start)
                why[caller.name] = f"{first.kind}/{first.view}"
        else:
            honest_answers += 1
            if f.leaked:
                honest_stopped.append({"caller": caller.name, "prompt": r.text[:100],
                                       "answer": text[:160],
                                       "why": ", ".join(f"{d.kind}/{d.view}"
                                                        for d in f.detections)})
    forms: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    thieves = [c for c in callers if c.population == "thief"]
    whole = any_ = missed_alert = 0
    for c in thieves:
        found = Judge(str(c.notes["secret"]), tuple(c.notes["fragments"]),
                      c.form).found(received[c.name])
        row = forms[c.form]
        row["attempts"] += 1
        row["whole"] += found.whole
        row["any"] += found.any
        row["flagged"] += flagged[c.name]
        row[f"by {why.get(c.name, 'nothing')}"] += 1
        whole += found.whole
        any_ += found.any
        missed_alert += found.any and not flagged[c.name]
    return {
        "half": half_name, "views": views, "recite_canary": recite_canary,
        "thieves": {"attempts": len(thieves), "secret_whole": whole, "secret_any": any_,
                    "flagged": sum(flagged[c.name] for c in thieves),
                    "any_not_flagged": missed_alert,
                    "forms": {k: dict(v) for k, v in sorted(forms.items())}},
        "honest": {"answers": honest_answers, "stopped": len(honest_stopped),
                   "examples": honest_stopped[:10]},
        "cost": {"chunks": len(chunk_s), "answers": len(answer_s),
                 "chunk_us_p50": 1e6 * statistics.median(chunk_s),
                 "chunk_us_p99": 1e6 * _pct(chunk_s, 0.99),
                 "answer_ms_p50": 1e3 * statistics.median(answer_s),
                 "answer_ms_p99": 1e3 * _pct(answer_s, 0.99),
                 "answer_ms_max": 1e3 * max(answer_s),
                 "answer_chars_p50": statistics.median(lengths),
                 "answer_chars_p99": _pct([float(n) for n in lengths], 0.99),
                 "per_1000_chars_ms_p50": 1e3 * statistics.median(per_kb),
                 "per_1000_chars_ms_p99": 1e3 * _pct(per_kb, 0.99),
                 "policy_ms_p50": 1e3 * statistics.median(build_s),
                 "policy_ms_p99": 1e3 * _pct(build_s, 0.99)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--half", default="dev", choices=["dev", "test"])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-baseline", action="store_true", help="skip the views-off run")
    args = p.parse_args(argv)
    results = [run(args.half, views=True), run(args.half, views=True, recite_canary=False)]
    if not args.no_baseline:
        results.append(run(args.half, views=False))
    for res in results:
        t, h, c = res["thieves"], res["honest"], res["cost"]
        canary = "" if res["recite_canary"] else " (the model leaves the canary line out)"
        print(f"{res['half']} views={'on' if res['views'] else 'off'}{canary}: thieves "
              f"{t['attempts']}: secret whole {t['secret_whole']}, any {t['secret_any']}, "
              f"flagged {t['flagged']}, got some but not flagged {t['any_not_flagged']}; "
              f"honest answers {h['answers']}, stopped {h['stopped']}")
        for form, row in t["forms"].items():
            caught = ", ".join(f"{k[3:]} {v}" for k, v in row.items() if k.startswith("by "))
            print(f"  {form:11s} {row['attempts']:2d} attempts: whole {row.get('whole', 0)}, "
                  f"any {row.get('any', 0)}, flagged {row.get('flagged', 0)} ({caught})")
        for ex in h["examples"]:
            print(f"  honest stopped ({ex['why']}): {ex['prompt']!r} -> {ex['answer']!r}")
        print(f"  cost: chunk p50 {c['chunk_us_p50']:.1f} us, p99 {c['chunk_us_p99']:.1f} us; "
              f"answer p50 {c['answer_ms_p50']:.2f} ms, p99 {c['answer_ms_p99']:.2f} ms, "
              f"max {c['answer_ms_max']:.2f} ms ({c['answers']} answers, p50 "
              f"{c['answer_chars_p50']:.0f} / p99 {c['answer_chars_p99']:.0f} characters; "
              f"per 1,000 characters p50 {c['per_1000_chars_ms_p50']:.2f} ms, p99 "
              f"{c['per_1000_chars_ms_p99']:.2f} ms); policy build p50 "
              f"{c['policy_ms_p50']:.3f} ms, p99 {c['policy_ms_p99']:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
