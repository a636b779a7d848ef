"""One rerunnable comparison: direct, a bare passthrough, modelfence and LiteLLM, in one run.

Two routes, every server one worker, all on loopback with the same load generator:

- OpenAI route (`POST /v1/chat/completions`, a system prompt and one user message, not
  streamed): direct = the fake upstream (bench/llm_upstream.py); passthrough = Starlette on
  granian with one pooled aiohttp session (bench/passthrough.py); modelfence = `modelfence
  serve` with an `llm:` model at the upstream, an API key, the default policy, a memory://
  rate limit per principal (`--rate-limit`, never reached) and the default audit log
  (hash-chained SQLite, batched); litellm = LiteLLM Proxy from its own venv
  (`--litellm-python`), one `openai/` model at the same upstream, a master_key, no database.
- OIP route (`POST /v2/models/digits/infer`, one digits row): direct = the OIP backend on
  granian (bench/oip_backend.py, a real LogisticRegression); passthrough as above;
  modelfence = `modelfence serve` with an `oip` backend, an API key, the same rate limit, the
  SQLite audit log.

Each round, for each target (order rotated each round): a warm-up at `--connections`, then
latency at 1 connection (p50, p99) and throughput at `--connections` (req/s), with the CPU
the target's own processes used per request during the throughput run and their resident
memory after it. The table shows medians over rounds; added = target minus direct. Then the
ratios issue 21 sets targets for. wrk is used when installed (one thread), else a Python
aiohttp loop. Every server and the load generator share this machine's CPUs: the report
says how many and what the load was, so a run on a busy machine is read as such.

    .venv/bin/python bench/compare.py                      # defaults: about 3 minutes
    .venv/bin/python bench/compare.py --rounds 3 --duration 5 \
        --save bench/published/compare-DATE.json
    .venv/bin/python bench/compare.py --litellm-python /tmp/litellm-venv/bin/python

LiteLLM is measured when `--litellm-python` (default /tmp/litellm-venv/bin/python) is a
Python with `litellm[proxy]` installed: `python -m venv /tmp/litellm-venv &&
/tmp/litellm-venv/bin/pip install 'litellm[proxy]'`. Without it the LiteLLM row and ratio say
"not measured".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import statistics
import sys
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from llm_targets import Target, check_answers, request_body, start_litellm, start_modelfence
from llm_targets import start_upstream as start_llm_upstream
from loadgen import AiohttpLoader, Load, LoadError, WrkLoader, make_loader
from oip_backend import ANSWER_ENV, ANSWERS
from overhead import INFER_PATH, answer_of, count_audit_rows, digits_body
from passthrough import UPSTREAM_ENV
from results import result, save
from servers import cpu_model, cpu_seconds, start_gateway, start_granian, stop_on_sigterm, workdir

LITELLM_PYTHON = Path("/tmp/litellm-venv/bin/python")  # noqa: S108 (a venv, read only)
TABLE_WIDTH = 150
# issue 21's targets, same run, one worker each
TARGET_ADDED_P50_MS = 0.5
TARGET_ADDED_P99_MS = 2.0
TARGET_VS_PASSTHROUGH = 0.60
TARGET_VS_LITELLM = 20.0
TARGET_CPU_US = 250.0


@dataclass
class Measured:
    """One target of one route: what to send where, and the processes that answer."""

    route: str
    name: str
    load: Load
    pgid: int


@dataclass
class Round:
    p50_ms: float
    p99_ms: float
    rps: float
    cpu_us_per_req: float
    rss_mib: float


@dataclass
class Summary:
    route: str
    name: str
    rounds: list[Round] = field(default_factory=list)

    def med(self, key: str) -> float:
        return float(statistics.median(getattr(r, key) for r in self.rounds))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds over all targets (median)")
    p.add_argument("--duration", type=int, default=3, help="seconds per measurement (whole)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per target (whole)")
    p.add_argument("--connections", type=int, default=32, help="connections for throughput")
    p.add_argument("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto")
    p.add_argument("--litellm-python", type=Path, default=LITELLM_PYTHON,
                   help="the python of a venv with litellm[proxy] (default: %(default)s)")
    p.add_argument("--no-litellm", action="store_true", help="skip LiteLLM Proxy")
    p.add_argument("--rate-limit", default="1000000/minute",
                   help="modelfence's per-principal rate limit (memory://), high enough never "
                        "to refuse: its check is part of the measured chain; 'none' for no "
                        "limit (default: %(default)s)")
    p.add_argument("--routes", default="llm,oip", help="which routes: llm, oip or both")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--save", type=Path, help="write the table as a result file the docs render "
                   "(bench/results.py; e.g. bench/published/compare-DATE.json)")
    p.add_argument("--keep", type=Path, help="keep configs, logs and audit logs in this folder")
    args = p.parse_args(argv)
    args.routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    if not set(args.routes) <= {"llm", "oip"} or not args.routes:
        p.error("--routes: llm, oip or llm,oip")
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        p.error("--rounds, --duration and --connections must be positive, --warmup >= 0")
    return args


def quotas(args: argparse.Namespace) -> dict[str, Any]:
    """The config section that adds the rate limit (none with `--rate-limit none`)."""
    if args.rate_limit == "none":
        return {}
    return {"quotas": {"storage": "memory://",
                       "limits": [{"scope": "principal", "rate": args.rate_limit}]}}


def rss_mib(pgid: int) -> float:
    """Resident memory of the live processes of process group `pgid` (granian's workers too)."""
    total_kib = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[2]) != pgid:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


