"""Artifact throughput: encrypt/decrypt vs `openssl speed`, sign/verify vs `sha256sum`.

    python bench/artifacts.py [--size-mb 1024] [--dir /tmp]

Prints a markdown table. Encryption and decryption run in a subprocess that reports its
own peak RSS (resource.getrusage) and Python heap peak (tracemalloc is off: it would slow
the hot loop; RSS is the stricter bound).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import resource, sys, time
from modelfence.artifacts.envelope import decrypt_file, encrypt_file
from modelfence.artifacts.keys import KeyringProvider
op, src, dst, kr = sys.argv[1:5]
k = KeyringProvider(kr)
t = time.perf_counter()
(encrypt_file if op == "enc" else decrypt_file)(src, dst, k)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _openssl_rate() -> float:
    out = subprocess.run(["openssl", "speed", "-seconds", "3", "-bytes", "16384", "-evp",
                          "aes-256-gcm"], capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if ln.lower().startswith("aes-256-gcm")][-1]
    return float(re.findall(r"([\d.]+)k", line)[-1]) * 1000 / 1e6  # MB/s


def _write(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        for _ in range(size >> 20):
            f.write(block)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    a = ap.parse_args()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from modelfence.artifacts.keys import KeyringProvider
    from modelfence.artifacts.signing import SignaturePolicy, sign_model, verify_model

    work = Path(tempfile.mkdtemp(dir=a.dir, prefix="mf-bench-"))
    size = a.size_mb << 20
    rows: list[tuple[str, str, str, str]] = []
    try:
        src = work / "model.bin"
        _write(src, size)
        kr = work / "kr.json"
        KeyringProvider.create(kr)
        ossl = _openssl_rate()
        for op, i, o in (("enc", src, work / "model.enc"), ("dec", work / "model.enc",
                                                             work / "model.out")):
            out = subprocess.run([sys.executable, "-c", CHILD, op, str(i), str(o), str(kr)],
                                 capture_output=True, text=True, check=True).stdout.split()
            secs, rss_kb = float(out[0]), int(out[1])
            rate = size / secs / 1e6
            rows.append((f"{'encrypt' if op == 'enc' else 'decrypt'} {a.size_mb} MB",
                         f"{rate:.0f} MB/s", f"openssl speed {ossl:.0f} MB/s "
                         f"({100 * rate / ossl:.0f}%)", f"peak RSS {rss_kb / 1024:.0f} MB"))
        (work / "model.enc").unlink()
        (work / "model.out").unlink()
        folder = work / "folder"
        folder.mkdir()
        parts = 8
        for n in range(parts):
            _write(folder / f"shard-{n}.bin", size // parts)
        src.unlink()
        files = sorted(str(p) for p in folder.iterdir())
        t = time.perf_counter()
        subprocess.run(["sha256sum", *files], check=True, capture_output=True)
        sha = time.perf_counter() - t
        priv = ec.generate_private_key(ec.SECP256R1())
        (work / "k.pem").write_bytes(priv.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (work / "p.pem").write_bytes(priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        t = time.perf_counter()
        sign_model(folder, private_key=work / "k.pem")
        s = time.perf_counter() - t
        t = time.perf_counter()
        verify_model(folder, SignaturePolicy(public_key=work / "p.pem"))
        v = time.perf_counter() - t
        for name, secs in (("sign", s), ("verify", v)):
            rows.append((f"{name} {a.size_mb} MB folder ({parts} files)", f"{secs:.2f} s",
                         f"sha256sum {sha:.2f} s ({secs / sha:.2f}x)", "-"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, "
          f"bench RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB\n")
    print("| operation | modelfence | baseline | memory |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
