"""`modelfence example NAME`: run one of the configurations in examples/ on this machine.

Secrets, keys, the database role, model files and stand-in upstream servers are made in a
workspace (`example_world.prepare`); then a key is minted, a curl printed, and the gateway
served, as `modelfence demo` does for the demo.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..config import default_home, load_settings
from ..errors import ModelfenceError
from .common import console, fail, run_async

if TYPE_CHECKING:  # the world's making (numpy, aiohttp) is imported when a command runs
    from .example_world import World

PRINCIPAL = "example"


def example(
    name: Annotated[str, typer.Argument(
        help="An example config's name: examples/NAME.yaml (e.g. local-model)",
        show_default=False)],
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Port to serve on \\[default: the example's server.port]",
        show_default=False)
    ] = None,
    admin_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Admin API and metrics port, on 127.0.0.1 \\[default: the example's "
             "server.admin_listen]", show_default=False)] = None,
    host: Annotated[str, typer.Option(
        help="Address to bind (the examples say 0.0.0.0 for a deployment)")] = "127.0.0.1",
    workers: Annotated[int | None, typer.Option(
        help="Worker processes \\[default: the example's server.workers]", show_default=False)
    ] = None,
    folder: Annotated[Path | None, typer.Option(
        "--dir", help="Workspace \\[default: ~/.modelfence/examples/NAME, or "
                      "$MODELFENCE_HOME/examples/NAME]", show_default=False)] = None,
    examples: Annotated[Path | None, typer.Option(
        help="Folder of the example configs \\[default: ./examples, else the source tree's]",
        show_default=False)] = None,
    postgres_admin: Annotated[str | None, typer.Option(
        envvar="MODELFENCE_EXAMPLE_PG_ADMIN", show_envvar=True,
        help="A PostgreSQL URL of a role that may create roles and databases, for examples "
             "that use PostgreSQL \\[default: postgresql://postgres@HOST:PORT/postgres of the "
             "example's own URL]", show_default=False)] = None,
    prepare_only: Annotated[bool, typer.Option(
        "--prepare-only", help="Make the workspace and mint a key, but do not serve")] = False,
) -> None:
    """Run an example config with its secrets, keys, database role and model made for it."""
    from .example_world import prepare

    source = _example_file(examples, name)
    workspace = folder or default_home() / "examples" / name
    try:
        with console.status(f"preparing {source} in {workspace}…"):
            world = prepare(source, workspace, postgres_admin=postgres_admin)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    os.environ.update(world.env)  # ${...} in the config; the gateway's workers inherit it
    for server in world.stand_ins:
        server.start()
    token = run_async(lambda: _mint(world))
    settings = load_settings(world.config)
    serve_port = port or settings.server.port
    _print(world, token, host, serve_port)
    if prepare_only:
        return
    from .main import start_gateway

    console.print("serving; press Ctrl+C to stop")
    start_gateway(world.config, host, serve_port, workers or settings.server.workers,
                  settings.server.access_log, "INFO",
                  admin_listen=None if admin_port is None else f"127.0.0.1:{admin_port}")


def _example_file(examples: Path | None, name: str) -> Path:
    candidates = [examples] if examples else [
        Path("examples"), Path(__file__).resolve().parents[3] / "examples"]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise fail("no examples folder here; run from the source tree or pass --examples DIR",
                   2)
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise fail(f"no example {name!r} in {folder}; the examples: {known}", 2)
    return path


async def _mint(world: World) -> str:
    """A key for the example's principal, granted every model of the example."""
    from ..identity.apikeys import ApiKeys
    from ..stores import key_store_from_url

    settings = load_settings(world.config)
    keys = ApiKeys(key_store_from_url(settings.stores.keys), settings.server_secret())
    await keys.store.open()
    try:
        new = await keys.create(principal=PRINCIPAL, tenant=PRINCIPAL,
                                models=world.models, description="modelfence example key")
        return new.token
    finally:
        await keys.store.close()


def _print(world: World, token: str, host: str, port: int) -> None:
    console.rule(f"[bold green]modelfence example {world.name}")
    console.print(f"Workspace: {world.folder}", soft_wrap=True, markup=False)
    console.print(f"Config:    {world.config}", soft_wrap=True, markup=False)
    for line in world.made:
        console.print(f"  made {line}", soft_wrap=True, markup=False)
    console.print(f"\n[bold]Key[/] for principal {PRINCIPAL!r} "
                  f"(models: {', '.join(world.models)}):")
    console.print(token, soft_wrap=True, markup=False)
    if world.request is not None:
        path, body = world.request
        address = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        curl = (f"curl -s http://{address}:{port}{path} -H 'Authorization: Bearer {token}' "
                f"-H 'Content-Type: application/json' -d @{shlex.quote(str(body))}")
        console.print("\n[bold]Ask it[/] (in another terminal):")
        console.print(curl, soft_wrap=True, markup=False)
    console.rule()
