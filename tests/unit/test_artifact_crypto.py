"""Envelope encryption: round trips, tampering, wrong keys, PKCS#11 KEK on SoftHSM2."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelfence.artifacts import (
    DecryptionError,
    KeyProviderError,
    KeyringProvider,
    Pkcs11Provider,
    decrypt_file,
    decrypt_to_bytes,
    encrypt_file,
    envelope,
    iter_decrypt,
)
from modelfence.artifacts.envelope import MAGIC, encrypt_stream

CHUNK = 64
SOFTHSM_LIB = Path("/usr/lib/softhsm/libsofthsm2.so")


@pytest.fixture
def keyring(tmp_path: Path) -> KeyringProvider:
    return KeyringProvider.create(tmp_path / "kr.json")


def _enc(data: bytes, provider: KeyringProvider | Pkcs11Provider) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, provider, chunk_size=CHUNK)
    return out.getvalue()


def _chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    hlen = struct.unpack(">I", blob[len(MAGIC):len(MAGIC) + 4])[0]
    start = len(MAGIC) + 4 + hlen
    body = blob[start:]
    size = CHUNK + 16
    return blob[:start], [body[i:i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 7])
def test_round_trip_sizes(keyring: KeyringProvider, n: int) -> None:
    data = os.urandom(n)
    assert b"".join(iter_decrypt(io.BytesIO(_enc(data, keyring)), keyring)) == data


def test_file_round_trip_and_fresh_data_key(tmp_path: Path, keyring: KeyringProvider) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    encrypt_file(src, tmp_path / "a.enc", keyring)
    encrypt_file(src, tmp_path / "b.enc", keyring)
    assert (tmp_path / "a.enc").read_bytes()[:200] != (tmp_path / "b.enc").read_bytes()[:200]
    decrypt_file(tmp_path / "a.enc", tmp_path / "out.bin", keyring)
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert decrypt_to_bytes(tmp_path / "b.enc", keyring) == src.read_bytes()


def _tampered(blob: bytes) -> dict[str, bytes]:
    head, cs = _chunks(blob)
    flipped = bytearray(cs[1])
    flipped[3] ^= 1
    hdr = bytearray(head)
    hdr[-5] ^= 1
    return {
        "truncated_at_chunk": head + b"".join(cs[:-1]),
        "truncated_mid_chunk": blob[:-5],
        "reordered": head + cs[1] + cs[0] + b"".join(cs[2:]),
        "appended": blob + cs[-1],
        "dropped_middle": head + cs[0] + b"".join(cs[2:]),
        "altered": head + cs[0] + bytes(flipped) + b"".join(cs[2:]),
        "altered_header": bytes(hdr) + b"".join(cs),
    }


@pytest.mark.parametrize("kind", ["truncated_at_chunk", "truncated_mid_chunk", "reordered",
                                  "appended", "dropped_middle", "altered", "altered_header"])
def test_tampering_fails_and_writes_nothing(tmp_path: Path, keyring: KeyringProvider,
                                            kind: str) -> None:
    blob = _tampered(_enc(os.urandom(4 * CHUNK + 10), keyring))[kind]
    bad = tmp_path / "bad.enc"
    bad.write_bytes(blob)
    out = tmp_path / "out.bin"
    with pytest.raises(DecryptionError) as err:
        decrypt_file(bad, out, keyring)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert not out.exists() and sorted(tmp_path.iterdir()) == [bad, tmp_path / "kr.json"]
    with pytest.raises(DecryptionError):
        decrypt_to_bytes(bad, keyring)


def test_iterator_yields_only_verified_chunks(keyring: KeyringProvider) -> None:
    data = os.urandom(4 * CHUNK)
    head, cs = _chunks(_enc(data, keyring))
    flipped = bytearray(cs[2])
    flipped[0] ^= 1
    got: list[bytes] = []
    with pytest.raises(DecryptionError, match="chunk 2"):
        for part in iter_decrypt(io.BytesIO(head + cs[0] + cs[1] + bytes(flipped) + cs[3]),
                                 keyring):
            got.append(part)
    assert b"".join(got) == data[:2 * CHUNK]


def test_wrong_key_and_unknown_key(tmp_path: Path, keyring: KeyringProvider) -> None:
    blob = io.BytesIO(_enc(b"secret weights", keyring))
    other = KeyringProvider.create(tmp_path / "other.json")
    with pytest.raises(DecryptionError, match="wrong key"):
        list(iter_decrypt(blob, other))
    third = KeyringProvider.create(tmp_path / "other.json", "k2")
    blob.seek(0)
    with pytest.raises(DecryptionError, match="wrong key"):
        list(iter_decrypt(blob, KeyringProvider(third.path, "default")))
    blob.seek(0)
    with pytest.raises(KeyProviderError, match="no key provider"):
        list(iter_decrypt(blob))
    with pytest.raises(DecryptionError, match="bad magic"):
        list(iter_decrypt(io.BytesIO(b"plain text file"), keyring))


@pytest.fixture
def softhsm(tmp_path: Path) -> Iterator[Path]:
    if not SOFTHSM_LIB.exists() or shutil.which("softhsm2-util") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("softhsm2 is required under CI=true (apt-get install -y softhsm2)")
        pytest.skip("softhsm2 not installed (apt-get install -y softhsm2)")
    pytest.importorskip("pkcs11", reason="python-pkcs11 not installed (modelfence[artifacts])")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\n"
                    "objectstore.backend = file\nlog.level = ERROR\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "mf",
                    "--so-pin", "5678", "--pin", "1234"], check=True, capture_output=True)
    yield SOFTHSM_LIB
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old


def test_pkcs11_kek_round_trip_and_wrong_key(softhsm: Path) -> None:
    kek = Pkcs11Provider(softhsm, token_label="mf", pin="1234", key_label="kek")
    kek.ensure_key()
    data = os.urandom(3 * CHUNK + 1)
    blob = _enc(data, kek)
    assert b"".join(iter_decrypt(io.BytesIO(blob), kek)) == data
    other = Pkcs11Provider(softhsm, token_label="mf", pin="1234", key_label="kek2")
    other.ensure_key()
    with pytest.raises(KeyProviderError, match="needs PKCS#11 key 'kek'"):
        list(iter_decrypt(io.BytesIO(blob), other))
    with pytest.raises(KeyProviderError):
        Pkcs11Provider(softhsm, token_label="mf", pin="0000", key_label="kek").wrap(b"x" * 32)


# --- format stability and the in-place (encrypt_into/decrypt_into) fast path -----------------

FIXTURES = Path(__file__).parent / "fixtures" / "envelope_v1"


def _fixture_plain(n: int) -> bytes:
    out = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n // 32 + 1))
    return out[:n]


@pytest.fixture(params=[True, False], ids=["into", "allocating"])
def into(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test with the in-place AES-GCM calls and with the fallback for older releases."""
    if request.param and not envelope._INTO:
        pytest.skip("installed cryptography has no encrypt_into/decrypt_into")
    monkeypatch.setattr(envelope, "_INTO", request.param)
    return bool(request.param)


