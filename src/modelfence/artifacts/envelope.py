"""AES-256-GCM envelope encryption of model artifacts, streamed in sealed chunks.

File layout::

    magic "MFENC\\x00\\x01\\n" | u32 header length | header (JSON) | chunk 0 | chunk 1 | ...

The header names the key provider and key id, holds the data key wrapped by the
key-encryption key (KEK) and an 8-byte random nonce prefix. Each chunk is
``AES-GCM(plaintext[i*C:(i+1)*C])`` with nonce = prefix || u32 index and associated data
= SHA-256(magic || header) || u64 index || last flag, so the header is authenticated by
every chunk, and any altered, truncated, reordered or appended chunk fails to open. A fresh
data key is drawn for every artifact, so (key, nonce) never repeats. Memory stays bounded
by the chunk size; plaintext of a chunk is released only after its tag verified.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import DecryptionError
from .keys import KeyProvider, provider_for_header

MAGIC = b"MFENC\x00\x01\n"
DEFAULT_CHUNK = 1 << 20
_TAG = 16
_MAX_HEADER = 64 * 1024
_MAX_CHUNK = 64 << 20
_Body = Callable[[BinaryIO], int]


def _aad(header_digest: bytes, index: int, last: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if last else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= 1 << 32:
        raise DecryptionError("artifact too large: more than 2**32 chunks")
    return prefix + struct.pack(">I", index)


def encrypt_stream(src: BinaryIO, dst: BinaryIO, provider: KeyProvider, *,
                   chunk_size: int = DEFAULT_CHUNK) -> int:
    """Encrypt `src` into `dst` under a fresh data key wrapped by `provider`; returns bytes read."""
    if not 16 <= chunk_size <= _MAX_CHUNK:
        raise ValueError(f"chunk size must be in [16, {_MAX_CHUNK}]")
    dek = AESGCM.generate_key(bit_length=256)
    prefix = os.urandom(8)
    header = json.dumps({
        "v": 1, "alg": "AES-256-GCM", "chunk": chunk_size,
        "kek": provider.describe(),
        "wrapped_key": base64.b64encode(provider.wrap(dek)).decode(),
        "nonce_prefix": base64.b64encode(prefix).decode(),
    }, sort_keys=True).encode()
    head = MAGIC + struct.pack(">I", len(header)) + header
    digest = hashlib.sha256(head).digest()
    dst.write(head)
    aead = AESGCM(dek)
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    n = _readfull(src, view)
    index = total = 0
    while True:
        nxt = bytearray(chunk_size)
        # Read ahead one chunk to know whether this one is the last.
        m = _readfull(src, memoryview(nxt)) if n == chunk_size else 0
        last = m == 0
        dst.write(aead.encrypt(_nonce(prefix, index), view[:n], _aad(digest, index, last)))
        total += n
        if last:
            return total
        buf, n, index = nxt, m, index + 1
        view = memoryview(buf)


def _readfull(src: BinaryIO, view: memoryview) -> int:
    got = 0
    while got < len(view):
        r = src.readinto(view[got:])  # type: ignore[attr-defined]
        if not r:
            break
        got += r
    return got


def read_header(src: BinaryIO, name: str = "artifact") -> tuple[dict[str, object], bytes]:
    """The parsed header and its digest; the stream is left at the first chunk."""
    start = src.read(len(MAGIC) + 4)
    if len(start) < len(MAGIC) + 4 or not start.startswith(MAGIC):
        raise DecryptionError(f"{name}: not a modelfence encrypted artifact (bad magic)")
    (length,) = struct.unpack(">I", start[len(MAGIC):])
    if length > _MAX_HEADER:
        raise DecryptionError(f"{name}: header too large ({length} bytes)")
    raw = src.read(length)
    if len(raw) != length:
        raise DecryptionError(f"{name}: truncated header")
    try:
        header = json.loads(raw)
        if not isinstance(header, dict) or header.get("v") != 1:
            raise ValueError("unsupported version")
    except ValueError as exc:
        raise DecryptionError(f"{name}: malformed header ({exc})") from None
    return header, hashlib.sha256(start + raw).digest()


def iter_decrypt(src: BinaryIO, provider: KeyProvider | None = None, *,
                 name: str = "artifact") -> Iterator[bytes]:
    """Yield plaintext chunks, each only after its tag verified.

    The stream is complete only when the iterator ends without raising: a caller must
    discard what it received if `DecryptionError` is raised midway (truncation is only
    detected at the end).
    """
    header, digest = read_header(src, name)
    try:
        chunk = int(header["chunk"])  # type: ignore[call-overload]
        prefix = base64.b64decode(str(header["nonce_prefix"]))
        wrapped = base64.b64decode(str(header["wrapped_key"]))
        kek = header["kek"]
        if not isinstance(kek, dict) or len(prefix) != 8 or not 16 <= chunk <= _MAX_CHUNK:
            raise ValueError("bad field")
    except (KeyError, ValueError, TypeError) as exc:
        raise DecryptionError(f"{name}: malformed header ({exc})") from None
    prov = provider if provider is not None else provider_for_header(kek)
    dek = prov.unwrap(wrapped, kek, name=name)
    aead = AESGCM(dek)
    size = chunk + _TAG
    cur = src.read(size)
    index = 0
    while True:
        if len(cur) < _TAG:
            raise DecryptionError(f"{name}: truncated ciphertext at chunk {index}")
        nxt = src.read(size) if len(cur) == size else b""
        last = not nxt
        try:
            plain = aead.decrypt(_nonce(prefix, index), cur, _aad(digest, index, last))
        except InvalidTag:
            raise DecryptionError(
                f"{name}: chunk {index} failed authentication (altered, truncated, "
                "reordered or appended ciphertext)") from None
        yield plain
        if last:
            return
        cur, index = nxt, index + 1


def decrypt_to_bytes(path: str | Path, provider: KeyProvider | None = None) -> bytes:
    """Decrypt into memory (plaintext never touches disk); all chunks verified first."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return b"".join(iter_decrypt(f, provider, name=str(path)))
    except OSError as exc:
        raise DecryptionError(f"{path}: cannot read ({exc.strerror})") from None


def encrypt_file(src: str | Path, dst: str | Path, provider: KeyProvider, *,
                 chunk_size: int = DEFAULT_CHUNK) -> int:
    """Encrypt a file to `dst` atomically (temp file + rename); returns the plaintext size."""
    src, dst = Path(src), Path(dst)
    try:
        with src.open("rb") as fin:
            return _atomic_write(dst, lambda out: encrypt_stream(fin, out, provider,
                                                                 chunk_size=chunk_size))
    except OSError as exc:
        raise DecryptionError(f"{exc.filename or src}: {exc.strerror}") from None


def decrypt_file(src: str | Path, dst: str | Path, provider: KeyProvider | None = None) -> int:
    """Decrypt to `dst`; the file appears only if every chunk verified; returns its size."""
    src, dst = Path(src), Path(dst)

    def body(out: BinaryIO) -> int:
        n = 0
        for part in iter_decrypt(fin, provider, name=str(src)):
            out.write(part)
            n += len(part)
        return n

    try:
        with src.open("rb") as fin:
            return _atomic_write(dst, body)
    except OSError as exc:
        raise DecryptionError(f"{exc.filename or src}: {exc.strerror}") from None


def _atomic_write(dst: Path, body: _Body) -> int:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "xb") as out:
            os.chmod(tmp, 0o600)
            n = body(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
        return n
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

