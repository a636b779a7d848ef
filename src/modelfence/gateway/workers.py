"""What the workers of one server share, set up before granian forks them.

* the metrics folder (`workers > 1`): prometheus_client's multiprocess mode sums every
  worker's numbers there, a fresh folder per run, removed when the server stops; the folders
  of servers that were killed before they could remove theirs are removed at the next start
  (each folder's name carries its server's pid);
* the admin unix socket: bound once here, each worker serves the inherited descriptor;
* a check that no other server holds the admin TCP port: the workers bind it with
  SO_REUSEPORT, which would otherwise share it silently with another gateway of this user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..config import Settings, export_admin_socket, export_metrics_dir, listen_address
from ..errors import ConfigurationError

#: the metrics folders' names: this prefix, the server's pid, a dash, mkdtemp's random part
METRICS_PREFIX = "modelfence-metrics-"


@contextlib.contextmanager
def shared_worker_state(settings: Settings, workers: int) -> Iterator[None]:
    folder = None
    if workers > 1:
        remove_orphaned_metrics(Path(tempfile.gettempdir()))
        folder = Path(tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-"))
    export_metrics_dir(folder)
    unix_path: Path | None = None
    holder = None
    try:
        address = settings.server.admin_listen
        if address is not None:
            where = listen_address(address)
            if isinstance(where, Path):
                from .admin_listener import bind_admin_socket

                try:
                    holder = bind_admin_socket(address)
                except OSError as exc:
                    raise ConfigurationError(f"server.admin_listen: cannot listen on "
                                             f"{address}: {exc.strerror or exc}") from None
                unix_path = where
                fd = holder.get_fd()
                os.set_inheritable(fd, True)
                export_admin_socket(fd)
            else:
                ensure_tcp_free(*where)
        yield
    finally:
        export_metrics_dir(None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                unix_path.unlink()
        del holder


def remove_orphaned_metrics(where: Path) -> None:
    """Remove this user's metrics folders whose server is gone (killed: SIGKILL, a crash).
    A folder whose pid now names another process is kept: never one a live server uses."""
    uid = os.getuid()
    for entry in where.glob(f"{METRICS_PREFIX}*-*"):
        pid = entry.name.removeprefix(METRICS_PREFIX).split("-", 1)[0]
        try:
            if not pid.isdigit() or entry.stat().st_uid != uid:
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue  # alive (another user's process), or the entry went away


def ensure_tcp_free(host: str, port: int) -> None:
    """Refuse an admin port another process listens on (a plain bind fails there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigurationError(f"server.admin_listen: cannot listen on {host}:{port}: "
                                     f"{exc.strerror or exc}") from None
