"""What distillation detection costs, and what it sees on the LLM corpus.

- request path: what `DistillGuard.on_complete` does per answered call (read what the request
  asks, put it on the bounded queue), µs p50/p99, with the worker running and with the queue
  full (a drop);
- worker: prompts per second on one thread (MiniLM embedding in batches, then the detector:
  windows, MMD tests, refits of the null), and each part's share;
- memory: bytes per caller and per model's reference;
- corpus (`--corpus dev|test`): the corpus half's honest users and distillers through the
  detector and the risk book on the simulated clock (distillation evidence alone: tokens,
  screening and leaks are the corpus harness's to add): each distiller's first alert (in its
  own requests), and honest users' alerts and band changes (risk 0.3, README's first band).

    OMP_NUM_THREADS=1 MODELFENCE_TORCH_THREADS=1 python bench/distill.py [--corpus dev]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from modelfence.llm.distill import DistillDetector, subject_bytes
from modelfence.llm.distill_features import asked, embed, features
from modelfence.llm.distill_settings import DistillSettings
from modelfence.llm.distill_worker import DistillGuard, DistillWorker
from modelfence.llm.risk import LlmRiskBook, Observation
from modelfence.llm.screening_similarity import MiniLmEmbedder
from modelfence.llm.settings import LlmMonitorSettings

FIRST_BAND = 0.3


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class _Call:
    """What DistillGuard reads of a Call."""

    def __init__(self, body: dict[str, Any], principal: str) -> None:
        from types import SimpleNamespace

        self.status, self.error, self.action = 200, None, "chat"
        self.principal = SimpleNamespace(id=principal, tenant="acme")
        self.model = SimpleNamespace(name="m")
        self.result = SimpleNamespace(request=body)


def _prompts(n: int) -> list[str]:
    from modelfence.llm.corpus import data

    honest = data.honest_prompts("dev")
    pool = [p for v in honest.values() for p in v]
    return [pool[i % len(pool)] for i in range(n)]


_CACHE: dict[str, Any] = {}  # prompt -> embedding, across the corpus runs of one process


def request_path(rounds: int) -> dict[str, float]:
    """µs per call of the guard's on_complete: with room on the queue, and full."""
    texts = _prompts(rounds)
    done: list[Observation] = []

    class _Parked:  # a worker that never takes: measures submit alone
        def encode(self, texts: list[str]) -> Any:
            time.sleep(3600)

    def timed(worker: DistillWorker) -> list[float]:
        guard = DistillGuard(worker)
        out = []
        loop = asyncio.new_event_loop()
        for i, t in enumerate(texts):
            call = _Call({"model": "m", "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": t}], "temperature": 0.7}, f"u{i % 50}")
            started = time.perf_counter()
            loop.run_until_complete(guard.on_complete(call))  # type: ignore[arg-type]
            out.append((time.perf_counter() - started) * 1e6)
        loop.close()
        return out

    room = DistillWorker({"m": DistillSettings(queue=rounds + 10)}, done.append,
                         embedder=_Parked())  # type: ignore[arg-type]
    with_room = timed(room)
    full = DistillWorker({"m": DistillSettings(queue=1)}, done.append,
                         embedder=_Parked())  # type: ignore[arg-type]
    full.submit("m", "x", None, "fill", asked("chat", {"messages": [
        {"role": "user", "content": "x"}]})[1], 0.0)  # type: ignore[index]
    when_full = timed(full)
    return {"p50": _pct(with_room, 0.5), "p99": _pct(with_room, 0.99),
            "max": max(with_room), "full_p50": _pct(when_full, 0.5),
            "full_p99": _pct(when_full, 0.99), "dropped": full.dropped}


