"""What the modelfence gateway adds to an OpenAI-compatible LLM call, next to LiteLLM Proxy.

All targets answer the same chat completion (a system prompt, one user message, max_tokens 32)
from the same fake upstream on loopback (bench/llm_upstream.py: a bare asyncio HTTP server;
streams are `--chunks` one-word events `--interval-ms` apart, then usage and [DONE]):

- direct:      the fake upstream, called directly;
- modelfence:  `modelfence serve`, one worker, one `llm:` model at the fake upstream, an API
               key minted with the CLI, the default audit log (hash-chained SQLite, batched),
               default LLM controls; no canary;
- mf+canary:   the same gateway, a second model with system-prompt theft protection
               (canary, mode block): the streamed answer runs through the leak filter;
- litellm:     LiteLLM Proxy (`litellm --num_workers 1`, its own venv), one `openai/` model at
               the same upstream, a master_key (so both gateways authenticate each call),
               no database, telemetry off, no callbacks.

Each round, for each target (order rotated): (a) non-streaming latency at one connection,
sequential, after a warm-up; (b) streaming at one connection: time to the first content token
and to the end of the stream; (c) non-streaming throughput at `--connections` connections.
The table shows medians over rounds; added = target minus direct. Separately: the canary
leak filter's cost on 100 KB of benign text fed in 4/8/16-character deltas.
The targets are started and timed by bench/llm_targets.py.

    /tmp/v1/bin/python bench/llm.py                  # full run, about 3 minutes
    /tmp/v1/bin/python bench/llm.py --quick          # about 1 minute
    /tmp/v1/bin/python bench/llm.py --out llm.json   # also write the results as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from llm_targets import (
    LITELLM_DEFAULT,
    SYSTEM_PROMPT,
    Target,
    check_answers,
    litellm_version,
    request_body,
    sequential,
    start_litellm,
    start_modelfence,
    start_upstream,
    streams,
)
from loadgen import AiohttpLoader, Load, LoadError, WrkLoader, make_loader
from overhead import count_audit_rows
from results import result, save
from servers import cpu_model, cpu_seconds, stop_on_sigterm, workdir

TARGET_ADDED_P50_MS = 1.0
TARGET_VS_LITELLM = 1 / 3
TABLE_WIDTH = 150


# -- settings -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="short run: 1 round, 300 requests, 60 streams, 2 s throughput")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all targets (median)")
    p.add_argument("--requests", type=int, default=2000, help="non-streaming requests per round")
    p.add_argument("--streams", type=int, default=200, help="streams per round")
    p.add_argument("--warmup", type=int, default=200, help="warm-up requests per measurement")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of throughput load")
    p.add_argument("--connections", type=int, default=16, help="connections for throughput")
    p.add_argument("--chunks", type=int, default=20, help="content events per upstream stream")
    p.add_argument("--interval-ms", type=float, default=1.0,
                   help="pause between the upstream's stream events")
    p.add_argument("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto",
                   help="load generator for throughput (latency is always measured in Python)")
    p.add_argument("--litellm", type=Path,
                   default=LITELLM_DEFAULT if LITELLM_DEFAULT.exists() else None,
                   help="the `litellm` CLI of a venv with litellm[proxy] (default: "
                        f"{LITELLM_DEFAULT} if it exists)")
    p.add_argument("--no-litellm", action="store_true", help="skip LiteLLM Proxy")
    p.add_argument("--no-canary", action="store_true", help="skip the mf+canary target")
    p.add_argument("--src", type=Path,
                   help="run modelfence from this source folder (e.g. a `git archive HEAD src` "
                        "export, for A/B runs) instead of the installed package")
    p.add_argument("--out", "--json", dest="out", type=Path, help="write the results here")
    p.add_argument("--keep", type=Path, help="keep configs, logs and audit log in this folder")
    p.add_argument("--save", type=Path, help="write the table as a result file the docs render "
                   "(bench/results.py; e.g. bench/published/llm-DATE.json)")
    args = p.parse_args(argv)
    if args.src is not None:  # the folder holding the modelfence package
        args.src = next((d.resolve() for d in (args.src, args.src / "src")
                         if (d / "modelfence" / "__init__.py").exists()), None) or p.error(
            f"--src {args.src}: no modelfence package in it or in its src/")
    if args.quick:
        args.rounds, args.requests, args.streams = 1, 300, 60
        args.warmup, args.duration = 50, 2.0
    if min(args.rounds, args.requests, args.streams, args.connections) < 1 or args.duration <= 0:
        p.error("--rounds, --requests, --streams, --connections and --duration must be positive")
    return args


# -- measurement ----------------------------------------------------------------------------

def pct(values: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(values) * 1000, [50, 99])
    return float(p50), float(p99)


@dataclass
class Round:
    """One target in one round (milliseconds; req/s; CPU µs per request)."""

    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    stream_p50_ms: float
    stream_p99_ms: float
    rps: float | None
    cpu_us_per_req: float | None


@dataclass
class Summary:
    """Medians over rounds for one target."""

    name: str
    rounds: list[Round] = field(default_factory=list)

    def med(self, key: str) -> float | None:
        values = [getattr(r, key) for r in self.rounds if getattr(r, key) is not None]
        return statistics.median(values) if values else None

    def as_dict(self) -> dict[str, Any]:
        keys = [f.name for f in Round.__dataclass_fields__.values()]
        return {"name": self.name, **{k: self.med(k) for k in keys},
                "rounds": [asdict(r) for r in self.rounds]}


def measure_one(target: Target, loader: WrkLoader | AiohttpLoader,
                args: argparse.Namespace, throughput: bool) -> Round:
    lat = asyncio.run(sequential(target, args.requests, args.warmup))
    first, total = asyncio.run(streams(target, args.streams, max(args.warmup // 10, 5)))
    rps = cpu = None
    if throughput:
        load = Load(target.base + "/chat/completions", request_body(target.model, False),
                    {**target.headers, "Content-Type": "application/json"})
        loader.run(load, args.connections, min(1.0, args.duration))  # warm-up
        c0 = cpu_seconds(target.pgid)
        many = loader.run(load, args.connections, args.duration)
        rps = many.rps
        cpu = (cpu_seconds(target.pgid) - c0) / many.requests * 1e6
    return Round(*pct(lat), *pct(first), *pct(total), rps, cpu)


def measure(targets: list[Target], loader: WrkLoader | AiohttpLoader,
            args: argparse.Namespace, console: Console) -> dict[str, Summary]:
    out = {t.name: Summary(t.name) for t in targets}
    for r in range(args.rounds):
        k = r % len(targets)
        for t in targets[k:] + targets[:k]:
            # the canary model shares the gateway: its throughput would only repeat modelfence's
            one = measure_one(t, loader, args, throughput=t.name != "mf+canary")
            out[t.name].rounds.append(one)
            rps = "" if one.rps is None else (f"  {one.rps:,.0f} req/s at {args.connections}"
                                              f"  {one.cpu_us_per_req:.0f} CPU µs/req")
            console.print(f"  round {r + 1}/{args.rounds} {t.name:<10} p50 {one.p50_ms:.3f} ms"
                          f"  p99 {one.p99_ms:.3f} ms  TTFT p50 {one.ttft_p50_ms:.3f} ms"
                          f"  stream p50 {one.stream_p50_ms:.3f} ms{rps}", highlight=False)
    return out


# -- the canary leak filter -----------------------------------------------------------------

def benign_text(size: int, seed: int = 0) -> str:
    """`size` characters of support-chat prose that repeats nothing of SYSTEM_PROMPT."""
    vocab = ["thanks", "for", "reaching", "out", "your", "order", "shipped", "yesterday", "and",
             "should", "arrive", "within", "three", "business", "days", "if", "anything", "is",
             "missing", "reply", "here", "we", "will", "sort", "it", "quickly", "the",
             "tracking", "number", "in", "email", "sent", "this", "morning", "let", "us", "know",
             "how", "goes", "parcel", "courier", "warehouse", "delivery", "window", "address",
             "label", "refund", "invoice"]
    rng = random.Random(seed)
    words: list[str] = []
    n = 0
    while n < size:
        w = rng.choice(vocab) + (". " if rng.random() < 0.08 else " ")
        words.append(w)
        n += len(w)
    return "".join(words)[:size]


def canary_cost(repeats: int, size: int = 100_000) -> dict[str, Any]:
    """Milliseconds to pass `size` characters through a LeakFilter, per delta width."""
    from modelfence.llm.canary import Canary, LeakPolicy

    policy = LeakPolicy(canary=Canary(b"bench-secret", "bench").token,
                        system_prompt=SYSTEM_PROMPT, mode="block")
    text = benign_text(size)
    out: dict[str, Any] = {"size_chars": size, "span_len": policy.span_len,
                           "repeats": repeats, "widths": {}}
    for width in (4, 8, 16):
        deltas = [text[i:i + width] for i in range(0, len(text), width)]
        times = []
        for _ in range(repeats):
            f = policy.filter()
            t0 = time.perf_counter()
            parts = [f.feed(d) for d in deltas]
            parts.append(f.finish())
            times.append(time.perf_counter() - t0)
            if f.leaked or "".join(parts) != text:
                raise RuntimeError("the leak filter changed benign text")
        ms = statistics.median(times) * 1000
        out["widths"][str(width)] = {"ms_per_100kb": ms * 100_000 / size,
                                     "us_per_delta": ms * 1000 / len(deltas),
                                     "deltas": len(deltas)}
    return out


# -- report ---------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = cpu_model()

    def ver(p: str) -> str:
        try:
            return version(p)
        except PackageNotFoundError:
            return "absent"

    root = Path(__file__).resolve().parent.parent
    rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "versions": {p: ver(p) for p in ("modelfence", "granian", "aiohttp", "orjson")},
            "source": (rev or "unknown") + ("+dirty" if dirty else "")}


def _f(v: float | None, spec: str = ".3f", sign: bool = False) -> str:
    if v is None:
        return "—"
    return format(v, ("+" if sign else "") + spec)


def table(s: dict[str, Summary], args: argparse.Namespace) -> Table:
    t = Table(title=f"LLM gateway overhead (medians over {args.rounds} round(s))",
              caption=f"latency/TTFT/stream at 1 connection ({args.requests} requests, "
                      f"{args.streams} streams of {args.chunks} events {args.interval_ms:g} ms "
                      f"apart per round); req/s at {args.connections} connections; added = "
                      "target minus direct; CPU µs/req: the target's own processes")
    t.add_column("target", no_wrap=True)
    for col in ("p50 ms", "p99 ms", "added p50", "added p99", "TTFT p50", "added TTFT",
                "TTFT p99", "stream p50", "added stream", "req/s", "CPU µs/req"):
        t.add_column(col, justify="right", no_wrap=True)
    d = s["direct"]

    def added(x: Summary, key: str) -> str:
        a, b = x.med(key), d.med(key)
        return "—" if x is d or a is None or b is None else _f(a - b, sign=True)

    for x in s.values():
        t.add_row(x.name, _f(x.med("p50_ms")), _f(x.med("p99_ms")), added(x, "p50_ms"),
                  added(x, "p99_ms"), _f(x.med("ttft_p50_ms")), added(x, "ttft_p50_ms"),
                  _f(x.med("ttft_p99_ms")), _f(x.med("stream_p50_ms")),
                  added(x, "stream_p50_ms"), _f(x.med("rps"), ",.0f"),
                  _f(x.med("cpu_us_per_req"), ".0f"))
    return t


COLUMNS = [
    {"key": "target", "title": "target"},
    {"key": "p50_ms", "title": "p50 ms", "format": "{:.3f}"},
    {"key": "added_p50_ms", "title": "added p50", "format": "{:+.3f}"},
    {"key": "added_p99_ms", "title": "added p99", "format": "{:+.3f}"},
    {"key": "ttft_p50_ms", "title": "TTFT p50", "format": "{:.3f}"},
    {"key": "added_ttft_ms", "title": "added TTFT", "format": "{:+.3f}"},
    {"key": "rps", "title": "req/s", "format": "{:,.0f}"},
    {"key": "cpu_us_per_req", "title": "CPU µs/req", "format": "{:,.0f}"},
]
SHOWN = {"litellm": "LiteLLM Proxy"}


def saved_result(s: dict[str, Summary], command: str) -> dict[str, Any]:
    """The table as bench/results.py keeps it: what the docs render."""
    d = s["direct"]

    def value(x: Summary, key: str, digits: int = 3) -> float | None:
        v = x.med(key)
        return None if v is None else round(v, digits)

    def added(x: Summary, key: str) -> float | None:
        a, b = x.med(key), d.med(key)
        return None if x is d or a is None or b is None else round(a - b, 3)

    rows = []
    for x in s.values():
        row = {"target": SHOWN.get(x.name, x.name), "p50_ms": value(x, "p50_ms"),
               "added_p50_ms": added(x, "p50_ms"), "added_p99_ms": added(x, "p99_ms"),
               "ttft_p50_ms": value(x, "ttft_p50_ms"), "added_ttft_ms": added(x, "ttft_p50_ms"),
               "rps": value(x, "rps", 0), "cpu_us_per_req": value(x, "cpu_us_per_req", 0)}
        if x.name == "modelfence":
            row["emphasis"] = ["added_p50_ms", "added_ttft_ms"]
        rows.append({k: v for k, v in row.items() if v is not None})
    return result("llm", command, COLUMNS, rows)


def verdicts(s: dict[str, Summary]) -> dict[str, dict[str, Any]]:
    def add(name: str, key: str) -> float | None:
        a, b = s[name].med(key) if name in s else None, s["direct"].med(key)
        return None if a is None or b is None else a - b

    out: dict[str, dict[str, Any]] = {}
    for key, label in (("p50_ms", "non-streaming"), ("ttft_p50_ms", "streaming TTFT")):
        mf = add("modelfence", key)
        assert mf is not None
        out[f"added_p50_{label}"] = {"value_ms": round(mf, 4), "target_ms": TARGET_ADDED_P50_MS,
                                     "met": mf <= TARGET_ADDED_P50_MS}
        ll = add("litellm", key)
        if ll is None:
            out[f"vs_litellm_{label}"] = {"value": None, "met": None,
                                          "why": "LiteLLM not measured"}
        else:
            ratio = mf / ll if ll > 0 else float("inf")
            out[f"vs_litellm_{label}"] = {"value": round(ratio, 4), "litellm_added_ms":
                                          round(ll, 4), "target": TARGET_VS_LITELLM,
                                          "met": ratio <= TARGET_VS_LITELLM}
    return out


def report(console: Console, info: dict[str, Any], s: dict[str, Summary],
           checks: dict[str, dict[str, Any]], canary: dict[str, Any],
           args: argparse.Namespace) -> None:
    console.print(f"machine: {info['nproc']} CPUs ({info['cpu_model']}); date {info['date']}; "
                  f"Python {info['python']}; modelfence {info['source']}; "
                  f"load average at start {info['loadavg_at_start']}, "
                  f"at end {info['loadavg_at_end']}", highlight=False)
    console.print(f"fairness: every server runs one worker process; the load generator "
                  f"({info['loadgen']}) and all servers share these {info['nproc']} CPUs; "
                  "modelfence checks an API key and LiteLLM a master_key on every call; "
                  f"LiteLLM: {info['litellm']}", highlight=False)
    console.print(table(s, args))
    for key, c in checks.items():
        mark = ("[yellow]not measured[/]" if c["met"] is None
                else "[green]met[/]" if c["met"] else "[red]missed[/]")
        if key.startswith("added"):
            console.print(f"  modelfence {key.replace('_', ' ')}: {c['value_ms']:+.3f} ms "
                          f"(target ≤ {c['target_ms']:g} ms) {mark}")
        elif c["value"] is None:
            console.print(f"  modelfence {key.replace('_', ' ')}: {mark} ({c['why']})")
        else:
            console.print(f"  modelfence {key.replace('_', ' ')}: {c['value']:.0%} of "
                          f"LiteLLM's added {c['litellm_added_ms']:+.3f} ms "
                          f"(target ≤ {c['target']:.0%}) {mark}")
    console.print(f"  modelfence audit records written (hash-chained SQLite): "
                  f"{info['audit_records']:,}", highlight=False)
    widths = ", ".join(f"{w}-char deltas {v['ms_per_100kb']:.1f} ms ({v['us_per_delta']:.2f} "
                       f"µs/delta)" for w, v in canary["widths"].items())
    console.print(f"  canary leak filter, 100 KB of benign text (span_len "
                  f"{canary['span_len']}): {widths}", highlight=False)


# -- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.src is not None:
        sys.path.insert(0, str(args.src))  # the canary filter timed in-process too
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    console = Console()
    console.width = max(console.width, TABLE_WIDTH)
    info = machine()
    if args.src is not None:
        info["source"] = f"run from {args.src} (checkout at {info['source']})"
    loader = make_loader(args.loadgen, 1)
    console.print("canary leak filter on 100 KB…")
    canary = canary_cost(repeats=3 if args.quick else 7)
    with workdir(args.keep, prefix="modelfence-bench-llm-") as folder, ExitStack() as stack:
        direct = start_upstream(stack, folder, args.chunks, args.interval_ms)
        gateway, guarded = start_modelfence(stack, folder / "modelfence", direct.base,
                                           args.src)
        targets = [direct, gateway] + ([] if args.no_canary else [guarded])
        if args.no_litellm:
            info["litellm"] = "not measured (--no-litellm)"
        elif args.litellm is None or not args.litellm.exists():
            info["litellm"] = (f"not measured (no litellm CLI at {args.litellm or LITELLM_DEFAULT};"
                               " install litellm[proxy] in a venv, see --litellm)")
        else:
            try:
                targets.append(start_litellm(stack, folder / "litellm", args.litellm,
                                             direct.base))
                info["litellm"] = f"litellm {litellm_version(args.litellm)}, {args.litellm}"
            except (RuntimeError, TimeoutError, OSError) as exc:
                info["litellm"] = f"not measured (it did not start: {str(exc)[:300]})"
        for t in list(targets):
            try:
                asyncio.run(check_answers(t, args.chunks))
            except (LoadError, OSError, ValueError, KeyError) as exc:
                if t.name != "litellm":
                    raise
                targets.remove(t)
                info["litellm"] = f"not measured (wrong answer: {str(exc)[:300]})"
        console.print("servers up: " + ", ".join(f"{t.name} {t.base}" for t in targets)
                      + "; measuring…", highlight=False)
        summaries = measure(targets, loader, args, console)
        info["audit_records"] = count_audit_rows(folder / "modelfence" / "audit.db")
        if args.keep is None and os.environ.get("BENCH_SHOW_LOGS"):
            for t in targets:
                console.print(t.log.read_text()[-2000:])
    info.update(loadgen=loader.name, loadavg_at_end=[round(x, 2) for x in os.getloadavg()],
                litellm_cli=str(args.litellm) if args.litellm else None,
                wrk=shutil.which("wrk"))
    checks = verdicts(summaries)
    report(console, info, summaries, checks, canary, args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": info,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "summary": {n: v.as_dict() for n, v in summaries.items()},
            "targets": checks,
            "canary_filter": canary,
        }, indent=2) + "\n")
        console.print(f"results written to {args.out}")
    if args.save:
        save(args.save, saved_result(summaries, "python bench/llm.py " + shlex.join(
            sys.argv[1:] if argv is None else argv)))
        console.print(f"result file written to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
