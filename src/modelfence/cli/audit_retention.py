"""`modelfence audit seal|prune`: retention that keeps the audit chain verifiable.

Both commands change what the log holds, so each leaves a chained record of its own
(`admin:seal-audit`, `admin:prune-audit`) naming the operator, like `keys create`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.progress import Progress

from ..audit.checkpoint import Signer, load_public_key, load_signer
from ..audit.retention import Pruned, Sealed, prune, seal
from ..config import AuditSettings
from ..errors import ModelfenceError
from .audit import StoreOption, _open_store, _when
from .audited import admin_trail, cli_record
from .common import ConfigOption, console, fail, run_async, settings_from

ArchiveOption = Annotated[Path | None, typer.Option(
    "--archive", help="Folder of sealed segments (default: audit.retention.archive_dir)",
    show_default=False)]
K = TypeVar("K")


def register(app: typer.Typer) -> None:
    app.command("seal")(seal_command)
    app.command("prune")(prune_command)


def _setup(config: Path | None, store: str | None, archive: Path | None
           ) -> tuple[AuditSettings, Path]:
    """The audit settings to use (the --store URL replaces the sink) and the archive folder."""
    if store is not None and config is None:
        if archive is None:
            raise fail("with --store, give the archive folder with --archive DIR", 2)
        return AuditSettings(sink=store), archive
    _, settings = settings_from(config)
    audit = settings.audit if store is None else settings.audit.model_copy(
        update={"sink": store})
    return audit, archive or audit.retention.archive_dir


def _load_key(path: Path | None, load: Callable[[Path], K], missing: str) -> K:
    """The key at `path` (the option's, else audit.checkpoint_key_file's); exit 2 with
    `missing` when there is none, or with the loader's error when it cannot be read."""
    if path is None:
        raise fail(missing, 2)
    try:
        return load(path)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None


@contextmanager
def _progress(what: str, show: bool) -> Iterator[Callable[[int, int], None]]:
    with Progress(console=console, transient=True) if show else nullcontext() as bar:
        task = bar.add_task(what, total=None) if bar is not None else None

        def update(done: int, total: int) -> None:
            if bar is not None and task is not None:
                bar.update(task, completed=done, total=total)

        yield update


