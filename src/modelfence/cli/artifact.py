"""`modelfence artifact sign|verify|encrypt|decrypt|scan|keygen`: model artifact tools.

Exit codes: 0 ok/clean, 1 the artifact is untrusted (signature mismatch, unsafe content),
2 bad input or error (missing file, wrong key, tampered ciphertext, not scanned).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import orjson
import typer

from ..artifacts import errors as aerr
from ..artifacts.keys import KeyProvider, KeyringProvider, Pkcs11Provider
from ..errors import ModelfenceError
from .common import console, fail

T = TypeVar("T")

app = typer.Typer(help="Sign, verify, encrypt, decrypt and scan model artifacts.",
                  no_args_is_help=True)

Module = Annotated[Path | None, typer.Option(help="PKCS#11 module (.so), e.g. libsofthsm2.so")]
Token = Annotated[str | None, typer.Option(help="PKCS#11 token label")]
Pin = Annotated[str | None, typer.Option(envvar="MODELFENCE_PKCS11_PIN",
                                         help="PKCS#11 user PIN", show_default=False)]
KeyLabel = Annotated[str | None, typer.Option(help="Label of the key in the PKCS#11 token")]
Keyring = Annotated[Path | None, typer.Option(help="Local keyring file holding the KEK")]
KeyId = Annotated[str | None, typer.Option(help="Key id in the keyring (default: its default)")]


def _guard(fn: Callable[[], T], untrusted: tuple[type[Exception], ...] = ()) -> T:
    try:
        return fn()
    except untrusted as exc:
        raise fail(str(exc), 1) from None
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    except OSError as exc:
        raise fail(f"{exc.filename or ''}: {exc.strerror}", 2) from None


def _provider(keyring: Path | None, key_id: str | None, module: Path | None,
              token: str | None, pin: str | None, key_label: str | None,
              ) -> KeyProvider:

    if keyring is not None:
        return KeyringProvider(keyring, key_id)
    if module and token and key_label:
        return Pkcs11Provider(module, token_label=token, pin=pin or "", key_label=key_label)
    raise aerr.KeyProviderError("give --keyring or --module/--token/--key-label (and --pin)")


@app.command()
def keygen(keyring: Annotated[Path, typer.Option(help="Keyring file (created with mode 0600)")],
           key_id: Annotated[str, typer.Option(help="Id of the new key")] = "default") -> None:
    """Add a fresh random 256-bit KEK to a local keyring and make it the default."""
    _guard(lambda: KeyringProvider.create(keyring, key_id))
    console.print(f"key {key_id!r} added to {keyring}")


@app.command()
def sign(model: Annotated[Path, typer.Argument(help="Model file or folder")],
         key: Annotated[Path | None, typer.Option(help="ECDSA private key (PEM)")] = None,
         cert: Annotated[Path | None, typer.Option(help="Signing certificate (PEM)")] = None,
         chain: Annotated[list[Path] | None, typer.Option(
             help="Certificate chain file; repeat for more")] = None,
         signature: Annotated[Path | None, typer.Option(
             help="Signature file \\[default: <model>.sig]")] = None,
         module: Module = None, token: Token = None, pin: Pin = None,
         key_label: KeyLabel = None) -> None:
    """Sign a model file or folder (ECDSA key, certificate, or a PKCS#11 token key)."""
    from ..artifacts.signing import Pkcs11Key, sign_model

    def run() -> Path:
        p11 = (Pkcs11Key(module, token, pin or "", key_label)
               if module and token and key_label else None)
        return sign_model(model, signature=signature, private_key=key, certificate=cert,
                          certificate_chain=chain or [], pkcs11_key=p11)

    console.print(f"signed {model} -> {_guard(run)}")


@app.command()
def verify(model: Annotated[Path, typer.Argument(help="Model file or folder")],
           public_key: Annotated[Path | None, typer.Option(help="Public key (PEM)")] = None,
           chain: Annotated[list[Path] | None, typer.Option(
               help="Trusted certificate chain file; repeat for more")] = None,
           signature: Annotated[Path | None, typer.Option(
               help="Signature file \\[default: <model>.sig]")] = None) -> None:
    """Verify a model against its signature; exit 1 if it does not match."""
    from ..artifacts.signing import SignaturePolicy, verify_model

    def run() -> None:
        policy = SignaturePolicy(public_key, tuple(chain or ()), signature)
        for p in [model, *([] if public_key is None else [public_key]), *(chain or [])]:
            if not p.exists():
                raise aerr.ArtifactError(f"{p}: no such file or folder")
        try:
            verify_model(model, policy)
        except aerr.SignatureError as exc:
            if "verification failed" in str(exc):
                raise _Untrusted(str(exc)) from None
            raise

    _guard(run, (_Untrusted,))
    console.print(f"verified {model}")


class _Untrusted(Exception):
    pass


@app.command()
def encrypt(src: Annotated[Path, typer.Argument(help="Model file to encrypt")],
            output: Annotated[Path | None, typer.Option(
                "--output", "-o", help="Encrypted file \\[default: <src>.enc]")] = None,
            keyring: Keyring = None, key_id: KeyId = None, module: Module = None,
            token: Token = None, pin: Pin = None, key_label: KeyLabel = None) -> None:
    """Encrypt a file with AES-256-GCM under a fresh data key wrapped by the KEK."""
    from ..artifacts.envelope import encrypt_file

    dst = output or src.with_name(src.name + ".enc")
    _guard(lambda: encrypt_file(src, dst, _provider(keyring, key_id, module, token, pin,
                                                    key_label)))
    console.print(f"encrypted {src} -> {dst}")


@app.command()
def decrypt(src: Annotated[Path, typer.Argument(help="Encrypted file")],
            output: Annotated[Path, typer.Option("--output", "-o", help="Plaintext file")],
            keyring: Keyring = None, key_id: KeyId = None, module: Module = None,
            token: Token = None, pin: Pin = None, key_label: KeyLabel = None) -> None:
    """Decrypt a file; the output appears only if every chunk authenticated."""
    from ..artifacts.envelope import decrypt_file

    _guard(lambda: decrypt_file(src, output, _provider(keyring, key_id, module, token, pin,
                                                       key_label)))
    console.print(f"decrypted {src} -> {output}")


@app.command()
def scan(path: Annotated[Path, typer.Argument(help="Model file or folder")],
         json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """Scan for unsafe (pickle) content. Exit 0 clean, 1 unsafe, 2 not scanned or error."""
    from ..artifacts.scan import scan_path

    report = _guard(lambda: scan_path(path))
    if json_out:
        console.print_json(orjson.dumps([{
            "path": str(f.path), "format": f.format, "verdict": f.verdict.name.lower(),
            "findings": f.findings, "scanners": f.scanners} for f in report.files]).decode())
    else:
        for f in report.files:
            why = f" ({'; '.join(f.findings)})" if f.findings else ""
            console.print(f"{f.verdict.name.lower():12} {f.format:12} {f.path}{why}",
                          soft_wrap=True)
    raise typer.Exit(int(report.verdict))
