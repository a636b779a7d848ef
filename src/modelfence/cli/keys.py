"""`modelfence keys create|list|revoke`: API keys managed directly in the key store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import orjson
import typer

from ..config import Settings
from ..errors import ModelfenceError
from ..identity.apikeys import ApiKeys, expiry_from, public_view
from ..stores import key_store_from_url
from . import tables
from .audited import admin_trail, cli_record
from .common import (
    ConfigOption,
    console,
    err_console,
    fail,
    parse_assignments,
    run_async,
    settings_from,
)

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _keys(config: Path | None) -> tuple[ApiKeys, Settings]:
    _, settings = settings_from(config)
    try:
        return ApiKeys(key_store_from_url(settings.stores.keys), settings.server_secret()), settings
    except Exception as exc:
        raise fail(str(exc), 2) from None


@app.command()
def create(
    principal: Annotated[str, typer.Option(help="Who the key belongs to (user or service id)")],
    tenant: Annotated[str, typer.Option(help="The principal's organisation or team")],
    model: Annotated[list[str] | None, typer.Option("--model", "-m",
                     help="A model the key may use; repeat for more, '*' for all")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", "-g",
                     help="A group the principal belongs to; repeat for more")] = None,
    expires_in: Annotated[str | None, typer.Option(help="Lifetime, e.g. 12h, 30d")] = None,
    description: Annotated[str, typer.Option(help="A note shown in lists")] = "",
    clearance: Annotated[int | None, typer.Option(
        help="Clearance level for policy (principal.clearance)")] = None,
    purpose: Annotated[str | None, typer.Option(
        help="Grant purpose: requests must declare it in X-Modelfence-Purpose")] = None,
    network: Annotated[list[str] | None, typer.Option(
        "--network", help="CIDR the key may be used from; repeat for more")] = None,
    attr: Annotated[list[str] | None, typer.Option(
        "--attr", help="Extra principal attribute NAME=VALUE for policy; repeat for more")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Mint a key. It is printed once and stored only as a digest: copy it now.

    The audit log records who minted it and for whom; a key the log cannot record is revoked
    at once and never printed.
    """
    keys, settings = _keys(config)
    attributes = parse_assignments(attr or [], "--attr")
    if clearance is not None:
        attributes["clearance"] = clearance
    if purpose:
        attributes["purpose"] = purpose
    if network:
        attributes["networks"] = network

    async def go() -> tuple[str, dict[str, object]]:
        started = time.perf_counter()
        async with admin_trail(settings.audit, "no key created") as trail:
            await keys.store.open()
            try:
                new = await keys.create(principal=principal, tenant=tenant, groups=group or [],
                                        models=model or [],
                                        expires_at=expiry_from(expires_in, None),
                                        description=description, attributes=attributes)
                view = public_view(new.record)
                try:
                    await trail.write(cli_record("admin:create-key", target=new.record.key_id,
                                                 details=view, started=started))
                except ModelfenceError as exc:
                    await keys.revoke(new.record.key_id)
                    raise fail(f"key {new.record.key_id} revoked unused: its audit record "
                               f"could not be written: {exc}") from None
                return new.token, view
            finally:
                await keys.store.close()

    token, view = run_async(go)
    if json_out:
        console.print_json(orjson.dumps({"key": token, **view}).decode())
        return
    console.print(f"[bold green]created key {view['key_id']}[/] for {principal} ({tenant})")
    console.print(f"models: {', '.join(model or []) or '(none)'}")
    console.print(f"expires: {view['expires_at'] or 'never'}")
    console.print("\n[bold]API key (shown once, store it safely):[/]")
    console.print(token, soft_wrap=True)
    if not model:
        err_console.print("[yellow]warning:[/] the key grants no model; add --model NAME")


@app.command("list")
def list_keys(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    wide: Annotated[bool, typer.Option(
        "--wide", "-w", help="Also the groups and the expiry's time of day (wider than 80 "
                             "columns)")] = False,
    config: ConfigOption = None,
) -> None:
    """List keys (ids and attributes; never the keys themselves)."""
    keys, _ = _keys(config)

    async def go() -> list[dict[str, object]]:
        await keys.store.open()
        try:
            return [public_view(r) for r in await keys.records()]
        finally:
            await keys.store.close()

    rows = run_async(go)
    if json_out:
        console.print_json(orjson.dumps({"keys": rows}).decode())
        return
    table = tables.Grid(("principal", "tenant", *(["groups"] if wide else []), "models",
                          "expires", "status", "key id"), whole=("expires", "status", "key id"))
    for r in rows:
        expires = (str(r["expires_at"])[:16 if wide else 10].replace("T", " ")
                   if r["expires_at"] else "never")
        groups = [",".join(r["groups"])] if wide else []  # type: ignore[arg-type]
        table.add_row(str(r["principal"]), str(r["tenant"]), *groups,
                      ",".join(r["models"]),  # type: ignore[arg-type]
                      expires, str(r["status"]), str(r["key_id"]))
    console.print(table)


@app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by `keys list`")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key; gateways refuse it within their key cache time (0.5 s by default).

    The revocation stands even if the audit log cannot record it (exit 1 says so).
    """
    keys, settings = _keys(config)

    async def go() -> bool:
        started = time.perf_counter()
        await keys.store.open()  # revoke first: a trail that is down must not delay it
        try:
            if not await keys.revoke(key_id):
                return False
            view = next((public_view(r) for r in await keys.records() if r.key_id == key_id),
                        None)
        finally:
            await keys.store.close()
        refusal = f"{key_id} is revoked, but its audit record could not be written"
        async with admin_trail(settings.audit, refusal) as trail:
            try:
                await trail.write(cli_record("admin:revoke-key", target=key_id, details=view,
                                             started=started))
            except ModelfenceError as exc:
                raise fail(f"{refusal}: {exc}") from None
        return True

    if not run_async(go):
        raise fail(f"no key with id {key_id!r}")
    console.print(f"[bold]revoked[/] {key_id}")
