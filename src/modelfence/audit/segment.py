"""Sealed segments: records [a..b] of the chain in a compressed archive with a signed manifest.

Retention drops old records from the store without losing the proof that the rest is
whole. A segment's archive holds one JSON line per record: the indexed columns and the
record's exact canonical bytes (`"record"`, last on the line, so the bytes the hash
covers can be cut out again; a JSON string cannot contain the unescaped `,"record":`
that marks it). Hashes are not stored: a verifier recomputes them from `prev_hash` and
must arrive at `last_hash`. The manifest, signed with the checkpoint key, says::

    {"type": "modelfence.audit.segment", "v": 1, "first_seq": a, "last_seq": b,
     "records": b-a+1, "prev_hash": <hash of a-1, zeros for a=1>, "last_hash": <hash of b>,
     "first_time_us", "last_time_us", "file", "size", "sha256": <of the archive file>,
     "created_us", "key_id", "signature"}

The signature covers the canonical JSON of every other field. A copy of the manifest is
kept in the store, so that once records ≤ b are pruned the live chain starts from a
signed `last_hash` instead of from nothing.

Archives hold full records, so, like the store and the spill, they are the owner's only:
files 0600 in a folder made (or tightened to) 0700. The folder is fsync'd after the
manifest and the archive are put in place, so a power cut cannot lose the names.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import RetentionRefused
from ..kernel.files import fsync_dir
from .chain import GENESIS, Row, row_hash
from .checkpoint import Signer, signature_problem

_TYPE = "modelfence.audit.segment"
_MARK = b',"record":'
_SUFFIX = ".manifest.json"
COMPRESSLEVEL = 6  # gzip's default 9 costs ~2x the time for ~3% smaller files here


@dataclass(frozen=True, slots=True)
class Manifest:
    first_seq: int
    last_seq: int
    records: int
    prev_hash: bytes
    last_hash: bytes
    first_time_us: int
    last_time_us: int
    file: str
    size: int
    sha256: str
    created_us: int
    key_id: str
    signature: bytes = b""

    @property
    def seq(self) -> int:
        """Where it anchors the chain (as a checkpoint does): its last record."""
        return self.last_seq

    @property
    def hash(self) -> bytes:
        return self.last_hash

    @property
    def ts_us(self) -> int:
        return self.created_us

    def _fields(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("signature")
        d.update(type=_TYPE, v=1, prev_hash=self.prev_hash.hex(), last_hash=self.last_hash.hex())
        return d

    def message(self) -> bytes:
        return orjson.dumps(self._fields(), option=orjson.OPT_SORT_KEYS)

    def to_json(self) -> bytes:
        """The manifest file's bytes (and the copy kept in the store)."""
        return orjson.dumps({**self._fields(), "signature": self.signature.hex()},
                            option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """ValueError naming the problem when `data` is not a segment manifest."""
        try:
            d = orjson.loads(data)
            if d.get("type") != _TYPE or d.get("v") != 1:
                raise ValueError("not a modelfence audit segment manifest")
            return cls(
                first_seq=int(d["first_seq"]), last_seq=int(d["last_seq"]),
                records=int(d["records"]), prev_hash=bytes.fromhex(d["prev_hash"]),
                last_hash=bytes.fromhex(d["last_hash"]), first_time_us=int(d["first_time_us"]),
                last_time_us=int(d["last_time_us"]), file=str(d["file"]), size=int(d["size"]),
                sha256=str(d["sha256"]), created_us=int(d["created_us"]),
                key_id=str(d["key_id"]), signature=bytes.fromhex(d["signature"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a segment manifest: {exc.__class__.__name__} {exc}") from None

    def problem(self, public: Ed25519PublicKey | None) -> str | None:
        """Why this manifest cannot be trusted under `public`, or None when it can."""
        if self.records != self.last_seq - self.first_seq + 1 or self.first_seq < 1:
            return (f"it claims {self.records} records for {self.first_seq}-{self.last_seq}")
        if self.first_seq == 1 and self.prev_hash != GENESIS:
            return "it starts the chain but does not link to its start"
        return signature_problem(public, self.key_id, self.signature, self.message())

    def name(self) -> str:
        return f"segment {self.first_seq}-{self.last_seq}"


def stem(first_seq: int, last_seq: int) -> str:
    return f"audit-{first_seq:012d}-{last_seq:012d}"


def manifest_path(folder: Path, m: Manifest) -> Path:
    return folder / (stem(m.first_seq, m.last_seq) + _SUFFIX)


def manifests_in(folder: Path) -> list[tuple[Path, Manifest | str]]:
    """Every manifest file in `folder`, oldest first: the manifest, or why it is unreadable."""
    out: list[tuple[Path, Manifest | str]] = []
    for path in sorted(folder.glob("audit-*" + _SUFFIX)):
        try:
            out.append((path, Manifest.from_json(path.read_bytes())))
        except (OSError, ValueError) as exc:
            out.append((path, str(exc)))
    return out


def row_line(r: Row) -> bytes:
    head = orjson.dumps({"seq": r.seq, "ts_us": r.ts_us, "request_id": r.request_id,
                         "principal": r.principal, "tenant": r.tenant, "model": r.model,
                         "action": r.action, "status": r.status})
    return b"".join((head[:-1], _MARK, r.payload, b"}\n"))


def row_from_line(line: bytes, prev: bytes) -> Row:
    """The row a line holds, its hash recomputed after `prev`; ValueError when malformed."""
    at = line.find(_MARK)
    if at < 0 or not line.endswith(b"}\n"):
        raise ValueError("not an archived record line")
    try:
        h = orjson.loads(line[:at] + b"}")
        cols = (int(h["seq"]), int(h["ts_us"]), h["request_id"], h["principal"], h["tenant"],
                h["model"], h["action"], h["status"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an archived record line: {exc}") from None
    payload = line[at + len(_MARK):-2]
    return Row(*cols, payload, prev, row_hash(prev, cols[0], (*cols[1:], payload)))


class _Hashing:
    """A file wrapper that hashes and counts every byte written through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def private_folder(folder: Path) -> None:
    """Make `folder` 0700, or take group and other access away from an existing one."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        with contextlib.suppress(PermissionError):  # not ours: its owner decides
            os.chmod(folder, 0o700)


def _create_private(path: Path) -> int:
    """A new (or emptied) file only the owner can read, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover of a crash kept its old mode
    return fd


class SegmentWriter:
    """Writes one archive file; `finish` signs its manifest and puts both in place.

    The archive is written under a temporary name and renamed only once complete and
    synced, so a crash leaves no file that looks sealed.
    """

    def __init__(self, folder: Path, first_seq: int, prev_hash: bytes) -> None:
        self.folder = folder
        self.first_seq = first_seq
        self.prev_hash = prev_hash
        self.count = 0
        self.last: Row | None = None
        self.first_time_us = 0
        private_folder(folder)
        self._tmp = folder / f".{stem(first_seq, 0)}.{os.getpid()}.tmp"
        self._raw = os.fdopen(_create_private(self._tmp), "wb")
        self._hashing = _Hashing(self._raw)
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._hashing,
                                 compresslevel=COMPRESSLEVEL, mtime=0)

    def add(self, rows: list[Row]) -> None:
        if not rows:
            return
        if self.last is None:
            self.first_time_us = rows[0].ts_us
        self._gz.write(b"".join(map(row_line, rows)))
        self.count += len(rows)
        self.last = rows[-1]

    def finish(self, signer: Signer, now_us: int) -> Manifest:
        if self.last is None:
            raise ValueError("an empty segment cannot be sealed")
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        last = self.last
        name = stem(self.first_seq, last.seq) + ".jsonl.gz"
        unsigned = Manifest(
            first_seq=self.first_seq, last_seq=last.seq, records=self.count,
            prev_hash=self.prev_hash, last_hash=last.hash, first_time_us=self.first_time_us,
            last_time_us=last.ts_us, file=name, size=self._hashing.size,
            sha256=self._hashing.sha.hexdigest(), created_us=now_us, key_id=signer.key_id)
        m = Manifest(**{**asdict(unsigned), "signature": signer.sign_message(unsigned.message())})
        tmp_manifest = self._tmp.with_suffix(".manifest")
        with os.fdopen(_create_private(tmp_manifest), "wb") as f:
            f.write(m.to_json())
            f.flush()
            os.fsync(f.fileno())
        path = manifest_path(self.folder, m)
        try:
            os.link(tmp_manifest, path)  # never replaces a manifest already there
        except FileExistsError:
            m = self._adopt(path, m, signer)
        finally:
            tmp_manifest.unlink(missing_ok=True)
        os.replace(self._tmp, self.folder / name)  # the same bytes if one was there
        fsync_dir(self.folder)
        return m

    def _adopt(self, path: Path, new: Manifest, signer: Signer) -> Manifest:
        """A seal of the same records that stopped before the store recorded it left this
        manifest: keep it if it signed the same bytes (gzip here is deterministic)."""
        try:
            old = Manifest.from_json(path.read_bytes())
        except (OSError, ValueError):
            old = None
        if (old is None or old.problem(signer.public) is not None or old.sha256 != new.sha256
                or (old.first_seq, old.last_seq) != (new.first_seq, new.last_seq)):
            self._tmp.unlink(missing_ok=True)
            raise RetentionRefused(f"{path} holds a different {new.name()}; move it away "
                                   "before sealing again")
        return old

    def abandon(self) -> None:
        """Remove the partial file (after an error)."""
        for closing in (self._gz, self._raw):
            with contextlib.suppress(OSError):
                closing.close()
        self._tmp.unlink(missing_ok=True)


def check_file(folder: Path, m: Manifest) -> Path:
    """The archive's path, once its size and sha256 are those the manifest signed."""
    path = folder / m.file
    sha, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ValueError(f"{m.name()}: cannot read {path}: {exc.strerror}") from None
    if size != m.size or sha.hexdigest() != m.sha256:
        raise ValueError(f"{m.name()}: {path} is not the file its manifest signed "
                         "(size or sha256 differs)")
    return path


def read_segment(folder: Path, m: Manifest, page: int = 20_000) -> Iterator[list[Row]]:
    """The archive's rows, linked from `m.prev_hash`, a page at a time.

    Raises ValueError when the file is missing, is not the file the manifest signed, or
    holds a malformed line; the caller checks where the chain ends (`m.last_hash`).
    """
    path = check_file(folder, m)
    prev = m.prev_hash
    try:
        with gzip.open(path, "rb") as gz:
            rows: list[Row] = []
            for line in gz:
                row = row_from_line(line, prev)
                prev = row.hash
                rows.append(row)
                if len(rows) >= page:
                    yield rows
                    rows = []
    except (OSError, EOFError) as exc:
        raise ValueError(f"{m.name()}: {path} is damaged: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{m.name()}: {path}: {exc}") from None
    if rows:
        yield rows