def worker_throughput(embedder: MiniLmEmbedder, n: int, batch: int) -> dict[str, float]:
    """Prompts/s on one thread: embedding in batches, then the detector."""
    texts = _prompts(n)
    s = DistillSettings(batch=batch)
    det = DistillDetector(s)
    embedder.encode(["warm up"])
    import scipy.stats  # noqa: F401  (imported by the first fit of the null: not per prompt)

    t0 = time.perf_counter()
    feats = []
    for i in range(0, n, batch):
        chunk = texts[i:i + batch]
        feats += embed(embedder, chunk, [None] * len(chunk))
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, f in enumerate(feats):
        det.add("m", f"u{i % 25}", f"t{i % 5}", f, float(i))
    t_detect = time.perf_counter() - t0
    counts = det.counts("m")
    return {"prompts": n, "embed_s": t_embed, "detect_s": t_detect,
            "per_s": n / (t_embed + t_detect), "embed_ms": 1e3 * t_embed / n,
            "detect_us": 1e6 * t_detect / n, "windows": counts.get("tested", 0),
            "cold": counts.get("cold", 0)}


def _stressed(callers: list[Any], stress: str) -> list[Any]:
    """The callers with every honest request at temperature 0 ("honest-t0"), or every
    distiller's at 0.7 ("distillers-t07")."""
    import dataclasses

    who, temperature = {"honest-t0": ("honest", 0.0),
                        "distillers-t07": ("distiller", 0.7)}[stress]
    out = []
    for c in callers:
        if c.population == who:
            reqs = tuple(dataclasses.replace(r, params=tuple(sorted(
                {**dict(r.params), "temperature": temperature}.items()))) for r in c.requests)
            c = dataclasses.replace(c, requests=reqs)
        out.append(c)
    return out


