"""`modelfence evidence verify`: check a signed ownership evidence bundle.

Exit 0 when the signature holds, 1 when anything in the bundle was edited, 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import ModelfenceError
from .common import console, fail

evidence_app = typer.Typer(help="Check signed ownership evidence bundles.", no_args_is_help=True)


@evidence_app.command("verify")
def evidence_verify(
    bundle_path: Annotated[Path, typer.Argument(metavar="BUNDLE",
                                                help="The evidence .json file")],
    public_key: Annotated[Path, typer.Option(
        help="Ed25519 public (or private) key PEM of the signer", show_default=False)],
) -> None:
    """Check a bundle's signature: ok, or exit 1 if anything in it was edited."""
    from ..audit.checkpoint import load_public_key
    from ..watermark import bundle

    try:
        public = load_public_key(public_key)
        doc = bundle.read(bundle_path)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    problem = bundle.problem(doc, public)
    if problem is not None:
        raise fail(problem, 1)
    verdict = doc.get("verdict")
    summary = verdict.get("summary", "-") if isinstance(verdict, dict) else "-"
    console.print(f"[bold green]ok[/] {escape(str(bundle_path))}: signature valid (key "
                  f"{doc['signature']['key_id']}); verdict: {escape(str(summary))}",
                  soft_wrap=True)
