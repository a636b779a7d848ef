"""What the modelfence gateway costs: added latency and throughput, measured on loopback.

Three targets answer the same OIP v2 request (one digits row, [1, 64] FP32, "input"):

- direct:      the benchmark's OIP backend (bench/oip_backend.py), called directly;
- passthrough: a minimal Starlette + granian proxy with one pooled aiohttp session
               (bench/passthrough.py), the floor for a Python gateway on this stack;
- gateway:     `modelfence serve` with the full chain its app factory wires (API-key
               identity, model access/policy, bounded body, input validation, metrics,
               audit to a jsonl file) and an `oip` upstream backend at the same backend.

Each round, for each target: a warm-up, then latency at 1 connection and throughput at
`--connections`; the table shows medians over `--rounds`. Every server runs one worker.

    /tmp/v1/bin/python bench/overhead.py --duration 5 --rounds 3 --json overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import urllib.request
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadgen import AiohttpLoader, Load, Result, WrkLoader, make_loader
from oip_backend import ANSWER_ENV, ANSWERS, CLASSES
from passthrough import UPSTREAM_ENV
from results import result, save
from servers import cpu_model, cpu_seconds, start_gateway, start_granian, stop_on_sigterm, workdir

INFER_PATH = "/v2/models/digits/infer"
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 3.0
TARGET_THROUGHPUT_RATIO = 0.60
NAMES = ("direct", "passthrough", "gateway")
TABLE_WIDTH = 110
DEFAULT_SINK = "sqlite:///audit.db"  # the product's default: the hash-chained log
BUSY_LOAD_PER_CPU = 0.5  # 1-minute load average per CPU above which the machine was not quiet


@dataclass(frozen=True)
class Round:
    """One target in one round: latency at 1 connection, throughput at many."""

    latency: Result
    throughput: Result
    cpu_us_per_req: float  # the target's own processes during the throughput run

    def as_dict(self) -> dict[str, Any]:
        return {"latency": {**asdict(self.latency), "rps": self.latency.rps},
                "throughput": {**asdict(self.throughput), "rps": self.throughput.rps},
                "cpu_us_per_req": self.cpu_us_per_req}


@dataclass(frozen=True)
class Summary:
    """Medians over the rounds for one target."""

    name: str
    p50_ms: float
    p99_ms: float
    rps: float
    cpu_us_per_req: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all targets (median)")
    p.add_argument("--connections", type=int, default=32, help="connections for throughput")
    p.add_argument("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto")
    p.add_argument("--wrk-threads", type=int, default=1,
                   help="wrk threads at most (each competes with the servers for a core)")
    p.add_argument("--answer", choices=ANSWERS, default=ANSWERS[0],
                   help="how the backend answers: a real LogisticRegression or a constant")
    p.add_argument("--audit-sink", default=DEFAULT_SINK,
                   help="the gateway's audit.sink (relative paths: its folder)")
    p.add_argument("--monitor", action="store_true",
                   help="also run the extraction monitor, output bands and the watermark")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--save", type=Path, help="write the table as a result file the docs render "
                   "(bench/results.py; e.g. bench/published/overhead-DATE.json)")
    p.add_argument("--keep", type=Path, help="keep logs, config and audit file in this folder")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1 or args.connections < 1:
        p.error("--duration, --rounds and --connections must be positive, --warmup >= 0")
    return args


def digits_body() -> bytes:
    """One real digits row, scaled to [0, 1], as an OIP v2 request."""
    from sklearn.datasets import load_digits

    row = load_digits().data[0] / 16.0
    doc = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                       "data": [float(v) for v in row]}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def machine() -> dict[str, Any]:
    model = cpu_model()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("modelfence", "granian", "starlette", "aiohttp")},
        "source": source_revision(),
    }


def source_revision() -> str:
    """The git commit measured, marked `+dirty` when src/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "src") else "")


def count_audit_rows(path: Path) -> int:
    """Records in the gateway's audit log: proof the audit hook ran on the measured path."""
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM modelfence_audit").fetchone()[0])


def answer_of(load: Load) -> list[float]:
    """POST once; the `probabilities` output (and a clear error for anything unexpected)."""
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        load.url, data=load.body, headers=load.headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback only)
        doc = json.loads(resp.read())
    proba = next(o for o in doc["outputs"] if o["name"] == "probabilities")
    if proba["shape"] != [1, CLASSES]:
        raise RuntimeError(f"{load.url}: probabilities of shape {proba['shape']}")
    return [float(v) for v in proba["data"]]


