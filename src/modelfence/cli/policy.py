"""`modelfence policy validate|check`: see what the policy set says before a caller does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer

from ..config import ModelAttributes, Settings
from ..errors import ModelfenceError
from ..identity.apikeys import check_attributes
from ..identity.principal import Principal
from ..policy import Facts, PolicyEngine, cedar_request, engine_from_settings
from ..stores import key_store_from_url
from . import tables
from .common import ConfigOption, console, fail, parse_assignments, run_async, settings_from

app = typer.Typer(help="Validate Cedar policies and ask them for decisions.",
                  no_args_is_help=True)

_ACTIONS = ("infer", "metadata", "chat", "completion", "embed", "artifact-download")


def _engine(settings: Settings) -> PolicyEngine:
    engine = engine_from_settings(settings)
    try:
        engine.load()
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    return engine


@app.command()
def validate(config: ConfigOption = None) -> None:
    """Parse and validate the policy files against the schema; list the policies."""
    _, settings = settings_from(config)
    bundle = _engine(settings).bundle
    table = tables.Grid(("policy", "file", "line"), right=("line",))
    for st in bundle.statements:
        table.add_row(st.label, st.file, str(st.line))
    console.print(table)
    console.print(f"[bold green]ok[/] {len(bundle.statements)} policies valid")


@app.command()
def check(
    model: Annotated[str, typer.Option(help="The model (resource) asked for")],
    action: Annotated[str, typer.Option(help=f"One of: {', '.join(_ACTIONS)}")] = "infer",
    principal: Annotated[str | None, typer.Option(help="Principal id")] = None,
    key: Annotated[str | None, typer.Option(
        help="Take the principal and its grants from this key id in the key store")] = None,
    tenant: Annotated[str, typer.Option(help="Principal's tenant")] = "default",
    group: Annotated[list[str] | None, typer.Option("--group", help="Repeat for more")] = None,
    grant: Annotated[list[str] | None, typer.Option(
        "--grant", help="A model the principal's key grants; repeat for more")] = None,
    attr: Annotated[list[str] | None, typer.Option(
        "--attr", help="Principal attribute NAME=VALUE (clearance=2, purpose=x, "
        "networks=10.0.0.0/8,192.168.0.0/16)")] = None,
    context: Annotated[list[str] | None, typer.Option(
        "--context", help="source=IP, purpose=TEXT, risk=0.9, queries=N, time=ISO-8601, "
        "screen=extraction, screen_score=0.9, screen_failed=true")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Print the decision and the policies that determined it (exit 1 when denied)."""
    if action not in _ACTIONS:
        raise fail(f"--action {action!r}: use one of {', '.join(_ACTIONS)}", 2)
    _, settings = settings_from(config)
    engine = _engine(settings)
    who = _principal(settings, key, principal, tenant, group or [], grant or [], attr or [])
    facts = _facts(parse_assignments(context or [], "--context"))
    if isinstance(who, _Refused):  # the gateway answers 401 before any policy is asked
        _print_refused(who, action, model, json_out)
        raise typer.Exit(1)
    configured = settings.model(model)
    llm = next((m for m in settings.llm.models if m.name == model), None)
    attributes = (configured.attributes if configured else
                  ModelAttributes(**llm.attributes.model_dump()) if llm else ModelAttributes())
    request, entities = cedar_request(who, action, model, attributes, facts)
    try:
        verdict = engine.decide(request, entities)
    except ModelfenceError as exc:
        raise fail(str(exc)) from None
    where = {st.label: f"{st.file}:{st.line}" for st in engine.bundle.statements}
    if json_out:
        console.print_json(orjson.dumps({
            "decision": "allow" if verdict.allowed else "deny",
            "policies": [{"id": p, "at": where.get(p)} for p in verdict.policies],
            "request": {**request, "context": orjson.loads(request["context"])}}).decode())
    else:
        word = "[bold green]ALLOW[/]" if verdict.allowed else "[bold red]DENY[/]"
        console.print(f"{word} {who.id} ({who.tenant}) → {action} on {model}"
                      + ("" if configured else "  [yellow](model not in the config)[/]"))
        if verdict.policies:
            kind = "permitted by" if verdict.allowed else "forbidden by"
            for p in verdict.policies:
                console.print(f"  {kind} {p}  [dim]{where.get(p, '')}[/]")
        else:
            console.print("  no policy permits it (deny by default)")
    if not verdict.allowed:
        raise typer.Exit(1)


