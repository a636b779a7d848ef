"""The environment variables modelfence knows, and the hand-off to worker processes.

The server's parent process hands its config path, admin address and socket, and metrics
folder to its workers through the environment; the secrets' variables are read in
`settings.py`, `${NAME}` references in `loader.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from .server import listen_address

if TYPE_CHECKING:
    from .settings import Settings

CONFIG_ENV = "MODELFENCE_CONFIG"
SECRET_ENV = "MODELFENCE_SECRET"  # noqa: S105 (a variable name, not a secret)
ADMIN_TOKEN_ENV = "MODELFENCE_ADMIN_TOKEN"  # noqa: S105
DATA_DIR_ENV = "MODELFENCE_HOME"
KEY_ENV = "MODELFENCE_KEY"
ADMIN_FD_ENV = "MODELFENCE_ADMIN_FD"
ADMIN_LISTEN_ENV = "MODELFENCE_ADMIN_LISTEN"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV, "modelfence.yaml"))


def export_config_path(path: Path) -> None:
    """Hand the config path to server worker processes, which read it in `default_config_path`."""
    os.environ[CONFIG_ENV] = str(path.resolve())


def export_admin_listen(address: str) -> None:
    """`serve --admin-listen` (and the demo's admin port), handed to the worker processes."""
    try:
        listen_address(address)
    except ValueError as exc:
        raise ConfigurationError(f"--admin-listen: {exc}") from None
    os.environ[ADMIN_LISTEN_ENV] = address


def admin_listen_override(settings: Settings) -> Settings:
    """The settings with the exported admin address, if one was exported."""
    address = os.environ.get(ADMIN_LISTEN_ENV)
    if not address:
        return settings
    server = settings.server.model_copy(update={"admin_listen": address})
    return settings.model_copy(update={"server": server})


def export_admin_socket(fd: int) -> None:
    """Hand the admin unix socket bound before the workers fork to each of them."""
    os.environ[ADMIN_FD_ENV] = str(fd)


def inherited_admin_socket() -> int | None:
    text = os.environ.get(ADMIN_FD_ENV, "")
    return int(text) if text.isdigit() else None


def export_metrics_dir(path: Path | None) -> None:
    """Workers of one server share metrics through this folder (prometheus_client's
    multiprocess mode reads the variable); None: each process keeps its own."""
    if path is None:
        os.environ.pop(METRICS_DIR_ENV, None)
    else:
        os.environ[METRICS_DIR_ENV] = str(path)


def metrics_dir() -> Path | None:
    text = os.environ.get(METRICS_DIR_ENV)
    return Path(text) if text else None


def default_home() -> Path:
    """Where `modelfence demo` keeps its model, config, keys and secret."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path.home() / ".modelfence"