def check_answers(loads: dict[str, Load]) -> None:
    """All three targets must give the backend's answer before anything is timed."""
    want = answer_of(loads["direct"])
    for name in NAMES[1:]:
        got = answer_of(loads[name])
        if any(abs(a - b) > 1e-6 for a, b in zip(want, got, strict=True)):
            raise RuntimeError(f"{name} answered {got}, the backend {want}")


def measure(loader: WrkLoader | AiohttpLoader, targets: dict[str, tuple[Load, int]],
            args: argparse.Namespace, console: Console) -> dict[str, list[Round]]:
    """Rounds over the targets (order rotated each round, so none always goes first)."""
    runs: dict[str, list[Round]] = {n: [] for n in NAMES}
    for r in range(args.rounds):
        for name in NAMES[r % 3:] + NAMES[:r % 3]:
            load, pgid = targets[name]
            if args.warmup:
                loader.run(load, args.connections, args.warmup)
            one = loader.run(load, 1, args.duration)
            cpu = cpu_seconds(pgid)
            many = loader.run(load, args.connections, args.duration)
            cpu = (cpu_seconds(pgid) - cpu) / many.requests * 1e6
            runs[name].append(Round(one, many, cpu))
            console.print(f"  round {r + 1}/{args.rounds} {name:<11} p50 {one.p50_ms:.3f} ms  "
                          f"p99 {one.p99_ms:.3f} ms  {many.rps:,.0f} req/s  "
                          f"{cpu:.0f} CPU µs/req", highlight=False)
    return runs


def summarize(runs: dict[str, list[Round]]) -> dict[str, Summary]:
    med = statistics.median
    return {n: Summary(n, med(r.latency.p50_ms for r in rs), med(r.latency.p99_ms for r in rs),
                       med(r.throughput.rps for r in rs), med(r.cpu_us_per_req for r in rs))
            for n, rs in runs.items()}


def verdicts(s: dict[str, Summary]) -> dict[str, dict[str, Any]]:
    gw, direct, proxy = s["gateway"], s["direct"], s["passthrough"]
    checks = {
        "added_p50_ms": (gw.p50_ms - direct.p50_ms, TARGET_ADDED_P50_MS, "<="),
        "added_p99_ms": (gw.p99_ms - direct.p99_ms, TARGET_ADDED_P99_MS, "<="),
        "throughput_vs_passthrough": (gw.rps / proxy.rps, TARGET_THROUGHPUT_RATIO, ">="),
    }
    out = {k: {"value": round(v, 4), "target": t, "op": op,
               "met": v <= t if op == "<=" else v >= t} for k, (v, t, op) in checks.items()}
    # Not a target: the req/s ratio if each proxy had a core to itself (backend and load
    # generator elsewhere). Here they share the CPUs, so req/s also pays for the backend.
    out["cpu_per_request_vs_passthrough"] = {"value": round(proxy.cpu_us_per_req
                                                            / gw.cpu_us_per_req, 4)}
    return out


def table(s: dict[str, Summary], connections: int) -> Table:
    t = Table(title="modelfence overhead (medians over rounds)",
              caption=f"p50/p99 at 1 connection; req/s at {connections} connections; "
                      "added = target minus direct; CPU µs/req: the target's own processes "
                      "(without the backend, for the proxies)")
    t.add_column("target", no_wrap=True)
    for col in ("p50 ms", "p99 ms", "req/s", "added p50", "added p99", "vs passthrough",
                "CPU µs/req"):
        t.add_column(col, justify="right", no_wrap=True)
    direct, proxy = s["direct"], s["passthrough"]
    for n in NAMES:
        row = s[n]
        added = ("—", "—") if n == "direct" else (f"{row.p50_ms - direct.p50_ms:+.3f}",
                                                   f"{row.p99_ms - direct.p99_ms:+.3f}")
        t.add_row(n, f"{row.p50_ms:.3f}", f"{row.p99_ms:.3f}", f"{row.rps:,.0f}", *added,
                  f"{row.rps / proxy.rps:.0%}", f"{row.cpu_us_per_req:.0f}")
    return t


