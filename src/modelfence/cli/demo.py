"""`modelfence demo`: train (once), configure (once), mint a key, print a curl, serve."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .. import demo as demo_lib
from ..config import default_home
from ..errors import ModelfenceError
from .common import console, fail, run_async


def demo(
    port: Annotated[int, typer.Option(help="Port to serve on")] = 8000,
    admin_port: Annotated[int | None, typer.Option(
        help="Admin API and metrics port, on 127.0.0.1 \\[default: port + 1]")] = None,
    home: Annotated[Path | None, typer.Option(
        help="Demo folder \\[default: ~/.modelfence/demo, or $MODELFENCE_HOME/demo]")] = None,
    reset: Annotated[bool, typer.Option(
        "--reset", help="Forget earlier runs first: callers' risk, the audit log and its "
                        "alerts, the key store, the config (the trained model stays)")] = False,
) -> None:
    """Serve a demo digits classifier behind the gateway on 127.0.0.1."""
    from .main import start_gateway

    folder = home or default_home() / "demo"
    try:
        demo_lib.require_extra()
    except ModelfenceError as exc:
        raise fail(f"{exc} (in a source checkout: make demo)", 2) from None
    if reset:
        cleared = demo_lib.reset(folder) if folder.is_dir() else []
        console.print(f"reset {folder}: " + (f"removed {', '.join(cleared)}; kept the model, "
                      "its summary, the secret and the checkpoint key" if cleared else
                      "nothing to clear"), soft_wrap=True, markup=False)
    try:
        with console.status("preparing the demo model and configuration…"):
            files = demo_lib.prepare(folder)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    if files.trained_now:
        console.print(f"trained a digits classifier (test accuracy {files.accuracy:.3f}) → "
                      f"{files.model}", markup=False)
    else:
        console.print(f"reusing {files.model} and {files.config}", markup=False)
    token = run_async(lambda: demo_lib.mint_demo_key(files.config))
    url = f"http://127.0.0.1:{port}/v2/models/{demo_lib.MODEL_NAME}/infer"
    curl = (f"curl -s {url} -H 'Authorization: Bearer {token}' "
            f"-H 'Content-Type: application/json' -d @{shlex.quote(str(files.sample_request))}")
    metadata = (f"curl -s http://127.0.0.1:{port}/v2/models/{demo_lib.MODEL_NAME} "
                f"-H 'Authorization: Bearer {token}'")
    console.rule("[bold green]modelfence demo")
    console.print("[bold]Demo key[/] (shown once; every run mints a new one and revokes the last):")
    console.print(token, soft_wrap=True)
    console.print("\n[bold]Ask the model[/] (paste in another terminal):")
    console.print(curl, soft_wrap=True, markup=False)
    console.print("\n[bold]Model metadata:[/]")
    console.print(metadata, soft_wrap=True, markup=False)
    admin = f"http://127.0.0.1:{admin_port or port + 1}"
    console.print(f"\nAdmin API and metrics (a listener of their own): {admin}/metrics   "
                  f"{admin}/admin/ready", soft_wrap=True, markup=False)
    console.print(f"Config: {files.config}", soft_wrap=True, markup=False)
    console.print(f"Audit:   {_self_command()} audit tail --config {files.config}   "
                  f"(and: audit verify)", soft_wrap=True, markup=False)
    _warn_if_degraded(files.config)
    console.rule()
    console.print("serving; press Ctrl+C to stop")
    start_gateway(files.config, "127.0.0.1", port, 1, False, "INFO",
                  admin_listen=f"127.0.0.1:{admin_port or port + 1}")


def _self_command() -> str:
    """`modelfence` if that is what the shell finds, else the full path of this one."""
    here = Path(sys.executable).parent / "modelfence"
    return "modelfence" if shutil.which("modelfence") == str(here) else str(here)


def _warn_if_degraded(config: Path) -> None:
    """Earlier runs' risk is restored at start: say so when it shapes the first answer."""
    try:
        remembered = demo_lib.remembered_risk(config)
    except ModelfenceError as exc:  # an old snapshot: the gateway starts empty and logs it
        console.print(f"[yellow]note:[/] earlier runs' monitor state is not readable "
                      f"({escape(str(exc))})")
        return
    if remembered is None or not remembered.degraded:
        return
    console.print(
        f"[yellow]note:[/] the demo caller's risk is {remembered.risk:.2f}, remembered from "
        f"earlier runs: its answers start in band {remembered.band!r} "
        f"({remembered.defense}). [bold]{_self_command()} demo --reset[/] forgets it.",
        soft_wrap=True)