# -- starting the targets -------------------------------------------------------------------

def llm_load(t: Target) -> Load:
    return Load(t.base + "/chat/completions", request_body(t.model, False),
                {**t.headers, "Content-Type": "application/json"})


def start_llm(stack: ExitStack, folder: Path, args: argparse.Namespace, info: dict[str, Any],
              console: Console) -> list[Measured]:
    direct = start_llm_upstream(stack, folder, chunks=20, interval_ms=1.0)
    upstream_root = direct.base.removesuffix("/v1")
    proxy = start_granian(stack, "llm-passthrough", "passthrough:create_app", folder,
                          {UPSTREAM_ENV: upstream_root}, health="/health")
    passthrough = Target("passthrough", proxy.url + "/v1", direct.headers, direct.model,
                         proxy.pgid, proxy.log)
    gateway, _canary = start_modelfence(stack, folder / "llm-modelfence", direct.base, None,
                                        quotas(args))
    targets = [direct, passthrough, gateway]
    info["litellm"] = "not measured (--no-litellm)" if args.no_litellm else None
    if not args.no_litellm:
        cli = args.litellm_python.parent / "litellm"
        if not args.litellm_python.exists() or not cli.exists():
            info["litellm"] = (f"not measured (no litellm[proxy] beside {args.litellm_python}; "
                               "see --litellm-python)")
        else:
            console.print("starting LiteLLM Proxy (it takes a while)…")
            try:
                targets.append(start_litellm(stack, folder / "litellm", cli, direct.base))
            except (RuntimeError, TimeoutError, OSError) as exc:
                info["litellm"] = f"not measured (it did not start: {str(exc)[:300]})"
    for t in list(targets):
        try:
            asyncio.run(check_answers(t, 20))
        except (LoadError, OSError, ValueError, KeyError) as exc:
            if t.name != "litellm":
                raise
            targets.remove(t)
            info["litellm"] = f"not measured (wrong answer: {str(exc)[:300]})"
    if any(t.name == "litellm" for t in targets):
        info["litellm"] = f"LiteLLM {_litellm_version(args.litellm_python)}"
    return [Measured("llm", t.name, llm_load(t), t.pgid) for t in targets]


def _litellm_version(python: Path) -> str:
    import subprocess

    out = subprocess.run([str(python), "-c", "from importlib.metadata import version; "
                          "print(version('litellm'))"], capture_output=True, text=True,
                         check=False, timeout=60)
    return out.stdout.strip() or "unknown"


def start_oip(stack: ExitStack, folder: Path, args: argparse.Namespace) -> list[Measured]:
    backend = start_granian(stack, "oip-backend", "oip_backend:create_app", folder,
                            {ANSWER_ENV: ANSWERS[0]})
    proxy = start_granian(stack, "oip-passthrough", "passthrough:create_app", folder,
                          {UPSTREAM_ENV: backend.url})
    gateway, key = start_gateway(stack, folder / "oip-modelfence", backend.url,
                                 "sqlite:///audit.db", extra=quotas(args))
    body = digits_body()
    targets: list[Measured] = []
    for name, server, headers in (
            ("direct", backend, {}), ("passthrough", proxy, {}),
            ("modelfence", gateway, {"Authorization": f"Bearer {key}"})):
        load = Load(server.url + INFER_PATH, body,
                    {"Content-Type": "application/json", **headers})
        targets.append(Measured("oip", name, load, server.pgid))
    want = answer_of(targets[0].load)
    for t in targets[1:]:
        got = answer_of(t.load)
        if any(abs(a - b) > 1e-6 for a, b in zip(want, got, strict=True)):
            raise RuntimeError(f"OIP {t.name} answered {got}, the backend {want}")
    return targets


# -- measuring ------------------------------------------------------------------------------

