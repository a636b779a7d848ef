"""Reading modelfence.yaml: YAML, `${NAME}` expansion, validation, relative paths.

A bad file fails at start with one line naming the file, the key and the reason
(``modelfence.yaml: models[0].backend.path: field required``), never a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigurationError
from .paths import resolve_paths
from .settings import Settings

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_settings(path: Path | str) -> Settings:
    """Read, expand and validate a config file; every failure is one ConfigurationError line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigurationError(f"{where}: YAML syntax error: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{path}: top level must be a mapping of settings")
    return settings_from_mapping(raw, source=str(path), base_dir=path.parent)


def settings_from_mapping(
    raw: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> Settings:
    expanded = _expand_env(dict(raw), source, ())
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _dotted(err["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigurationError(f"{source}: {key}: {_reason(err)}{more}") from None
    return resolve_paths(settings, base_dir) if base_dir is not None else settings


def _reason(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"])
    if err.get("type") == "extra_forbidden":
        return "unknown key (check its spelling)"
    return msg[0].lower() + msg[1:] if msg else "invalid value"


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("LocalBackend", "OipUpstreamBackend") or str(part) in (
            "skops", "onnx", "pickle", "oip"):
            continue  # pydantic's union tags are noise to a user
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _expand_env(value: Any, source: str, loc: tuple[Any, ...]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigurationError(
                    f"{source}: {_dotted(loc)}: environment variable {name} is not set")
            return os.environ[name]
        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, source, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, source, (*loc, i)) for i, v in enumerate(value)]
    return value
