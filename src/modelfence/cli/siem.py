"""`modelfence siem test`: one test finding to every SIEM destination, to see the path work
before an alert needs it.

It sends through the gateway's own sender (same format, TLS and token), from a spool of its
own, so the spools of a gateway (and their waiting alerts) are not touched.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ..config import Settings
from ..kernel.metrics import GatewayMetrics
from ..siem import Siem
from ..siem.finding import test as test_finding
from . import tables
from .common import ConfigOption, console, fail, run_async, settings_from

app = typer.Typer(help="Alerts in the SIEM (the siem: destinations).", no_args_is_help=True)


async def send_test(settings: Settings, timeout_s: float) -> list[tuple[str, str | None]]:
    """Each destination's name and, if it did not take the finding in time, why."""
    with tempfile.TemporaryDirectory(prefix="modelfence-siem-test-") as tmp:
        siem = Siem(settings.siem.model_copy(update={
            "spool_dir": Path(tmp), "retry_max_s": min(1.0, settings.siem.retry_max_s)}),
            GatewayMetrics())
        await siem.start()
        try:
            siem.emit(test_finding())
            took = await asyncio.gather(*(o.flush(timeout_s) for o in siem.outboxes))
            return [(o.name, None if ok else (
                o.last_error or f"not delivered within {timeout_s:g} s"))
                for o, ok in zip(siem.outboxes, took, strict=True)]
        finally:
            await siem.stop(grace_s=0)


@app.command("test")
def test(config: ConfigOption = None,
         timeout: Annotated[float, typer.Option(help="seconds to wait for each destination",
                                                min=0.1)] = 10.0) -> None:
    """Send one informational test finding to each destination; exit 1 if one did not
    take it."""
    path, settings = settings_from(config)
    if not settings.siem.destinations:
        raise fail(f"{path}: no siem destinations configured", 2)
    results = run_async(lambda: send_test(settings, timeout))
    grid = tables.Grid(["destination", "result"], whole=["destination"])
    for name, error in results:
        grid.add_row(name, "delivered" if error is None else f"failed: {error}")
    console.print(grid)
    if any(error is not None for _, error in results):
        raise typer.Exit(1)
