"""Recognise a model file's format by content and scan pickle-based ones.

Safe formats (safetensors, ONNX, skops) are recognised by magic bytes / structure, not by
extension. Everything else goes through picklescan and modelscan; a file is `clean` only
if a scanner actually scanned it and none found a dangerous import. A scanner error or a
file no scanner could read is `not_scanned`, never `clean`.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from ..extras import skops_io
from .errors import NotScanned, UnsafeArtifact


class Verdict(IntEnum):
    """Also the CLI exit code."""

    CLEAN = 0
    UNSAFE = 1
    NOT_SCANNED = 2


@dataclass
class FileScan:
    path: Path
    format: str
    verdict: Verdict
    findings: list[str] = field(default_factory=list)
    scanners: list[str] = field(default_factory=list)


@dataclass
class ScanReport:
    files: list[FileScan]

    @property
    def verdict(self) -> Verdict:
        return max((f.verdict for f in self.files), default=Verdict.NOT_SCANNED)

    def raise_for_verdict(self) -> None:
        """Raise `UnsafeArtifact` / `NotScanned` with a one-line reason unless clean."""
        bad = [f for f in self.files if f.verdict == self.verdict]
        if self.verdict == Verdict.CLEAN:
            return
        if not bad:
            raise NotScanned("no files to scan")
        first = bad[0]
        why = "; ".join(first.findings) or first.format
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        if self.verdict == Verdict.UNSAFE:
            raise UnsafeArtifact(f"{first.path}: unsafe {first.format}: {why}{more}")
        raise NotScanned(f"{first.path}: not scanned: {why}{more}")


_PICKLE_EXTS = {".pkl", ".pickle", ".joblib", ".dill", ".dat", ".data", ".bin", ".pt",
                ".pth", ".ckpt"}


def detect_format(path: Path) -> str:
    """'safetensors', 'onnx', 'skops', 'pickle', 'torch-zip', 'numpy', 'zip' or 'unknown'."""
    with path.open("rb") as f:
        head = f.read(16)
    if _is_safetensors(path, head):
        return "safetensors"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        if "schema.json" in names and not any(n.endswith((".pkl", ".pickle")) for n in names):
            return "skops"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-zip"
        return "zip"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head[:1] == b"\x08" and _is_onnx(path):
        return "onnx"
    return "unknown"


def _is_safetensors(path: Path, head: bytes) -> bool:
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    size = path.stat().st_size
    if n > min(size - 8, 100 << 20):
        return False
    with path.open("rb") as f:
        f.seek(8)
        try:
            meta = json.loads(f.read(n))
        except ValueError:
            return False
    if not isinstance(meta, dict):
        return False
    try:
        end = max((int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"),
                  default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return False
    return bool(8 + n + end == size)


def _is_onnx(path: Path) -> bool:
    """A well-formed protobuf whose top level has ModelProto's ir_version (1) and graph (7)."""
    seen: set[int] = set()
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            i, n = 0, len(m)
            while i < n:
                key, i = _varint(m, i)
                num, wire = key >> 3, key & 7
                if num == 0:
                    return False
                if wire == 0:
                    _, i = _varint(m, i)
                elif wire == 2:
                    ln, i = _varint(m, i)
                    i += ln
                elif wire == 1:
                    i += 8
                elif wire == 5:
                    i += 4
                else:
                    return False
                seen.add(num)
            return bool(i == n and {1, 7} <= seen)
    except (ValueError, IndexError, OSError):
        return False


