"""Relative paths of loaded settings, taken from the config file's folder.

The settings models are walked field by field; every value whose type is marked
`FromConfigDir` (`ConfigPath`, `StoreUrl`, `UpstreamUrl`, also inside lists, tuples,
optional values and nested sections) is resolved. A new path field is resolved because of
its type; nothing here names a field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .base import FromConfigDir

M = TypeVar("M", bound=BaseModel)


def resolve_paths(model: M, base: Path) -> M:
    """`model` with every marked relative path made absolute against `base`."""
    update: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        new = _resolve(value, _marker(field), base)
        if new is not value:
            update[name] = new
    return model.model_copy(update=update) if update else model


def _marker(field: FieldInfo) -> FromConfigDir | None:
    found = [m for m in field.metadata if isinstance(m, FromConfigDir)]
    return found[0] if found else _marker_in(field.annotation)


def _marker_in(tp: Any) -> FromConfigDir | None:
    """The mark anywhere in a type: `ConfigPath | None`, `list[ConfigPath]`, ..."""
    if get_origin(tp) is Annotated:
        inner, *meta = get_args(tp)
        found = [m for m in meta if isinstance(m, FromConfigDir)]
        return found[0] if found else _marker_in(inner)
    for arg in get_args(tp):
        found_in = _marker_in(arg)
        if found_in is not None:
            return found_in
    return None


def _resolve(value: Any, mark: FromConfigDir | None, base: Path) -> Any:
    if isinstance(value, BaseModel):
        return resolve_paths(value, base)
    if isinstance(value, list | tuple):
        items = [_resolve(v, mark, base) for v in value]
        changed = any(a is not b for a, b in zip(items, value, strict=True))
        return type(value)(items) if changed else value
    if isinstance(value, dict):
        resolved = {k: _resolve(v, mark, base) for k, v in value.items()}
        return resolved if any(resolved[k] is not v for k, v in value.items()) else value
    if mark is None:
        return value
    if isinstance(value, Path) and not mark.prefixes:
        return value if value.is_absolute() else (base / value).resolve()
    if isinstance(value, str):
        for prefix in mark.prefixes:
            if value.startswith(prefix):
                path = Path(value.removeprefix(prefix))
                return value if path.is_absolute() else prefix + str((base / path).resolve())
    return value
