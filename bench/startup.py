"""What the base install weighs and how soon an LLM-only gateway answers after it starts.

Two measurements, each from fresh virtual environments this script builds (`--build`) or
is given (`--base-venv`, `--before-venv`):

- size: the bytes of `site-packages` after a plain `pip install .` of this tree (the base
  install, no extras), next to the same for a reference commit (`--before`, default
  73a51f1, the last commit whose base install carried scikit-learn, scipy, onnxruntime and
  model-signing); shown with and without pip and setuptools, which every venv carries.
- first answer: `modelfence serve` from the base venv with an LLM-only configuration (the
  protections of examples/llm-gateway.yaml that the base install has: canary in block mode,
  heuristic screening, controls and bands, a quota; embedded stores) in front of the fake
  upstream of bench/llm_upstream.py. The clock starts just before the process is spawned
  and stops at the first 200 to a chat completion sent with a real key; `--repeat` runs.

    python bench/startup.py --build                       # both venvs under /tmp, 3-5 minutes
    python bench/startup.py --base-venv /tmp/v --before-venv /tmp/w --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from results import result, save
from servers import cpu_seconds, free_port

ROOT = Path(__file__).resolve().parent.parent
#: Distributions a venv has before anything is installed into it.
VENV_OWN = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth")


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"{venv}: no site-packages")
    return found[0]


def tree_bytes(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def size(venv: Path) -> dict[str, int]:
    """Bytes of site-packages, and of what pip and setuptools take of it."""
    sp = site_packages(venv)
    own = sum(tree_bytes(p) for p in sp.iterdir()
              if p.name.split("-")[0] in VENV_OWN or p.name in VENV_OWN)
    total = tree_bytes(sp)
    return {"total": total, "venv_own": own, "installed": total - own}


def build_venv(venv: Path, source: Path) -> None:
    """A fresh venv with `pip install <source>` (the base install, no extras)."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", str(source)],
                   check=True)


def build_before(commit: str, venv: Path) -> None:
    tree = Path(tempfile.mkdtemp(prefix="mf-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
                   check=True, capture_output=True)
    try:
        build_venv(venv, tree)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)


