"""Run the gateway under granian (measured about twice uvicorn's throughput here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from ..config import default_config_path, export_config_path, load_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def create_app_from_env() -> Starlette:
    """granian's factory target: each worker process builds its own app."""
    from .app import build_app

    return build_app(load_settings(default_config_path()))


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
        },
    }


def run_server(config_path: Path, *, host: str, port: int, workers: int,
               access_log: bool = False, log_level: str = "INFO") -> None:
    """Serve with the configured connection limits (server.backlog, .backpressure,
    .header_timeout_s); the body timeouts are the app's (gateway/body_deadline.py)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    export_config_path(config_path)
    limits = load_settings(config_path).server
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
