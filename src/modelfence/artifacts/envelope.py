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
import contextlib
import hashlib
import io
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..kernel.files import fsync_dir
from .errors import DecryptionError
from .keys import KeyProvider, provider_for_header

MAGIC = b"MFENC\x00\x01\n"
DEFAULT_CHUNK = 1 << 20
_TAG = 16
_MAX_HEADER = 64 * 1024
_MAX_CHUNK = 64 << 20
_Body = Callable[[BinaryIO], int]
# Recent `cryptography` releases seal and open into a caller's buffer (no allocation per
# chunk); older ones (the floor is 42) take the allocating path.
_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")


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
    _writeall(dst, head)
    aead = AESGCM(dek)
    # Two input buffers (read one chunk ahead to know whether this one is the last) and one
    # output buffer, reused for every chunk: no allocation, no copy per chunk.
    cur, ahead = memoryview(bytearray(chunk_size)), memoryview(bytearray(chunk_size))
    out = memoryview(bytearray(chunk_size + _TAG))
    n = _readfull(src, cur)
    index = total = 0
    while True:
        m = _readfull(src, ahead) if n == chunk_size else 0
        last = m == 0
        nonce, aad = _nonce(prefix, index), _aad(digest, index, last)
        if _INTO:
            aead.encrypt_into(nonce, cur[:n], aad, out[:n + _TAG])
            _writeall(dst, out[:n + _TAG])
        else:
            _writeall(dst, aead.encrypt(nonce, cur[:n], aad))
        total += n
        if last:
            return total
        cur, ahead, n, index = ahead, cur, m, index + 1


def _readfull(src: BinaryIO, view: memoryview) -> int:
    """Fill `view` from `src` (short only at end of stream); returns the bytes read."""
    got = 0
    while got < len(view):
        r = src.readinto(view[got:])  # type: ignore[attr-defined]
        if not r:
            break
        got += r
    return got


def _readexact(src: BinaryIO, n: int) -> bytes:
    """`n` bytes, or fewer only at end of stream."""
    buf = bytearray(n)
    return bytes(buf[:_readfull(src, memoryview(buf))])


def _writeall(dst: BinaryIO, data: memoryview | bytes) -> None:
    """Write all of `data` (a raw, unbuffered stream may accept only part of it)."""
    done = dst.write(data)
    while done is not None and done < len(data):
        done += dst.write(data[done:])


def read_header(src: BinaryIO, name: str = "artifact") -> tuple[dict[str, object], bytes]:
    """The parsed header and its digest; the stream is left at the first chunk."""
    start = _readexact(src, len(MAGIC) + 4)
    if len(start) < len(MAGIC) + 4 or not start.startswith(MAGIC):
        raise DecryptionError(f"{name}: not a modelfence encrypted artifact (bad magic)")
    (length,) = struct.unpack(">I", start[len(MAGIC):])
    if length > _MAX_HEADER:
        raise DecryptionError(f"{name}: header too large ({length} bytes)")
    raw = _readexact(src, length)
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
    for part in _open_chunks(src, provider, name, None):
        yield part if isinstance(part, bytes) else bytes(part)


def _open_chunks(src: BinaryIO, provider: KeyProvider | None, name: str,
                 into: bytearray | None) -> Iterator[bytes | memoryview]:
    """Verified plaintext chunks: fresh `bytes`, or with `into` given (and the installed
    `cryptography` able to decrypt in place) views of one reused buffer, each valid only
    until the next chunk is asked for."""
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
    cur, ahead = memoryview(bytearray(size)), memoryview(bytearray(size))
    plain: memoryview | None = None
    if into is not None and _INTO:
        if len(into) < chunk:
            into.extend(bytes(chunk - len(into)))
        plain = memoryview(into)
    n = _readfull(src, cur)
    index = 0
    while True:
        if n < _TAG:
            raise DecryptionError(f"{name}: truncated ciphertext at chunk {index}")
        m = _readfull(src, ahead) if n == size else 0
        last = m == 0
        nonce, aad = _nonce(prefix, index), _aad(digest, index, last)
        part: bytes | memoryview
        try:
            if plain is not None:
                aead.decrypt_into(nonce, cur[:n], aad, plain[:n - _TAG])
                part = plain[:n - _TAG]
            else:
                part = aead.decrypt(nonce, cur[:n], aad)
        except InvalidTag:
            if plain is not None:  # decrypt_into leaves unverified plaintext behind
                plain[:n - _TAG] = bytes(n - _TAG)
            raise DecryptionError(
                f"{name}: chunk {index} failed authentication (altered, truncated, "
                "reordered or appended ciphertext)") from None
        yield part
        if last:
            return
        cur, ahead, n, index = ahead, cur, m, index + 1


def decrypt_to_bytes(path: str | Path, provider: KeyProvider | None = None) -> bytes:
    """Decrypt into memory (plaintext never touches disk); all chunks verified first."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            # One growing buffer rather than a list of chunks joined at the end: the peak is
            # about the plaintext size, not twice it (getvalue() hands the buffer over).
            out = io.BytesIO()
            for part in _open_chunks(f, provider, str(path), bytearray()):
                out.write(part)
            return out.getvalue()
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
        for part in _open_chunks(fin, provider, str(src), bytearray()):
            _writeall(out, part)
            n += len(part)
        return n

    try:
        with src.open("rb") as fin:
            return _atomic_write(dst, body)
    except OSError as exc:
        raise DecryptionError(f"{exc.filename or src}: {exc.strerror}") from None


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)  # never readable by others, not even for a moment


def _atomic_write(dst: Path, body: _Body) -> int:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "xb", opener=_private) as out:
            os.chmod(tmp, 0o600)
            n = body(out)
            out.flush()
            os.fsync(out.fileno())  # the one data sync: contents durable before the rename
        os.replace(tmp, dst)
        with contextlib.suppress(OSError):  # best effort: some platforms cannot open a folder
            fsync_dir(dst.parent)  # the rename itself durable
        return n
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