def seal_command(
    through: Annotated[int | None, typer.Option(
        min=1, help="Seal up to this record, the last segment possibly short (default: "
                    "as many whole segments as there are records)")] = None,
    archive: ArchiveOption = None,
    key: Annotated[Path | None, typer.Option(
        help="Ed25519 private key that signs manifests (default: audit.checkpoint_key_file)")
    ] = None,
    segment_records: Annotated[int | None, typer.Option(
        min=1, help="Most records per segment (default: audit.retention.segment_records)")
    ] = None,
    config: ConfigOption = None,
    store: StoreOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Archive the records after the last sealed segment in signed, compressed segments.

    The records must verify first; nothing is deleted (that is `audit prune`).
    """
    audit, folder = _setup(config, store, archive)
    st, _ = _open_store(None, audit.sink)
    signer: Signer = _load_key(
        key or audit.checkpoint_key_file, load_signer,
        "sealing signs manifests: give --key FILE or set "
        "audit.checkpoint_key_file (make one with `modelfence audit keygen`)")
    per = segment_records or audit.retention.segment_records
    show = console.is_terminal and not json_out

    async def go() -> Sealed:
        started = time.perf_counter()
        await st.open()
        try:
            with _progress("sealing", show) as progress:
                done = await seal(st, signer, folder, through=through, segment_records=per,
                                  progress=progress)
        finally:
            await st.close()
        if done.segments:
            await _record(audit, "admin:seal-audit", started, _details(done.segments, folder),
                          f"sealed records {done.segments[0].first_seq}-"
                          f"{done.segments[-1].last_seq}")
        return done

    done = run_async(go)
    out = {"segments": [m.name().removeprefix("segment ") for m in done.segments],
           "records": done.records, "bytes": done.bytes, "archive": str(folder),
           "seconds": round(done.seconds, 3),
           "records_per_s": round(done.records / done.seconds) if done.seconds else 0}
    if json_out:
        console.print_json(orjson.dumps(out).decode())
    elif not done.segments:
        console.print("nothing to seal: fewer new records than one segment holds "
                      "(seal them anyway with --through SEQ)")
    else:
        console.print(f"[bold green]sealed[/] {done.records:,} records in "
                      f"{len(done.segments)} segment(s), {done.bytes:,} bytes "
                      f"({done.bytes / done.records:.0f} bytes/record) in {folder}; "
                      f"{done.seconds:.2f} s ({out['records_per_s']:,} records/s)",
                      soft_wrap=True)


def prune_command(
    through: Annotated[int | None, typer.Option(
        min=1, help="Prune sealed segments that end at or before this record")] = None,
    older_than: Annotated[str | None, typer.Option(
        help="Prune sealed segments whose newest record is older than this: an age like "
             "30d or an ISO 8601 time")] = None,
    archive: ArchiveOption = None,
    public_key: Annotated[Path | None, typer.Option(
        help="Ed25519 public (or private) key that signed the manifests "
             "(default: audit.checkpoint_key_file)")] = None,
    config: ConfigOption = None,
    store: StoreOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Delete sealed records from the store, once their archive verifies.

    Whole segments go, oldest first; the newest record always stays. `audit verify` then
    starts from the last pruned segment's signed hash; `audit verify --archive DIR` checks
    the archive and the store as one chain.
    """
    if through is None and older_than is None:
        raise fail("say what to prune: --through SEQ and/or --older-than AGE (e.g. 30d)", 2)
    older_than_us = _when(older_than, "--older-than")
    audit, folder = _setup(config, store, archive)
    st, _ = _open_store(None, audit.sink)
    public = _load_key(
        public_key or audit.checkpoint_key_file, load_public_key,
        "pruning needs the key that signed the manifests, to verify the "
        "archive: give --public-key FILE or set audit.checkpoint_key_file")
    show = console.is_terminal and not json_out

    async def go() -> Pruned:
        started = time.perf_counter()
        async with admin_trail(audit, "nothing pruned") as trail:  # a prune is always recorded
            await st.open()
            try:
                with _progress("pruning", show) as progress:
                    done = await prune(st, public, folder, through=through,
                                       older_than_us=older_than_us, progress=progress)
            finally:
                await st.close()
            if done.segments:
                reason = (f"pruned records {done.segments[0].first_seq}-"
                          f"{done.segments[-1].last_seq}")
                details = {**_details(done.segments, folder), "rows_deleted": done.rows}
                try:
                    await trail.write(cli_record("admin:prune-audit", target=None,
                                                 details=details, started=started,
                                                 reason=reason))
                except ModelfenceError as exc:
                    raise fail(f"{reason}, but the audit record of it could not be written: "
                               f"{exc}") from None
        return done

    done = run_async(go)
    if json_out:
        console.print_json(orjson.dumps({
            "segments": [m.name().removeprefix("segment ") for m in done.segments],
            "rows_deleted": done.rows, "kept": done.kept, "seconds": round(done.seconds, 3),
            "records_per_s": round(done.rows / done.seconds) if done.seconds else 0,
        }).decode())
        return
    if done.segments:
        console.print(f"[bold green]pruned[/] {done.rows:,} records ("
                      f"{done.segments[0].first_seq}-{done.segments[-1].last_seq}, "
                      f"{len(done.segments)} segment(s)); {done.seconds:.2f} s", soft_wrap=True)
    else:
        console.print("nothing to prune: no sealed segment in the store matches")
    if done.kept:
        console.print(f"kept: {done.kept}", soft_wrap=True)


def _details(segments: list[Any], folder: Path) -> dict[str, Any]:
    return {"first_seq": segments[0].first_seq, "last_seq": segments[-1].last_seq,
            "segments": len(segments), "archive": str(folder),
            "sha256": [m.sha256 for m in segments]}


async def _record(audit: AuditSettings, action: str, started: float, details: dict[str, Any],
                  reason: str) -> None:
    refusal = f"{reason}, but the audit record of it could not be written"
    async with admin_trail(audit, refusal) as trail:
        try:
            await trail.write(cli_record(action, target=None, details=details,
                                         started=started, reason=reason))
        except ModelfenceError as exc:
            raise fail(f"{refusal}: {exc}") from None