@dataclass(frozen=True)
class _Refused:
    """A key the gateway would not accept: no policy is asked, as in the gateway."""

    key_id: str
    principal: str
    tenant: str
    reason: str  # revoked_key or expired_key, as in the gateway's audit record
    why: str


def _print_refused(who: _Refused, action: str, model: str, json_out: bool) -> None:
    if json_out:
        console.print_json(orjson.dumps({
            "decision": "deny", "reason": who.reason, "policies": [],
            "key": {"id": who.key_id, "principal": who.principal, "tenant": who.tenant}}
        ).decode())
        return
    console.print(f"[bold red]DENY[/] {who.principal} ({who.tenant}) → {action} on {model}")
    console.print(f"  key {who.key_id} {who.why}: the gateway answers 401 before policy")


def _refusal(record: Any, now: datetime) -> _Refused | None:
    """Why the gateway refuses this key record (as `ApiKeys.authenticate`), or None."""
    if record.revoked_at is not None:
        return _Refused(record.key_id, record.principal, record.tenant, "revoked_key",
                        f"was revoked at {record.revoked_at.isoformat(timespec='seconds')}")
    if record.expires_at is not None and record.expires_at <= now:
        return _Refused(record.key_id, record.principal, record.tenant, "expired_key",
                        f"expired at {record.expires_at.isoformat(timespec='seconds')}")
    return None


def _principal(settings: Settings, key: str | None, principal: str | None, tenant: str,
               groups: list[str], grants: list[str], attrs: list[str]) -> Principal | _Refused:
    extra = parse_assignments(attrs, "--attr")
    if isinstance(extra.get("networks"), str):
        extra["networks"] = [n.strip() for n in extra["networks"].split(",")]
    try:
        extra = check_attributes(extra)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    if key:
        record = run_async(lambda: _load_key(settings, key))
        if record is None:
            raise fail(f"no key with id {key!r}")
        refused = _refusal(record, datetime.now(UTC))
        if refused is not None:
            return refused
        return Principal(id=record.principal, tenant=record.tenant, groups=record.groups,
                         models=record.models, key_id=record.key_id,
                         attributes={**record.attributes, **extra})
    if not principal:
        raise fail("give --principal ID (with --tenant, --group, --grant, --attr) or --key ID", 2)
    return Principal(id=principal, tenant=tenant, groups=tuple(groups), models=tuple(grants),
                     attributes=extra)


async def _load_key(settings: Settings, key_id: str) -> Any:
    store = key_store_from_url(settings.stores.keys)
    await store.open()
    try:
        return await store.get(key_id)
    finally:
        await store.close()


def _facts(ctx: dict[str, Any]) -> Facts:
    known = ("source", "purpose", "risk", "queries", "time", "screen", "screen_score",
             "screen_failed")
    unknown = set(ctx) - set(known)
    if unknown:
        raise fail(f"--context: unknown fact(s) {', '.join(sorted(unknown))}; "
                   f"use {', '.join(known)}", 2)
    try:
        now = datetime.fromisoformat(str(ctx["time"])).timestamp() if "time" in ctx else None
        return Facts(source=str(ctx.get("source", "127.0.0.1")),
                     purpose=str(ctx.get("purpose", "")),
                     risk=float(ctx.get("risk", 0.0)), queries=int(ctx.get("queries", 0)),
                     screen=str(ctx.get("screen", "")),
                     screen_score=float(ctx.get("screen_score", 0.0)),
                     screen_failed=str(ctx.get("screen_failed", "false")).lower()
                     in ("true", "1", "yes"),
                     now=now)
    except ValueError as exc:
        raise fail(f"--context: {exc}", 2) from None
