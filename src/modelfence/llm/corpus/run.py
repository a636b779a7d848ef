"""Run the corpus: `run("dev" | "test" | "all")` replays each half through its own
in-process gateway (a fresh risk book and detectors per half; one embedding cache for the
run) and returns what report.py turns into tables."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from ...errors import ConfigurationError
from .engine import CachingEmbedder, Gateway
from .harness import HalfResult, Progress, replay
from .populations import build
from .report import CorpusRun, machine

SUITES = ("dev", "test", "holdout", "all")


def halves_of(suite: str) -> tuple[str, ...]:
    if suite not in SUITES:
        raise ConfigurationError(f"suite {suite!r}: use {', '.join(SUITES)}")
    return ("dev", "test") if suite == "all" else (suite,)


def run(suite: str, *, progress: Progress | None = None,
        populations: Sequence[str] | None = None) -> CorpusRun:
    """The suite's halves; `populations` keeps only those callers (honest, distiller,
    thief, prober)."""
    names = halves_of(suite)
    started = time.perf_counter()
    embedder = CachingEmbedder()
    results: list[HalfResult] = []
    for name in names:
        half = build(name)
        callers = [c for c in half.callers
                   if populations is None or c.population in populations]
        # thieves beyond the list run in a world of their own: hundreds of one-request
        # keys would otherwise move the peers' medians the issue's populations are judged by
        main = [c for c in callers if not c.notes.get("beyond")]
        extra = [c for c in callers if c.notes.get("beyond")]
        gw = Gateway(half.systems, embedder=embedder)
        result = replay(half, gateway=gw, callers=main, progress=progress)
        if extra:
            apart = Gateway(half.systems, embedder=embedder)
            result.callers += replay(half, gateway=apart, callers=extra).callers
        thieves = [c for c in main if c.population == "thief"]
        if thieves:  # the leak filter alone: no policy refuses a screened prompt
            alone = Gateway(half.systems, embedder=embedder, distill=False, policies=False)
            result.filter_alone = replay(half, gateway=alone, callers=thieves).callers
        results.append(result)
    return CorpusRun(suite, results, time.perf_counter() - started, machine(), commit(),
                     time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def commit() -> str:
    """The source tree's commit (and "+changes" when it has uncommitted ones), if known."""
    root = Path(__file__).resolve().parents[4]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=True).stdout
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.strip() + ("+changes" if dirty.strip() else "")
