"""`modelfence evidence verify|timestamp`: check a signed ownership evidence bundle; add an
RFC 3161 timestamp to one.

`verify` exits 0 when the signature holds and the file is byte for byte its canonical
(RFC 8785) form, 1 when anything in it was edited or damaged (or a timestamp asked to be
checked does not hold), 2 on bad input (not a bundle, unreadable key or certificate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..errors import ModelfenceError
from .common import console, fail

evidence_app = typer.Typer(help="Check signed ownership evidence bundles.", no_args_is_help=True)

BundleArg = Annotated[Path, typer.Argument(metavar="BUNDLE", help="The evidence .json file")]


@evidence_app.command("verify")
def evidence_verify(
    bundle_path: BundleArg,
    public_key: Annotated[Path, typer.Option(
        help="Ed25519 public (or private) key PEM of the signer", show_default=False)],
    tsa_cert: Annotated[Path | None, typer.Option(
        help="PEM certificate of the time-stamping authority you trust, or of the CA that "
             "issued its certificate: check the bundle's RFC 3161 timestamp against it "
             "(without it the time is shown, not checked)",
        show_default=False)] = None,
) -> None:
    """Check a bundle: its signature, its exact bytes, and its timestamp (with --tsa-cert).
    Exit 1 if anything in it was edited."""
    from ..audit.checkpoint import load_public_key
    from ..watermark import bundle, timestamp

    try:
        public = load_public_key(public_key)
        certs = (None if tsa_cert is None else timestamp.load_certificates(
            _read(tsa_cert, "TSA certificate"), str(tsa_cert)))
    except ModelfenceError as exc:
        raise fail(escape(str(exc)), 2) from None
    data, doc = _open_bundle(bundle_path)
    problem = bundle.problem(doc, public) or bundle.file_problem(data, doc)
    if problem is not None:
        raise fail(escape(problem), 1)
    if certs is None:
        stamp = timestamp.describe(doc)
        if "token" in (doc.get("timestamp") or {}):
            stamp += " (token not checked: give --tsa-cert)"
    else:
        try:
            checked = timestamp.check(doc, certs)
        except timestamp.TimestampError as exc:
            raise fail(f"timestamp: {escape(str(exc))}", 1) from None
        stamp = (f"timestamp valid: {checked.time} by {checked.signer} (serial "
                 f"{checked.serial}, policy {checked.policy})")
    verdict = doc.get("verdict")
    summary = verdict.get("summary", "-") if isinstance(verdict, dict) else "-"
    console.print(f"[bold green]ok[/] {escape(str(bundle_path))}: signature valid (key "
                  f"{escape(str(doc['signature']['key_id']))}), canonical bytes; "
                  f"{escape(stamp)}; verdict: {escape(str(summary))}", soft_wrap=True)


@evidence_app.command("timestamp")
def evidence_timestamp(
    bundle_path: BundleArg,
    timestamp_url: Annotated[str, typer.Option(
        help="URL of an RFC 3161 time-stamping authority", show_default=False)],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the TSA")] = 10.0,
) -> None:
    """Add an RFC 3161 timestamp (over the signature) to a signed bundle, in place, and
    render its HTML again. On failure the bundle is left as it was (exit 1)."""
    from ..watermark import bundle, timestamp

    data, doc = _open_bundle(bundle_path)
    if bundle.file_problem(data, doc) is not None:
        raise fail(escape(f"{bundle_path}: {bundle.NOT_CANONICAL}; not timestamped"), 1)
    try:
        stamped = timestamp.stamp(doc, timestamp_url, timeout=timeout)
    except ModelfenceError as exc:
        raise fail(f"{escape(str(exc))}; {escape(str(bundle_path))} was left as it was", 1) \
            from None
    folder, stem = bundle_path.parent, bundle_path.stem
    bundle.write(stamped, folder, stem)
    console.print(f"[bold green]ok[/] {escape(str(bundle_path))}: "
                  f"{escape(timestamp.describe(stamped))}; {escape(str(folder / stem))}.html "
                  "rendered again", soft_wrap=True)


def _read(path: Path, what: str) -> bytes:
    from ..errors import ConfigurationError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read {what}: {exc.strerror}") from None


def _open_bundle(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The bundle's bytes and content: exit 1 when it is a damaged bundle, 2 when it is not
    a bundle (or cannot be read)."""
    from ..watermark import bundle

    try:
        data = bundle.read_bytes(path)
        return data, bundle.parse(data, str(path))
    except bundle.Damaged as exc:
        raise fail(escape(str(exc)), 1) from None
    except ModelfenceError as exc:
        raise fail(escape(str(exc)), 2) from None