def corpus(half_name: str, embedder: MiniLmEmbedder, stress: str = "") -> None:
    """The half's honest users and distillers through the detector and the risk book."""
    from modelfence.llm.corpus import build, timeline

    half = build(half_name)
    callers = [c for c in half.callers if c.population in ("honest", "distiller")]
    if stress:
        callers = _stressed(callers, stress)
        print(f"stress {stress}:")
    requests = timeline(callers)
    texts: dict[str, Any] = _CACHE
    asks = []
    history: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for r in requests:
        got = asked(r.kind, r.body("You are a helpful assistant.",
                                   history[r.conversation] if r.conversation else ()))
        if r.conversation:
            history[r.conversation].append((r.text, "(answer)"))
        asks.append(got)
        if got is not None and got[0] not in texts:
            texts[got[0]] = None
    unique = [t for t, v in texts.items() if v is None]
    t0 = time.perf_counter()
    for i in range(0, len(unique), 64):
        for t, v in zip(unique[i:i + 64], embedder.encode(unique[i:i + 64]), strict=True):
            texts[t] = v
    print(f"corpus {half_name}: {len(requests)} requests, {len(unique)} distinct prompts "
          f"embedded in {time.perf_counter() - t0:.1f} s")
    det = DistillDetector(DistillSettings())
    models = sorted({c.model for c in callers})
    for m in models:  # as the gateway's worker does: the shipped generic prompts
        det.warm_start(m, embedder)
    book = LlmRiskBook(LlmMonitorSettings(), models)
    by = {c.name: c for c in callers}
    sent: collections.Counter[str] = collections.Counter()
    first: dict[str, int] = {}
    peak: dict[str, float] = collections.defaultdict(float)
    honest_alerts = []
    windows: dict[str, list[Any]] = collections.defaultdict(list)
    for r, got in zip(requests, asks, strict=True):
        c = by[r.caller]
        sent[c.name] += 1
        if got is not None:
            f = features(got[0], texts[got[0]], got[1])
            for obs in det.add(r.model, r.principal, r.tenant, f, r.t):
                for cross in book.observe(obs, now=r.t):
                    mine = cross.subject in (*c.principals, c.tenant)
                    if c.population == "distiller" and mine:
                        first.setdefault(c.name, sent[c.name])
                    else:
                        honest_alerts.append((cross.kind, cross.subject))
            windows[c.name] += det.results
        peak[c.name] = max(peak[c.name], book.peek(r.model, r.principal, r.tenant, now=r.t))
    for m in models:
        print(f"  model {m}: windows {det.counts(m)}")
    honest = [c for c in callers if c.population == "honest"]
    fams = collections.defaultdict(list)
    for c in honest:
        fams[(c.group, c.family)].append(c)
    banded = sum(peak[c.name] >= FIRST_BAND for c in honest)
    blamed = sum(1 for c in honest for w in windows[c.name]
                 if w.evidence > 0 and w.principal in c.principals)
    print(f"  honest users {len(honest)}: alerts on honest subjects {len(honest_alerts)}, "
          f"band changes (risk >= {FIRST_BAND}) {banded}, windows with evidence {blamed}")
    for (group, family), cs in sorted(fams.items()):
        flagged = sum(1 for c in cs for w in windows[c.name]
                      if w.evidence > 0 and w.principal in c.principals)
        own = [w for c in cs for w in windows[c.name]
               if w.tested and w.kind == "principal" and w.principal in c.principals]
        print(f"    {group:10s} {family:10s} users {len(cs):3d} requests "
              f"{sum(len(c.requests) for c in cs):5d} own windows {len(own):3d} (unlike "
              f"benign traffic: {sum(w.differs for w in own):3d}) with evidence {flagged} "
              f"peak risk {max(peak[c.name] for c in cs):.2f}")
    for c in callers:
        if c.population != "distiller":
            continue
        w = windows[c.name]
        print(f"  distiller {c.family:12s} {len(c.requests):4d} requests, target {c.target}: "
              f"alerted at request {first.get(c.name, 'never')}; windows tested "
              f"{sum(x.tested for x in w)}, with evidence {sum(x.evidence > 0 for x in w)}, "
              f"cold {sum(not x.tested for x in w)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--prompts", type=int, default=800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--corpus", choices=["dev", "test", "none"], default="none")
    parser.add_argument("--stress", action="store_true", help="also: every honest request at "
                        "temperature 0, and every distiller's at 0.7")
    args = parser.parse_args()
    print(f"bench/distill.py {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
          f"({os.cpu_count()} cores), torch threads "
          f"{os.environ.get('MODELFENCE_TORCH_THREADS', '1')}")
    path = request_path(args.rounds)
    print(f"request path (on_complete: read the ask, enqueue), {args.rounds} calls: "
          f"p50 {path['p50']:.1f} µs, p99 {path['p99']:.1f} µs, max {path['max']:.0f} µs; "
          f"queue full: p50 {path['full_p50']:.1f} µs, p99 {path['full_p99']:.1f} µs "
          f"({path['dropped']:.0f} dropped)")
    embedder = MiniLmEmbedder()
    t0 = time.perf_counter()
    embedder.load()
    print(f"MiniLM load {time.perf_counter() - t0:.1f} s")
    w = worker_throughput(embedder, args.prompts, args.batch)
    print(f"worker, 1 thread, batch {args.batch}: {w['per_s']:.0f} prompts/s "
          f"(embedding {w['embed_ms']:.2f} ms/prompt, detector {w['detect_us']:.0f} µs/prompt "
          f"with {w['windows']:.0f} windows tested, {w['cold']:.0f} cold)")
    s = DistillSettings()
    ref = DistillDetector(s)
    ref.seed_reference("m", np.zeros((s.reference_size, 384), np.float32))
    print(f"memory: {subject_bytes(s)} bytes per principal or tenant (history {s.history}), "
          f"{ref.memory_bytes()} bytes per model's reference ({s.reference_size} prompts); "
          f"max_subjects {s.max_subjects}: at most "
          f"{(subject_bytes(s) * s.max_subjects + ref.memory_bytes()) / 2**20:.0f} MiB per model")
    if args.corpus != "none":
        corpus(args.corpus, embedder)
        if args.stress:
            corpus(args.corpus, embedder, "honest-t0")
            corpus(args.corpus, embedder, "distillers-t07")


if __name__ == "__main__":
    main()
