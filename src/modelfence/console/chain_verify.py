"""A full verification of the audit chain, started from the console, off the event loop.

`modelfence audit verify`'s walk (audit.verify.verify_store) over a million records takes
seconds of CPU, so it runs in a thread of its own with its own event loop and its own
connection to the store (opened read-only from the same URL: the gateway's writer keeps
its connection and is never held up). One runs at a time per process. Its result is
written to the audit log as a `console:audit-verify` record naming the admin, so the
page shows the last result on every replica and after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..audit.store import audit_store_from_url
from ..audit.verify import verify_store

log = logging.getLogger("modelfence.console")
ACTION = "console:audit-verify"

#: writes the verification's record: admin, status, its details
Finish = Callable[[str, int, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Running:
    admin: str
    started: float


class ChainVerifier:
    """Starts full verifications of the store at `url`, one at a time."""

    def __init__(self, url: str, public: Ed25519PublicKey | None) -> None:
        self._url = url
        self._public = public
        self._running: Running | None = None

    @property
    def running(self) -> Running | None:
        return self._running

    def start(self, admin: str, finish: Finish) -> bool:
        """Begin a verification in the background; False when one is already running."""
        if self._running is not None:
            return False
        self._running = Running(admin, time.time())
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, args=(admin, finish, loop), daemon=True,
                         name="console-audit-verify").start()
        return True

    def _run(self, admin: str, finish: Finish, loop: asyncio.AbstractEventLoop) -> None:
        try:
            details = {"verified": asyncio.run(self._verify())}
            status = 200
        except Exception as exc:  # a store that cannot be read: say so, never a secret
            details = {"verified": {"ok": False, "error": exc.__class__.__name__}}
            status = 503
        try:
            asyncio.run_coroutine_threadsafe(self._done(admin, status, details, finish), loop)
        except RuntimeError:  # the gateway stopped meanwhile
            self._running = None

    async def _done(self, admin: str, status: int, details: dict[str, Any],
                    finish: Finish) -> None:
        self._running = None
        await finish(admin, status, details)

    async def _verify(self) -> dict[str, Any]:
        store = audit_store_from_url(self._url, create=False)
        await store.open()
        try:
            report = await verify_store(store, public_key=self._public)
        finally:
            await store.close()
        out = report.to_dict()
        return {k: out[k] for k in ("ok", "records", "first_seq", "last_seq", "checkpoints",
                                    "last_checkpoint", "signatures_checked", "seconds",
                                    "damage")}