def measure_one(s: Measured, loader: WrkLoader | AiohttpLoader, args: argparse.Namespace
                ) -> Round:
    if args.warmup:
        # a slow starter (LiteLLM) may answer nothing within the warm-up: not a result
        with contextlib.suppress(LoadError):
            loader.run(s.load, args.connections, args.warmup)
    one = loader.run(s.load, 1, args.duration)
    c0 = cpu_seconds(s.pgid)
    many = loader.run(s.load, args.connections, args.duration)
    cpu = (cpu_seconds(s.pgid) - c0) / many.requests * 1e6
    return Round(one.p50_ms, one.p99_ms, many.rps, cpu, rss_mib(s.pgid))


def measure(servers: list[Measured], loader: WrkLoader | AiohttpLoader, args: argparse.Namespace,
            console: Console) -> dict[tuple[str, str], Summary]:
    out = {(s.route, s.name): Summary(s.route, s.name) for s in servers}
    for r in range(args.rounds):
        k = r % len(servers)
        for s in servers[k:] + servers[:k]:
            one = measure_one(s, loader, args)
            out[(s.route, s.name)].rounds.append(one)
            console.print(f"  round {r + 1}/{args.rounds} {s.route} {s.name:<11} p50 "
                          f"{one.p50_ms:.3f} ms  p99 {one.p99_ms:.3f} ms  {one.rps:,.0f} req/s"
                          f"  {one.cpu_us_per_req:.0f} CPU µs/req  {one.rss_mib:.0f} MiB",
                          highlight=False)
    return out


# -- report ---------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    from datetime import UTC, datetime

    from results import commit

    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": cpu_model(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0], "commit": commit()}


def rows(s: dict[tuple[str, str], Summary]) -> list[dict[str, Any]]:
    out = []
    for (route, name), x in s.items():
        d = s[(route, "direct")]
        p = s.get((route, "passthrough"))
        row: dict[str, Any] = {
            "route": "OpenAI" if route == "llm" else "OIP", "target": name,
            "p50_ms": round(x.med("p50_ms"), 3), "p99_ms": round(x.med("p99_ms"), 3),
            "rps": round(x.med("rps")), "cpu_us_per_req": round(x.med("cpu_us_per_req")),
            "rss_mib": round(x.med("rss_mib"))}
        if name != "direct":
            row["added_p50_ms"] = round(x.med("p50_ms") - d.med("p50_ms"), 3)
            row["added_p99_ms"] = round(x.med("p99_ms") - d.med("p99_ms"), 3)
        if p is not None:
            row["vs_passthrough_pct"] = round(100 * x.med("rps") / p.med("rps"))
        if name == "modelfence":
            row["emphasis"] = ["added_p50_ms", "rps", "cpu_us_per_req"]
        out.append(row)
    return out


def verdicts(s: dict[tuple[str, str], Summary]) -> list[dict[str, Any]]:
    """Issue 21's targets, each with the value this run measured."""
    out: list[dict[str, Any]] = []

    def check(what: str, value: float | None, target: float, op: str, unit: str) -> None:
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        out.append({"what": what, "value": value, "target": target, "op": op, "unit": unit,
                    "met": met})

    for route in ("llm", "oip"):
        mf = s.get((route, "modelfence"))
        if mf is None:
            continue
        d, p = s[(route, "direct")], s[(route, "passthrough")]
        name = "OpenAI" if route == "llm" else "OIP"
        check(f"{name}: added p50 at 1 connection", mf.med("p50_ms") - d.med("p50_ms"),
              TARGET_ADDED_P50_MS, "<=", "ms")
        check(f"{name}: added p99 at 1 connection", mf.med("p99_ms") - d.med("p99_ms"),
              TARGET_ADDED_P99_MS, "<=", "ms")
        check(f"{name}: modelfence / passthrough req/s", mf.med("rps") / p.med("rps"),
              TARGET_VS_PASSTHROUGH, ">=", "x")
        check(f"{name}: modelfence CPU per request", mf.med("cpu_us_per_req"), TARGET_CPU_US,
              "<=", "µs")
        if route == "llm":
            ll = s.get(("llm", "litellm"))
            check("OpenAI: modelfence / LiteLLM req/s",
                  None if ll is None else mf.med("rps") / ll.med("rps"), TARGET_VS_LITELLM,
                  ">=", "x")
    return out


COLUMNS = [
    {"key": "route", "title": "route"},
    {"key": "target", "title": "target"},
    {"key": "p50_ms", "title": "p50 ms", "format": "{:.3f}"},
    {"key": "p99_ms", "title": "p99 ms", "format": "{:.3f}"},
    {"key": "added_p50_ms", "title": "added p50", "format": "{:+.3f}"},
    {"key": "added_p99_ms", "title": "added p99", "format": "{:+.3f}"},
    {"key": "rps", "title": "req/s", "format": "{:,.0f}"},
    {"key": "vs_passthrough_pct", "title": "vs passthrough", "format": "{:.0f} %"},
    {"key": "cpu_us_per_req", "title": "CPU µs/req", "format": "{:,.0f}"},
    {"key": "rss_mib", "title": "memory MiB", "format": "{:,.0f}"},
]


