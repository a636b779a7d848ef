"""What every command shares: the console, the --config option, errors as one line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..config import Settings, default_config_path, load_settings
from ..errors import ModelfenceError
from ..extras import skops_io

T = TypeVar("T")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Path to modelfence.yaml \\[env: MODELFENCE_CONFIG]",
                 show_default=False),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as written (rich would read "modelfence[local]" as a markup tag and drop
    it) after a red "error:", and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def settings_from(config: Path | None) -> tuple[Path, Settings]:
    path = config or default_config_path()
    try:
        return path, load_settings(path)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run library coroutines; library errors become one red line, not a traceback."""
    try:
        return asyncio.run(_call(fn))
    except ModelfenceError as exc:
        raise fail(str(exc)) from None


async def _call(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


def parse_assignments(items: list[str], option: str) -> dict[str, Any]:
    """NAME=VALUE pairs; integers and true/false become numbers and booleans."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise fail(f"{option} {item!r}: expected NAME=VALUE", 2)
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        elif raw.lstrip("-").isdigit():
            value = int(raw)
        out[name.strip()] = value
    return out


def check_skops_trust(target: str | Path, trusted: Sequence[str], *, what: str,
                      remedy: str = "") -> None:
    """Refuse a .skops file with types nobody trusted yet, naming that file and the flags that
    would trust them (the loader's own message names a gateway model's config key instead).

    Other targets (URLs, .onnx files, `demo`) pass untouched: their loaders say what is wrong.
    """
    path = Path(target)
    if path.suffix.lower() != ".skops" or not path.is_file():
        return
    try:
        untrusted = skops_io().get_untrusted_types(file=path)
    except Exception as exc:
        raise fail(f"{what} {path}: cannot read it as a skops file "
                   f"({exc.__class__.__name__})", 2) from None
    refused = sorted(set(untrusted) - set(trusted))
    if refused:
        flags = " ".join(f"--trust {t}" for t in refused)
        raise fail(f"{what} {path} contains types skops does not trust: {', '.join(refused)}; "
                   f"review them, then pass {remedy or flags}", 2)
