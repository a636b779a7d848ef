"""`modelfence audit verify|tail|query|export|keygen`: read and check the chained audit log."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import orjson
import typer
from rich.markup import escape
from rich.progress import Progress

from ..audit.chain import Row, row_view
from ..audit.checkpoint import Checkpoint, generate_keypair, load_public_key
from ..audit.retention import verify_archive
from ..audit.sinks import CHAINED_SCHEMES
from ..audit.spill import pending_in
from ..audit.store import AuditStore, Query, audit_store_from_url
from ..audit.verify import Report, verify_store
from ..errors import ModelfenceError
from .common import ConfigOption, console, err_console, fail, run_async, settings_from
from .tables import Grid

T = TypeVar("T")
app = typer.Typer(help="Verify, read and export the tamper-evident audit log.",
                  no_args_is_help=True)

StoreOption = Annotated[str | None, typer.Option(
    "--store", help="Audit store URL (default: audit.sink of the config)", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON")]
WideOption = Annotated[bool, typer.Option(
    "--wide", "-w", help="Also the tenant, the year and milliseconds (wider than 80 columns)")]
Principal = Annotated[str | None, typer.Option(help="Only this principal")]
Tenant = Annotated[str | None, typer.Option(help="Only this tenant")]
Model = Annotated[str | None, typer.Option(help="Only this model")]
Since = Annotated[str | None, typer.Option(
    help="From this time: ISO 8601 (UTC unless it says otherwise) or an age like 15m, 2h, 7d")]
Until = Annotated[str | None, typer.Option(help="Before this time (same forms as --since)")]

_AGE = re.compile(r"^(\d+)([smhd])$")


def _when(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    m = _AGE.match(text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        dt = datetime.now(UTC) - timedelta(**{unit: int(m.group(1))})
    else:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise fail(f"{option} {text!r}: use ISO 8601 (2025-01-31T12:00) or an age "
                       "(15m, 2h, 7d)", 2) from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1_000_000)


def _open_store(config: Path | None, store: str | None) -> tuple[AuditStore, Path | None]:
    """The store to read and the checkpoint key file the config names (if any)."""
    key_file = None
    if store is None:
        _, settings = settings_from(config)
        store, key_file = settings.audit.sink, settings.audit.checkpoint_key_file
    scheme = urlsplit(store).scheme
    if scheme not in CHAINED_SCHEMES:
        name = f"{scheme}://..." if scheme else repr(store)  # never echo a password
        raise fail(f"audit sink {name} is not a chained store; verify, tail, query and "
                   "export read sqlite:///PATH or postgresql://USER@HOST/DB", 2)
    try:
        return audit_store_from_url(store, create=False), key_file
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None


@asynccontextmanager
async def _opened(store: AuditStore) -> AsyncIterator[AuditStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _with_store(store: AuditStore, fn: Callable[[AuditStore], Awaitable[T]]) -> T:
    async def go() -> T:
        async with _opened(store):
            return await fn(store)
    return run_async(go)


def _query(principal: str | None, tenant: str | None, model: str | None, since: str | None,
           until: str | None, **kw: Any) -> Query:
    return Query(principal=principal, tenant=tenant, model=model,
                 since_us=_when(since, "--since"), until_us=_when(until, "--until"), **kw)


def _print_rows(rows: list[Row], json_out: bool, wide: bool = False) -> None:
    if json_out:
        console.print_json(orjson.dumps({"records": [row_view(r) for r in rows]}).decode())
        return
    headers = ["seq", "time (UTC)", "principal", *(["tenant"] if wide else []), "model",
               "action", "result"]
    t = Grid(headers, whole=("time (UTC)",), right=("seq",))
    for r in rows:
        reason = orjson.loads(r.payload).get("reason", "")
        when = datetime.fromtimestamp(r.ts_us / 1e6, UTC).strftime(
            "%Y-%m-%d %H:%M:%S.%f")[:-3] if wide else datetime.fromtimestamp(
            r.ts_us / 1e6, UTC).strftime("%m-%d %H:%M:%S")
        result = " ".join(str(v) for v in (r.status, reason) if v not in (None, ""))
        values = [r.seq, when, r.principal or "-", *([r.tenant or "-"] if wide else []),
                  r.model or "-", r.action or "-", result or "-"]
        # values come from callers (principal names): never let them act as rich markup
        t.add_row(*(escape(str(v)) for v in values))
    console.print(t)


def _print_selected(q: Query, config: Path | None, store: str | None, json_out: bool,
                    wide: bool) -> None:
    """`query` and `alerts`: print what `q` selects from the store --store or the config names."""
    st, _ = _open_store(config, store)
    _print_rows(_with_store(st, lambda s: s.select(q)), json_out, wide)


@app.command()
def verify(
    config: ConfigOption = None,
    store: StoreOption = None,
    public_key: Annotated[Path | None, typer.Option(
        help="Ed25519 public (or private) key PEM that signs checkpoints "
             "(default: audit.checkpoint_key_file)")] = None,
    anchor: Annotated[list[Path] | None, typer.Option(
        help="File of checkpoints kept elsewhere (JSON lines, e.g. the "
             "modelfence.audit.checkpoint log); catches removal of the newest records "
             "together with their checkpoints")] = None,
    spill_dir: Annotated[Path | None, typer.Option(
        help="The gateway's audit spill folder (default: audit.spill_dir of the config)")
    ] = None,
    archive: Annotated[Path | None, typer.Option(
        help="Folder of sealed segments (`audit seal`): verify them and the store as one "
             "chain, from record 1")] = None,
    json_out: JsonOption = False,
) -> None:
    """Check every record, link and checkpoint; exit 1 and name the first damage if any,
    exit 3 when the log verifies but records still wait in the spill for replay.

    After `audit prune`, the store's walk starts from the signed hash of the last pruned
    segment; --archive DIR walks the archived records too."""
    st, key_file = _open_store(config, store)
    if spill_dir is None and (store is None or config is not None):
        spill_dir = settings_from(config)[1].audit.spill_dir
    try:
        key_path = public_key or key_file
        public = load_public_key(key_path) if key_path else None
        anchors = [cp for path in anchor or [] for cp in _read_anchors(path)]
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    show = console.is_terminal and not json_out
    with Progress(console=console, transient=True) if show else nullcontext() as bar:
        task = bar.add_task("verifying", total=None) if bar else None

        def progress(seq: int, head: int) -> None:
            if bar is not None and task is not None:
                bar.update(task, completed=seq, total=head)

        if archive is not None:
            report = _with_store(st, lambda s: verify_archive(
                s, archive, public_key=public, anchors=anchors, progress=progress))
        else:
            report = _with_store(st, lambda s: verify_store(
                s, public_key=public, anchors=anchors, progress=progress))
    # read after the walk: a record replayed meanwhile is counted in the log, or here
    pending = pending_in(spill_dir) if spill_dir is not None else 0
    _print_report(report, json_out, pending)
    if not report.ok:
        raise typer.Exit(1)
    if pending:
        raise typer.Exit(3)


def _read_anchors(path: Path) -> list[Checkpoint]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise fail(f"{path}: cannot read anchors: {exc.strerror}", 2) from None
    out = []
    for n, line in enumerate(lines, 1):
        if "{" not in line:
            continue
        try:  # a bare JSON line, or a log line ending in one
            out.append(Checkpoint.from_dict(orjson.loads(line[line.index("{"):])))
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise fail(f"{path}:{n}: {exc}", 2) from None
    return out


def _print_report(r: Report, json_out: bool, pending: int = 0) -> None:
    if json_out:
        doc = {**r.to_dict(), "pending_replay": pending}
        doc["ok"] = r.ok and not pending
        console.print_json(orjson.dumps(doc).decode())
        return
    speed = f"{r.seconds:.2f} s ({r.rate:,.0f} records/s)"
    for note in r.notes:
        err_console.print(f"[yellow]warning:[/] {escape(note)}")
    if r.damage is not None:
        d = r.damage
        console.print(f"[bold red]DAMAGED[/] at record {d.seq}: {d.kind} — {d.detail}",
                      soft_wrap=True)
        console.print(f"{r.records:,} records before it verified; {speed}")
        return
    unsealed = r.last_seq - r.last_checkpoint
    checked = f"{'verified' if r.signed else 'matched (signatures not checked)'}; {speed}"
    if pending:
        console.print(f"[bold yellow]INCOMPLETE[/] {pending:,} records pending replay in the "
                      f"audit spill; the {r.records:,} stored records and {r.checkpoints:,} "
                      f"checkpoints {checked}", soft_wrap=True)
        return
    console.print(f"[bold green]ok[/] {r.records:,} records, {r.checkpoints:,} checkpoints "
                  f"{checked}")
    if unsealed:
        console.print(f"{unsealed:,} newest records are chained but not yet covered by a "
                      "checkpoint", soft_wrap=True)


@app.command()
def tail(
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many records")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records")
                      ] = False,
    config: ConfigOption = None,
    store: StoreOption = None,
    json_out: JsonOption = False,
    wide: WideOption = False,
) -> None:
    """Show the newest records."""
    st, _ = _open_store(config, store)

    async def go(s: AuditStore) -> None:
        rows = list(reversed(await s.select(Query(limit=lines, newest_first=True))))
        _print_rows(rows, json_out, wide)
        last = rows[-1].seq if rows else 0
        while follow:
            await asyncio.sleep(1.0)
            rows = await s.select(Query(after_seq=last, limit=1000))
            if rows:
                _print_rows(rows, json_out, wide)
                last = rows[-1].seq

    with suppress(KeyboardInterrupt):
        _with_store(st, go)


@app.command()
def query(
    principal: Principal = None, tenant: Tenant = None, model: Model = None,
    since: Since = None, until: Until = None,
    limit: Annotated[int, typer.Option(min=1, help="Most records to show")] = 100,
    config: ConfigOption = None,
    store: StoreOption = None,
    json_out: JsonOption = False,
    wide: WideOption = False,
) -> None:
    """Find records by principal, tenant, model and time range (oldest first)."""
    _print_selected(_query(principal, tenant, model, since, until, limit=limit),
                    config, store, json_out, wide)


def alerts(
    model: Model = None, principal: Principal = None, tenant: Tenant = None,
    since: Since = None,
    limit: Annotated[int, typer.Option(min=1, help="Most alerts to show")] = 50,
    config: ConfigOption = None,
    store: StoreOption = None,
    json_out: JsonOption = False,
    wide: WideOption = False,
) -> None:
    """List alerts (extraction risk, budgets), newest first, from the audit log."""
    _print_selected(_query(principal, tenant, model, since, None, limit=limit,
                           newest_first=True, action_prefix="alert:"),
                    config, store, json_out, wide)


@app.command()
def export(
    fmt: Annotated[Literal["jsonl"], typer.Option("--format", help="Output format")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File (default: stdout)")
                      ] = None,
    principal: Principal = None, tenant: Tenant = None, model: Model = None,
    since: Since = None, until: Until = None,
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """Write records as JSON lines for a SIEM: {"seq", "hash", "prev_hash", "record"}."""
    st, _ = _open_store(config, store)
    q = _query(principal, tenant, model, since, until)
    show = output is not None and err_console.is_terminal

    async def go(s: AuditStore) -> int:
        total = (await s.head()).seq
        n = 0
        with (output.open("wb") if output else nullcontext(sys.stdout.buffer)) as out, \
                Progress(console=err_console, transient=True) if show else nullcontext() as bar:
            task = bar.add_task("exporting", total=total) if bar else None
            async for rows in s.scan(q):
                _write_lines(out, rows)
                n += len(rows)
                if bar is not None and task is not None:
                    bar.update(task, completed=rows[-1].seq)
        return n

    try:
        n = _with_store(st, go)
    except OSError as exc:
        raise fail(f"{output}: cannot write: {exc.strerror}") from None
    if output is not None:
        err_console.print(f"exported {n:,} records to {output}")


def _write_lines(out: IO[bytes], rows: list[Row]) -> None:
    out.write(b"".join(orjson.dumps(row_view(r)) + b"\n" for r in rows))


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Private key file (mode 0600)")] = Path(
        "audit-checkpoint.pem"),
    public_out: Annotated[Path | None, typer.Option(
        help="Public key file for auditors (default: OUT with .pub.pem)")] = None,
) -> None:
    """Make an Ed25519 key pair that signs audit checkpoints."""
    pub = public_out or out.with_suffix(".pub.pem")
    try:
        kid = generate_keypair(out, pub)
    except (ModelfenceError, OSError) as exc:
        raise fail(str(exc)) from None
    console.print(f"[bold green]created[/] checkpoint key {kid}: private {out}, public {pub}",
                  soft_wrap=True)
    console.print(f"in the config:  audit: {{checkpoint_key_file: {out.resolve()}}}",
                  markup=False, soft_wrap=True)
    console.print(f"to verify:      modelfence audit verify --public-key {pub.resolve()}",
                  markup=False, soft_wrap=True)