def _varint(m: mmap.mmap, i: int) -> tuple[int, int]:
    shift = out = 0
    while True:
        b = m[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def scan_path(path: str | Path) -> ScanReport:
    """Scan a file, or every file in a folder; symlinks are not followed."""
    path = Path(path)
    if not path.exists():
        raise NotScanned(f"{path}: no such file or folder")
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return ScanReport([scan_file(p) for p in files])


def scan_file(path: Path) -> FileScan:
    try:
        fmt = detect_format(path)
    except OSError as exc:
        return FileScan(path, "unknown", Verdict.NOT_SCANNED, [f"cannot read: {exc.strerror}"])
    if fmt in ("safetensors", "onnx"):
        return FileScan(path, fmt, Verdict.CLEAN, [], ["format"])
    if fmt == "skops":
        return _scan_skops(path)
    res = FileScan(path, fmt, Verdict.CLEAN)
    for name, fn in (("picklescan", _picklescan), ("modelscan", _modelscan)):
        try:
            verdict, findings = fn(path, fmt)
        except ImportError:  # not installed: vouches for nothing, and says how to get it
            verdict, findings = Verdict.NOT_SCANNED, [
                f"{name} not installed: pip install 'modelfence[artifacts]'"]
        except Exception as exc:  # a crashing scanner vouches for nothing
            verdict, findings = Verdict.NOT_SCANNED, [f"{name} failed: {type(exc).__name__}"]
        res.scanners.append(name)
        res.findings += [f"{name}: {x}" for x in findings]
        res.verdict = max(res.verdict, verdict)
    if fmt == "unknown" and res.verdict == Verdict.CLEAN:
        res.verdict = Verdict.NOT_SCANNED
        res.findings.append("unrecognised format")
    return res


def _scan_skops(path: Path) -> FileScan:
    try:
        untrusted = skops_io().get_untrusted_types(file=path)
    except ImportError:
        return FileScan(path, "skops", Verdict.NOT_SCANNED,
                        ["skops not installed: pip install 'modelfence[artifacts]'"], ["skops"])
    except Exception as exc:
        return FileScan(path, "skops", Verdict.NOT_SCANNED,
                        [f"skops schema unreadable: {type(exc).__name__}"], ["skops"])
    if untrusted:
        return FileScan(path, "skops", Verdict.UNSAFE,
                        ["untrusted types " + ", ".join(untrusted)], ["skops"])
    return FileScan(path, "skops", Verdict.CLEAN, [], ["skops"])


def _picklescan(path: Path, fmt: str) -> tuple[Verdict, list[str]]:
    from picklescan.scanner import SafetyLevel, scan_bytes

    ext = ".pt" if fmt == "torch-zip" else ".npy" if fmt == "numpy" else None
    with path.open("rb") as f:
        r = scan_bytes(f, str(path), ext)
    bad = sorted({f"{g.module}.{g.name}" for g in r.globals
                  if g.safety == SafetyLevel.Dangerous})
    if r.issues_count or bad:
        return Verdict.UNSAFE, ["dangerous import " + ", ".join(bad or ["?"])]
    if r.scan_err or not r.scanned_files:
        return Verdict.NOT_SCANNED, ["could not parse the file"]
    return Verdict.CLEAN, []


def _modelscan(path: Path, fmt: str) -> tuple[Verdict, list[str]]:
    from modelscan.modelscan import ModelScan

    with tempfile.TemporaryDirectory() as tmp:
        target = path
        if path.suffix.lower() not in _PICKLE_EXTS and fmt in ("pickle", "torch-zip"):
            # modelscan picks scanners by extension; give content-detected pickles one.
            target = Path(tmp) / ("model.pt" if fmt == "torch-zip" else "model.pkl")
            os.symlink(path.absolute(), target)
        out: dict[str, Any] = ModelScan().scan(target)
    issues = [str(i.get("description", "issue")) for i in out.get("issues", [])]
    if issues or out.get("summary", {}).get("total_issues", 0):
        return Verdict.UNSAFE, issues[:3] or ["issue reported"]
    if out.get("errors"):
        return Verdict.NOT_SCANNED, [str(e.get("description", "error"))[:120]
                                     for e in out["errors"][:1]]
    if not out.get("summary", {}).get("scanned", {}).get("total_scanned", 0):
        return Verdict.NOT_SCANNED, ["no modelscan scanner for this format"]
    return Verdict.CLEAN, []
