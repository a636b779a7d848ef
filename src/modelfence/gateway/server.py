"""Run the gateway under granian (measured about twice uvicorn's throughput here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from ..config import (
    ServerSettings,
    admin_listen_override,
    default_config_path,
    export_config_path,
    load_settings,
)
from .workers import shared_worker_state

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def create_app_from_env() -> Starlette:
    """granian's factory target: each worker process builds its own app."""
    from .app import build_app

    return build_app(admin_listen_override(load_settings(default_config_path())))


def log_config(level: str = "INFO") -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "modelfence": {"handlers": ["stderr"], "level": level, "propagate": False},
            "_granian": {"handlers": ["stderr"], "level": level, "propagate": False},
            "granian.access": {"handlers": ["stderr"], "level": level, "propagate": False},
            # a store outage is logged once by its breaker (stores/breaker.py), not by the
            # pool at each reconnect attempt, nor by psycopg for each query it could not cancel
            "psycopg": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        },
    }


def run_server(config_path: Path, *, host: str, port: int, workers: int,
               access_log: bool = False, log_level: str = "INFO") -> None:
    export_config_path(config_path)
    settings = admin_listen_override(load_settings(config_path))
    with shared_worker_state(settings, workers):
        _serve(host=host, port=port, workers=workers, access_log=access_log,
               log_level=log_level, limits=settings.server)


def _serve(*, host: str, port: int, workers: int, access_log: bool, log_level: str,
           limits: ServerSettings) -> None:
    """granian in front, the workers forked from here (they inherit `shared_worker_state`).

    The connection limits are the configured numbers (server.backlog, .backpressure,
    .header_timeout_s); the body timeouts are the app's (gateway/body_deadline.py).
    """
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    Granian(
        "modelfence.gateway.server:create_app_from_env",
        factory=True,
        interface=Interfaces.ASGI,
        address=host,
        port=port,
        workers=workers,
        log_access=access_log,
        log_dictconfig=log_config(log_level),
        backlog=limits.backlog,
        backpressure=limits.backpressure,
        http1_settings=HTTP1Settings(header_read_timeout=int(limits.header_timeout_s * 1000)),
    ).serve()
