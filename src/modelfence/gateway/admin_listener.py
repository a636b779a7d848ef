"""The admin listener: the admin API, `/admin/ready` and `/metrics` on an address of their own.

Each worker serves it from inside its own event loop with granian's embedded server, so
an admin call sees the same objects (key cache, monitor, policy) as the public routes.
A TCP address is bound by every worker with SO_REUSEPORT (granian's listener does that),
so `workers > 1` share it as they share the public port. A unix socket cannot be bound
twice: `run_server` binds it once before the workers fork and each worker serves that
descriptor (`inherited_admin_socket`); a lone process binds it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

from ..config import inherited_admin_socket, listen_address
from ..errors import ConfigurationError

log = logging.getLogger("modelfence.admin")
_BACKLOG = 128
_PROBE_S = 1.0  # how long a server on an existing admin socket has to accept


def bind_admin_socket(address: str) -> Any:
    """Bind (and listen on) `address`; a granian SocketHolder. OSError names the cause; a
    path that is taken (`remove_stale_socket`) is a ConfigurationError."""
    from granian._granian import ListenerSpec, UnixListenerSpec

    where = listen_address(address)
    if isinstance(where, Path):
        where.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_socket(where, address)
        holder = UnixListenerSpec(str(where), _BACKLOG, 0o660).build()
        return holder
    return ListenerSpec(where[0], where[1], _BACKLOG).build()


def remove_stale_socket(path: Path, address: str) -> None:
    """Remove the socket a killed server left at `path`, and nothing else: a file that is
    not a socket (or a link) is someone's data, and a socket a server answers on is that
    server's (a second gateway would take its admin API over)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigurationError(f"server.admin_listen: cannot listen on {address}: {path} "
                                 "exists and is not a socket; remove it or pick another path")
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(_PROBE_S)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: stale
        except OSError as exc:  # a server too busy to accept is still a server
            raise ConfigurationError(f"server.admin_listen: cannot listen on {address}: "
                                     f"{path} does not answer in time ({exc.__class__.__name__})"
                                     "; stop whatever holds it") from None
        else:
            raise ConfigurationError(f"server.admin_listen: cannot listen on {address}: "
                                     f"another server answers on {path}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _embedded_server(app: Any, holder: Any) -> Any:
    """granian's embedded server on an already bound socket (its own would bind again)."""
    from granian.constants import Interfaces
    from granian.server.embed import Server

    class _BoundServer(Server):
        def _init_shared_socket(self) -> None:
            self._ssp = None
            self._shd = holder

    return _BoundServer(app, interface=Interfaces.ASGINL, log_access=False)


class AdminListener:
    """Serves the admin app on `address` while the public app runs; stopped with it."""

    def __init__(self, address: str, app: Any) -> None:
        self.address = address
        self._app = app
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._own_path: Path | None = None
        self._granian_level = logging.NOTSET

    async def start(self) -> None:
        from granian._granian import SocketHolder

        where = listen_address(self.address)
        fd = inherited_admin_socket() if isinstance(where, Path) else None
        try:
            if fd is not None:
                holder = SocketHolder(fd, True, _BACKLOG)  # type: ignore[call-arg]
            else:
                holder = bind_admin_socket(self.address)
                self._own_path = where if isinstance(where, Path) else None
        except OSError as exc:
            raise ConfigurationError(f"server.admin_listen: cannot listen on {self.address}: "
                                     f"{exc.strerror or exc}") from None
        self._server = _embedded_server(self._app, holder)
        # the embedded server's own lines ("experimental", a made-up "listening at", its
        # worker starting and stopping) would repeat per worker; this one line says it
        granian_log = logging.getLogger("_granian")
        self._granian_level = granian_log.level
        granian_log.setLevel(logging.ERROR)
        self._task = asyncio.create_task(self._server.serve(), name="admin-listener")
        await asyncio.sleep(0)
        granian_log.setLevel(max(self._granian_level, logging.WARNING))
        log.info("admin API and metrics on %s (pid %d)", self.address, os.getpid())

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 10)
        self._server = self._task = None
        logging.getLogger("_granian").setLevel(self._granian_level)
        if self._own_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._own_path.unlink()