def report(console: Console, info: dict[str, Any], s: dict[str, Summary],
           checks: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    console.print(f"machine: {info['nproc']} CPUs ({info['cpu_model']}); date {info['date']}; "
                  f"Python {info['python']}; modelfence {info['source']}", highlight=False)
    console.print(f"load average (1, 5, 15 min) at start {info['loadavg_at_start']}, "
                  f"at end {info['loadavg_at_end']}", highlight=False)
    if info["loadavg_at_start"][0] > BUSY_LOAD_PER_CPU * info["nproc"]:
        console.print("[yellow]warning:[/] other processes were using the CPUs before the "
                      "servers started; p99 at 1 connection then includes waits for a CPU. "
                      "Rerun on a quiet machine before trusting the p99 columns.")
    console.print(f"load generator: {info['loadgen']}; backend answer: {info['backend_answer']};"
                  f" {args.rounds} round(s) of {args.duration:g} s per measurement "
                  f"after {args.warmup:g} s warm-up", highlight=False)
    console.print(table(s, args.connections))
    for key, c in checks.items():
        if "target" not in c:
            console.print(f"  {key}: {c['value']:.0%} (passthrough CPU µs/req ÷ gateway's: "
                          "the req/s ratio if each proxy had a core of its own)")
            continue
        mark = "[green]met[/]" if c["met"] else "[red]missed[/]"
        value = f"{c['value']:.0%}" if key.startswith("throughput") else f"{c['value']:+.3f} ms"
        target = (f"{c['target']:.0%}" if key.startswith("throughput")
                  else f"{c['target']:g} ms")
        console.print(f"  {key}: {value} (target {c['op']} {target}) {mark}")
    if "audit_records" in info:
        console.print(f"  gateway audit records written: {info['audit_records']:,}",
                      highlight=False)
    else:
        console.print(f"  gateway audit sink: {args.audit_sink}", highlight=False)


COLUMNS = [
    {"key": "target", "title": "target"},
    {"key": "p50_ms", "title": "p50 ms", "format": "{:.3f}"},
    {"key": "p99_ms", "title": "p99 ms", "format": "{:.3f}"},
    {"key": "rps", "title": "req/s", "format": "{:,.0f}"},
    {"key": "added_p50_ms", "title": "added p50", "format": "{:+.3f}"},
    {"key": "added_p99_ms", "title": "added p99", "format": "{:+.3f}"},
    {"key": "vs_passthrough_pct", "title": "vs passthrough", "format": "{:.0f} %"},
    {"key": "cpu_us_per_req", "title": "CPU µs/req", "format": "{:,.0f}"},
]


def saved_result(s: dict[str, Summary], command: str) -> dict[str, Any]:
    """The table as bench/results.py keeps it: what the docs render."""
    direct, proxy = s["direct"], s["passthrough"]
    rows = []
    for name, row in s.items():
        rows.append({"target": name, "p50_ms": round(row.p50_ms, 3),
                     "p99_ms": round(row.p99_ms, 3), "rps": round(row.rps),
                     **({} if row is direct else {
                         "added_p50_ms": round(row.p50_ms - direct.p50_ms, 3),
                         "added_p99_ms": round(row.p99_ms - direct.p99_ms, 3)}),
                     "vs_passthrough_pct": round(100 * row.rps / proxy.rps),
                     "cpu_us_per_req": round(row.cpu_us_per_req),
                     **({"emphasis": ["added_p50_ms", "added_p99_ms", "vs_passthrough_pct"]}
                        if name == "gateway" else {})})
    return result("overhead", command, COLUMNS, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    console = Console()
    console.width = max(console.width, TABLE_WIDTH)
    info = machine()
    loader = make_loader(args.loadgen, args.wrk_threads)
    body = digits_body()
    with workdir(args.keep, prefix="modelfence-bench-") as folder, ExitStack() as stack:
        backend = start_granian(stack, "backend", "oip_backend:create_app", folder,
                                {ANSWER_ENV: args.answer})
        proxy = start_granian(stack, "passthrough", "passthrough:create_app", folder,
                              {UPSTREAM_ENV: backend.url})
        gateway, key = start_gateway(stack, folder / "gateway", backend.url, args.audit_sink,
                                     protect=args.monitor)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        targets = {name: (Load(s.url + INFER_PATH, body, headers), s.pgid)
                   for name, s in zip(NAMES, (backend, proxy, gateway), strict=True)}
        check_answers({name: load for name, (load, _) in targets.items()})
        console.print(f"servers up: direct {backend.url}, passthrough {proxy.url}, "
                      f"gateway {gateway.url}; measuring…", highlight=False)
        runs = measure(loader, targets, args, console)
        if args.audit_sink == DEFAULT_SINK:
            info["audit_records"] = count_audit_rows(folder / "gateway" / "audit.db")
    info.update(loadgen=loader.name, backend_answer=args.answer, protections=args.monitor,
                loadavg_at_end=[round(x, 2) for x in os.getloadavg()])
    s = summarize(runs)
    checks = verdicts(s)
    report(console, info, s, checks, args)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "summary": {n: asdict(v) for n, v in s.items()},
            "targets": checks,
            "rounds": {n: [r.as_dict() for r in rs] for n, rs in runs.items()},
        }, indent=2) + "\n")
        console.print(f"results written to {args.json}")
    if args.save:
        save(args.save, saved_result(s, "python bench/overhead.py " + shlex.join(
            sys.argv[1:] if argv is None else argv)))
        console.print(f"result file written to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