def llm_config(folder: Path, port: int, upstream: str) -> Path:
    (folder / "secret").write_text("startup-bench-secret-" + "x" * 32)
    doc: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "workers": 1},
        "secret_file": "secret",
        "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "sqlite:///audit.db"},
        "models": [],
        "llm": {"models": [{
            "name": "support-bot", "upstream": upstream, "upstream_model": "ok",
            "kinds": ["chat", "completion"],
            "controls": {"logprobs": False, "logit_bias": "refuse", "max_n": 1,
                         "max_tokens": 1024},
            "bands": [{"name": "watched", "from_risk": 0.3, "controls": {"max_tokens": 256}},
                      {"name": "locked", "from_risk": 0.7, "controls": {"max_tokens": 64}}],
            "canary": {"mode": "block",
                       "public": ["You are Ava, the support assistant of Example Corp."]},
            "screening": {"heuristics": True},
        }]},
        "quotas": {"limits": [{"scope": "principal", "rate": "60/minute"}]},
    }
    path = folder / "modelfence.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def post(url: str, key: str, timeout: float = 2.0) -> int:
    body = json.dumps({"model": "support-bot", "max_tokens": 16, "messages": [
        {"role": "system", "content": "You are Ava, the support assistant of Example Corp."},
        {"role": "user", "content": "How do I reset my password?"}]}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def first_answer(venv: Path, folder: Path, upstream: str) -> tuple[float, float]:
    """Seconds from spawning `modelfence serve` to its first 200 on a chat completion, and
    the CPU seconds the gateway's processes used until then (what a busy machine does not
    change)."""
    port = free_port()
    config = llm_config(folder, port, upstream)
    cli = str(venv / "bin/modelfence")
    made = subprocess.run([cli, "keys", "create", "--config", str(config), "--principal",
                           "alice", "--tenant", "acme", "--model", "support-bot", "--json"],
                          check=True, capture_output=True, text=True)
    key = json.loads(made.stdout)["key"]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    log = (folder / "serve.log").open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen([cli, "serve", "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    try:
        while True:
            status = post(url, key)
            if status == 200:
                return time.perf_counter() - started, cpu_seconds(proc.pid, reaped=True)
            if status not in (0, 503) or proc.poll() is not None:
                raise SystemExit(f"serve answered {status} (exit {proc.poll()}); see "
                                 f"{folder / 'serve.log'}")
            if time.perf_counter() - started > 60:
                raise SystemExit("no answer within 60 s")
            time.sleep(0.005)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def measure_start(venv: Path, repeat: int) -> list[tuple[float, float]]:
    port = free_port()
    upstream = subprocess.Popen([str(venv / "bin/python"), str(ROOT / "bench/llm_upstream.py"),
                                 "--port", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the fake upstream did not start") from None
                time.sleep(0.05)
        out = []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory(prefix="mf-startup-") as tmp:
                out.append(first_answer(venv, Path(tmp), f"http://127.0.0.1:{port}/v1"))
        return out
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


COLUMNS = [
    {"key": "install", "title": "install"},
    {"key": "site_packages_mib", "title": "site-packages", "format": "{:,.0f} MiB"},
    {"key": "without_pip_mib", "title": "without pip and setuptools", "format": "{:,.0f} MiB"},
    {"key": "first_answer_s", "title": "first answer", "format": "{:.2f} s"},
    {"key": "first_answer_max_s", "title": "slowest", "format": "{:.2f} s"},
    {"key": "cpu_s", "title": "CPU until then", "format": "{:.2f} s"},
]


def saved_result(base: dict[str, int], before: dict[str, int], before_name: str,
                 wall: list[float], cpu: list[float], command: str) -> dict[str, Any]:
    """The table as bench/results.py keeps it: what the docs render."""
    mb = 1024 * 1024
    rows = [
        {"install": "`pip install .` of this tree (base, no extras)",
         "site_packages_mib": round(base["total"] / mb), "without_pip_mib":
         round(base["installed"] / mb), "first_answer_s": round(statistics.median(wall), 2),
         "first_answer_max_s": round(max(wall), 2), "cpu_s": round(statistics.median(cpu), 2),
         "emphasis": ["site_packages_mib", "first_answer_s"]},
        {"install": f"commit {before_name}", "site_packages_mib": round(before["total"] / mb),
         "without_pip_mib": round(before["installed"] / mb)},
        {"install": f"the base install as a share of {before_name}",
         "site_packages_mib": f"{base['total'] / before['total']:.1%}",
         "without_pip_mib": f"{base['installed'] / before['installed']:.1%}"},
    ]
    return result("startup", command, COLUMNS, rows,
                  note=f"first answer: median of {len(wall)} starts of this tree's base install")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", action="store_true", help="build both venvs first")
    tmp = Path(tempfile.gettempdir())
    p.add_argument("--base-venv", type=Path, default=tmp / "mf-startup-base")
    p.add_argument("--before-venv", type=Path, default=tmp / "mf-startup-before")
    p.add_argument("--before", default="73a51f1", help="the reference commit")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, help="also write the results as JSON")
    p.add_argument("--save", type=Path, help="write the table as a result file the docs render "
                   "(bench/results.py; e.g. bench/published/startup-DATE.json)")
    args = p.parse_args(argv)
    if args.build:
        build_venv(args.base_venv, ROOT)
        build_before(args.before, args.before_venv)
    base, before = size(args.base_venv), size(args.before_venv)
    mb = 1024 * 1024
    print(f"site-packages: base {base['total'] / mb:.0f} MiB, {args.before} "
          f"{before['total'] / mb:.0f} MiB: {base['total'] / before['total']:.1%}")
    print(f"without pip and setuptools: base {base['installed'] / mb:.0f} MiB, {args.before} "
          f"{before['installed'] / mb:.0f} MiB: {base['installed'] / before['installed']:.1%}")
    runs = measure_start(args.base_venv, args.repeat)
    wall, cpu = [w for w, _ in runs], [c for _, c in runs]
    print(f"first answer of an LLM-only `modelfence serve`: median {statistics.median(wall):.2f}"
          f" s, max {max(wall):.2f} s over {len(runs)} starts; CPU until then: median "
          f"{statistics.median(cpu):.2f} s (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")
    if args.out:
        args.out.write_text(json.dumps({
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()}, {os.cpu_count()} cores",
            "before": args.before, "size_base": base, "size_before": before,
            "first_answer_s": wall, "first_answer_cpu_s": cpu}, indent=2))
    if args.save:
        save(args.save, saved_result(base, before, args.before, wall, cpu,
                                     "python bench/startup.py " + shlex.join(
                                         sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