@pytest.mark.parametrize("name", ["p0_c64", "p64_c64", "p200_c64", "p1000_c100", "p5000_c4096"])
def test_files_written_by_the_first_release_still_decrypt(tmp_path: Path, into: bool,
                                                          name: str) -> None:
    # Written by the allocating implementation before the in-place rewrite (same format).
    kr = KeyringProvider(FIXTURES / "kr.json")
    blob = FIXTURES / f"{name}.enc"
    plain = _fixture_plain(int(name[1:].split("_")[0]))
    assert b"".join(iter_decrypt(io.BytesIO(blob.read_bytes()), kr)) == plain
    assert decrypt_to_bytes(blob, kr) == plain
    assert decrypt_file(blob, tmp_path / "out.bin", kr) == len(plain)
    assert (tmp_path / "out.bin").read_bytes() == plain


def _reference_decrypt(blob: bytes, kr: KeyringProvider) -> bytes:
    """The documented format, decoded independently of the module's code."""
    hlen = struct.unpack(">I", blob[len(MAGIC):len(MAGIC) + 4])[0]
    start = len(MAGIC) + 4 + hlen
    header = json.loads(blob[len(MAGIC) + 4:start])
    digest = hashlib.sha256(blob[:start]).digest()
    aead = AESGCM(kr.unwrap(base64.b64decode(header["wrapped_key"]), header["kek"], name="x"))
    prefix = base64.b64decode(header["nonce_prefix"])
    size = header["chunk"] + 16
    body = blob[start:]
    parts = [body[i:i + size] for i in range(0, max(len(body), 1), size)]
    return b"".join(
        aead.decrypt(prefix + struct.pack(">I", i), part,
                     digest + struct.pack(">QB", i, 1 if i == len(parts) - 1 else 0))
        for i, part in enumerate(parts))