def report(console: Console, info: dict[str, Any], table_rows: list[dict[str, Any]],
           checks: list[dict[str, Any]], args: argparse.Namespace) -> None:
    console.print(f"machine: {info['nproc']} CPUs ({info['cpu_model']}); date {info['date']}; "
                  f"Python {info['python']}; modelfence {info['commit']}", highlight=False)
    console.print(f"load average (1, 5, 15 min) at start {info['loadavg_at_start']}, at end "
                  f"{info['loadavg_at_end']}", highlight=False)
    if info["loadavg_at_start"][0] > 0.5 * info["nproc"]:
        console.print("[yellow]warning:[/] the machine was busy before the run; p99 and req/s "
                      "then include waits for a CPU. Rerun on a quiet machine before quoting.")
    console.print(f"load generator: {info['loadgen']}; every server one worker; servers and "
                  f"load generator share the {info['nproc']} CPUs; {args.rounds} round(s) of "
                  f"{args.duration:g} s per measurement after {args.warmup:g} s warm-up; "
                  f"modelfence rate limit: {args.rate_limit} per principal; "
                  f"LiteLLM: {info['litellm']}", highlight=False)
    t = Table(title="direct, passthrough, modelfence and LiteLLM (medians over rounds)",
              caption=f"p50/p99 at 1 connection; req/s, CPU and memory at {args.connections} "
                      "connections; added = target minus direct on its route; CPU µs/req: the "
                      "target's own processes (not the upstream)")
    for c in COLUMNS:
        t.add_column(c["title"], justify="left" if c["key"] in ("route", "target") else "right",
                     no_wrap=True)
    for r in table_rows:
        t.add_row(*(_cell(r.get(c["key"]), c.get("format")) for c in COLUMNS))
    console.print(t)
    console.print("issue 21's targets:")
    for c in checks:
        if c["value"] is None:
            console.print(f"  {c['what']}: [yellow]not measured[/]")
            continue
        mark = "[green]met[/]" if c["met"] else "[red]missed[/]"
        value = (f"{c['value']:.2f}x" if c["unit"] == "x" else
                 f"{c['value']:+.3f} ms" if c["unit"] == "ms" else f"{c['value']:.0f} µs")
        target = (f"{c['target']:g}x" if c["unit"] == "x" else f"{c['target']:g} {c['unit']}")
        console.print(f"  {c['what']}: {value} (target {c['op']} {target}) {mark}",
                      highlight=False)
    for route, n in info.get("audit_records", {}).items():
        console.print(f"  modelfence audit records written on the {route} route "
                      f"(hash-chained SQLite): {n:,}", highlight=False)


def _cell(v: Any, fmt: str | None) -> str:
    if v is None:
        return "—"
    return fmt.format(v) if fmt and isinstance(v, int | float) else str(v)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    console = Console()
    console.width = max(console.width, TABLE_WIDTH)
    info = machine()
    loader = make_loader(args.loadgen, 1)
    info["litellm"] = "not measured (OpenAI route not run)"
    with workdir(args.keep, prefix="modelfence-bench-compare-") as folder, ExitStack() as stack:
        servers: list[Measured] = []
        if "llm" in args.routes:
            servers += start_llm(stack, folder, args, info, console)
        if "oip" in args.routes:
            servers += start_oip(stack, folder, args)
        console.print("servers up: " + ", ".join(f"{s.route}/{s.name}" for s in servers)
                      + "; measuring…", highlight=False)
        summaries = measure(servers, loader, args, console)
        info["audit_records"] = {
            route: count_audit_rows(folder / sub / "audit.db")
            for route, sub in (("OpenAI", "llm-modelfence"), ("OIP", "oip-modelfence"))
            if (folder / sub / "audit.db").exists()}
    info.update(loadgen=loader.name, loadavg_at_end=[round(x, 2) for x in os.getloadavg()])
    table_rows = rows(summaries)
    checks = verdicts(summaries)
    report(console, info, table_rows, checks, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": info,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": table_rows, "targets": checks,
            "rounds": {f"{r}/{n}": [asdict(x) for x in s.rounds]
                       for (r, n), s in summaries.items()},
        }, indent=2) + "\n")
        console.print(f"results written to {args.json}")
    if args.save:
        save(args.save, result("compare", "python bench/compare.py " + shlex.join(
            sys.argv[1:] if argv is None else argv), COLUMNS, table_rows))
        console.print(f"result file written to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
