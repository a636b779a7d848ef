"""Guarded loading: the checks the gateway runs before a model file is loaded."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .envelope import MAGIC, decrypt_to_bytes
from .errors import ArtifactError, NotScanned
from .keys import KeyProvider
from .scan import Verdict, scan_path
from .signing import SignaturePolicy, verify_model


def check_artifact(path: str | Path, *, require_signature: SignaturePolicy | None = None,
                   require_scan: bool = True,
                   decrypt_with: KeyProvider | None = None) -> bytes | Path:
    """Verify, decrypt and scan an artifact; returns the plaintext bytes or the checked path.

    Order: the signature covers the file as stored (ciphertext when encrypted), so it is
    checked first; then an encrypted file is decrypted into memory only (never to disk)
    and the plaintext is scanned. Raises an `ArtifactError` with a one-line reason.
    """
    path = Path(path)
    if require_signature is not None:
        verify_model(path, require_signature)
    if decrypt_with is None:
        if path.is_file() and _is_encrypted(path):
            raise ArtifactError(f"{path}: encrypted artifact and no key provider configured")
        if require_scan:
            scan_path(path).raise_for_verdict()
        return path
    if not path.is_file():
        raise ArtifactError(f"{path}: only a single encrypted file can be decrypted")
    plain = decrypt_to_bytes(path, decrypt_with)
    if require_scan:
        _scan_bytes(plain, path)
    return plain


def _is_encrypted(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _scan_bytes(plain: bytes, origin: Path) -> None:
    """Scan decrypted bytes without writing them to disk: memfd where available."""
    import os

    name = origin.name.removesuffix(".enc") or "model"
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("modelfence-scan")
        try:
            _write_all(fd, plain)
            with tempfile.TemporaryDirectory() as tmp:
                link = Path(tmp) / name
                os.symlink(f"/proc/self/fd/{fd}", link)
                report = scan_path(link)
        finally:
            os.close(fd)
    else:
        raise NotScanned(f"{origin}: cannot scan decrypted bytes without memfd on this OS")
    for f in report.files:
        f.path = origin
    if report.verdict != Verdict.CLEAN:
        report.raise_for_verdict()


def _write_all(fd: int, data: bytes) -> None:
    import os

    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