@pytest.mark.parametrize("n", [0, 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) - 5])
def test_default_chunk_output_matches_the_documented_format(tmp_path: Path, into: bool,
                                                            keyring: KeyringProvider,
                                                            n: int) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(n))
    assert encrypt_file(src, tmp_path / "w.enc", keyring) == n
    blob = (tmp_path / "w.enc").read_bytes()
    assert len(blob) - len(_chunks(blob)[0]) == n + 16 * max(1, -(-n // (1 << 20)))
    assert _reference_decrypt(blob, keyring) == src.read_bytes()
    assert decrypt_file(tmp_path / "w.enc", tmp_path / "o.bin", keyring) == n
    assert (tmp_path / "o.bin").read_bytes() == src.read_bytes()
    parts = list(iter_decrypt(io.BytesIO(blob), keyring))
    assert all(type(p) is bytes for p in parts)  # fresh objects, never views of a reused buffer
    assert b"".join(parts) == src.read_bytes()
    got = decrypt_to_bytes(tmp_path / "w.enc", keyring)
    assert type(got) is bytes and got == src.read_bytes()


@pytest.mark.parametrize("kind", ["truncated_at_chunk", "truncated_mid_chunk", "reordered",
                                  "appended", "dropped_middle", "altered", "altered_header"])
def test_tampering_fails_on_both_paths(tmp_path: Path, keyring: KeyringProvider, into: bool,
                                       kind: str) -> None:
    data = os.urandom(4 * CHUNK + 10)
    blob = _tampered(_enc(data, keyring))[kind]
    bad = tmp_path / "bad.enc"
    bad.write_bytes(blob)
    with pytest.raises(DecryptionError):
        decrypt_file(bad, tmp_path / "out.bin", keyring)
    assert not (tmp_path / "out.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.enc", "kr.json"]
    with pytest.raises(DecryptionError):
        decrypt_to_bytes(bad, keyring)


def test_failed_chunk_leaves_no_unverified_plaintext_in_the_buffer(
        keyring: KeyringProvider) -> None:
    if not envelope._INTO:
        pytest.skip("installed cryptography has no decrypt_into")
    data = os.urandom(3 * CHUNK)
    head, cs = _chunks(_enc(data, keyring))
    flipped = bytearray(cs[1])
    flipped[-1] ^= 1  # tag only: decrypt_into still writes the (correct) plaintext first
    buf = bytearray()
    got: list[bytes] = []
    with pytest.raises(DecryptionError, match="chunk 1"):
        for part in envelope._open_chunks(io.BytesIO(head + cs[0] + bytes(flipped) + cs[2]),
                                          keyring, "x", buf):
            got.append(bytes(part))
    assert got == [data[:CHUNK]]
    assert buf == bytes(CHUNK)


class _Trickle(io.RawIOBase):
    """A raw stream that reads and writes at most 7 bytes per call."""

    def __init__(self, data: bytes = b"") -> None:
        self.src, self.out = io.BytesIO(data), bytearray()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self.src.readinto(memoryview(b)[:7])

    def write(self, b: Any) -> int:
        chunk = bytes(memoryview(b)[:7])
        self.out += chunk
        return len(chunk)


def test_short_reads_and_writes_of_raw_streams(keyring: KeyringProvider, into: bool) -> None:
    data = os.urandom(3 * CHUNK + 5)
    sink = _Trickle()
    assert encrypt_stream(_Trickle(data), sink, keyring, chunk_size=CHUNK) == len(data)  # type: ignore[arg-type]
    assert b"".join(iter_decrypt(_Trickle(bytes(sink.out)), keyring)) == data  # type: ignore[arg-type]
