"""Entry point of the `modelfence` command."""

from __future__ import annotations

import logging
import socket
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..errors import ModelfenceError
from . import (
    artifact,
    audit,
    audit_retention,
    demo,
    example,
    keys,
    llm,
    monitor,
    policy,
    redteam,
    shaping,
    siem,
    watermark,
)
from .common import ConfigOption, console, fail, settings_from

app = typer.Typer(
    name="modelfence",
    help="Protect models served over an API from theft: gateway, keys, policy, quotas, audit "
         "and a red-team simulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
audit_retention.register(audit.app)
app.add_typer(policy.app, name="policy")
app.add_typer(monitor.app, name="monitor")
app.add_typer(llm.app, name="llm")
app.add_typer(shaping.app, name="shaping")
app.add_typer(artifact.app, name="artifact")
app.add_typer(siem.app, name="siem")
config_app = typer.Typer(help="Inspect configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.command("demo")(demo.demo)
app.command("example")(example.example)
app.command("attack")(redteam.attack)
app.command("assess")(redteam.assess)
app.command("alerts")(audit.alerts)
watermark.register(app)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: server.host)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: server.port)")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
    admin_listen: Annotated[str | None, typer.Option(
        help="Admin API and metrics: HOST:PORT or unix:/PATH (default: server.admin_listen)"
    )] = None,
) -> None:
    """Start the gateway with a configuration file."""
    path, settings = settings_from(config)
    start_gateway(path, settings.server.host if host is None else host,
                  settings.server.port if port is None else port,
                  workers or settings.server.workers, settings.server.access_log, log_level,
                  admin_listen=admin_listen)


def start_gateway(path: Path, host: str, port: int, workers: int, access_log: bool,
                  log_level: str, *, admin_listen: str | None = None) -> None:
    """Check everything can start (models load, stores answer), then hand over to granian."""
    from ..config import export_admin_listen, load_settings
    from ..gateway.server import run_server

    preflight(path)
    ensure_port_free(host, port)
    server = load_settings(path).server
    if server.grpc_port is not None:  # each worker binds it with SO_REUSEPORT: none else may
        ensure_port_free(server.host, server.grpc_port, hint="pick another server.grpc_port")
    try:
        if admin_listen is not None:
            export_admin_listen(admin_listen)
        run_server(path, host=host, port=port, workers=workers, access_log=access_log,
                   log_level=log_level.upper())
    except ModelfenceError as exc:  # the admin address cannot be had
        raise fail(str(exc), 2) from None


def preflight(path: Path) -> None:
    """Build the app a worker builds and open its gateway once, so a bad model, store or admin
    token, or a feature whose extra is not installed (similarity screening, distillation),
    fails here in one line (not in each worker, with a traceback).

    On Linux the check runs in a forked child: what it loads (the models, and the monitor's
    whole book, some 5 GB with 100,000 callers) leaves with the child instead of staying in
    this process while the workers run. Forked, not spawned, so the child sees this
    process's modules as they are."""
    if sys.platform != "linux":
        message = _check(path)
    else:
        message = _check_in_child(path)
    if message is not None:
        raise fail(message, 2)


def _check(path: Path) -> str | None:
    """The check, here: None when the gateway can start, else the one-line reason."""
    import asyncio

    from ..config import load_settings
    from ..gateway.app import build_app, build_gateway
    from ..llm.local import require_extra as require_local_llm_extra

    async def check() -> None:
        settings = load_settings(path)
        settings.admin_token()  # each worker reads them again, but a bad one fails here
        settings.admin_token_sha256s()
        gw = build_gateway(settings)
        # every route and guard as a worker makes them; nothing runs until the app's lifespan
        build_app(settings, gateway=gw)
        # local LLMs are loaded at their first request: their extra is checked now
        require_local_llm_extra(settings.llm.models)
        try:
            await gw.start(send_alerts=False)  # the workers send the alerts it would raise
        finally:
            await gw.stop()

    logging.getLogger("modelfence").setLevel(logging.WARNING)
    try:
        asyncio.run(check())
    except ModelfenceError as exc:
        return str(exc)
    return None


def _check_in_child(path: Path) -> str | None:
    """`_check` in a forked child; its answer comes back through a pipe."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_check, args=(path, theirs), name="modelfence-preflight")
    child.start()
    theirs.close()
    try:
        try:
            answer: str | None = ours.recv()
        except EOFError:  # it died without answering (its traceback, if any, is above)
            child.join()
            return f"the start-up check stopped with exit code {child.exitcode}"
        child.join()
        return answer
    finally:
        ours.close()
        if child.is_alive():  # interrupted while waiting
            child.kill()
            child.join()


def _child_check(path: Path, answer: Connection) -> None:
    answer.send(_check(path))
    answer.close()


def ensure_port_free(host: str, port: int, *, hint: str = "pick another with --port") -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}", 2) from None


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate a configuration file and load its models, without serving."""
    path, settings = settings_from(config)
    preflight(path)
    console.print(f"[bold green]ok[/] {path}: {len(settings.models)} model(s): "
                  + ", ".join(m.name for m in settings.models))


@app.command()
def version() -> None:
    """Print the modelfence version."""
    console.print(__version__)


def main() -> None:
    app()
