"""A monitor's save done by a forked child, as Redis's BGSAVE does it.

`os.fork()` gives the child a copy-on-write image of the process at that instant: the state
when the save began, with nothing to copy first. The child encodes and writes it on a CPU of
its own, so the gateway's requests do not share the GIL with the encoding (with 100,000
callers, some 30 s of work that slowed the console's pages past 300 ms at p99 when it ran as
copy steps on the event loop and an encoding thread).

The child runs pure Python and numpy on the copied state only: no event loop, no logging,
no store client (the threads and locks of the parent are not its own). It reports success
or its error through a pipe and leaves with `os._exit`; the parent waits for it in a worker
thread, which also reaps it (no zombie), and kills it if the save is cancelled. Where there
is no fork (not Linux) or it fails (no memory, no process slot), `run` says so and the
caller saves in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable

from ..errors import StoreError

log = logging.getLogger("modelfence.monitor")

#: The child's niceness: it takes the CPU that requests leave (a save is not urgent).
NICE = 19
#: How much of the child's error message reaches the parent.
MESSAGE_MAX = 500


def available() -> bool:
    """Whether saves fork: Linux only (macOS's system libraries do not survive a fork of a
    threaded process)."""
    return sys.platform == "linux" and hasattr(os, "fork")


async def run(work: Callable[[], None], what: str) -> bool:
    """`work()` in a forked child, awaited without holding the loop.

    False when no child could be made (the caller does the work itself); raises StoreError
    when the child failed or died; True when it succeeded."""
    if not available():
        return False
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(r)
        os.close(w)
        log.warning("%s: cannot fork (%s); saving in this process", what, exc.strerror)
        return False
    if pid == 0:
        _child(work, r, w)  # never returns
    os.close(w)
    waiting = asyncio.ensure_future(asyncio.to_thread(_wait, pid, r))
    try:
        status, message = await asyncio.shield(waiting)
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the waiting thread reaps it
        raise
    if status != 0 or message:
        why = message or (f"killed by signal {-status}" if status < 0
                          else f"exit status {status}")
        log.warning("%s: the saving process failed (%s)", what, why)
        raise StoreError(f"{what}: the saving process failed ({why})")
    return True


def _child(work: Callable[[], None], r: int, w: int) -> None:
    """The forked child: do the work, report, leave without running the parent's exit code."""
    status, message = 1, b"no report"
    try:
        os.close(r)
        gc.disable()  # a collection would write to every object, copying the whole heap
        signal.set_wakeup_fd(-1)  # the parent's event loop owns that descriptor
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.nice(NICE)  # on a busy machine the gateway's requests come first
        # short of memory (its copy-on-write pages grow), the kernel kills this first
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
        work()
        status, message = 0, b""
    except BaseException as exc:  # everything is reported: the parent decides
        message = f"{type(exc).__name__}: {exc}".encode(errors="replace")[:MESSAGE_MAX]
    finally:
        try:
            os.write(w, message)
        finally:
            os._exit(status)


def _wait(pid: int, r: int) -> tuple[int, str]:
    """The child's report (read until it exits) and its exit status, the child reaped."""
    chunks = []
    try:
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
    finally:
        os.close(r)
    try:
        _, raw = os.waitpid(pid, 0)
    except ChildProcessError:  # someone else reaped it: its report is all there is
        raw = 0 if not chunks else 1 << 8
    return os.waitstatus_to_exitcode(raw), b"".join(chunks).decode(errors="replace")
