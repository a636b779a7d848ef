"""Checks that several settings sections share (Redis URLs, unique names)."""

from __future__ import annotations

from collections.abc import Iterable


def redis_url(value: str | None, field: str) -> str | None:
    """`value` unchanged if it is a redis:// or rediss:// URL (or unset), else a clear error."""
    if value is not None and not value.startswith(("redis://", "rediss://")):
        raise ValueError(f"{field} must be a redis:// or rediss:// URL")
    return value


def unique_names(names: Iterable[str], what: str) -> None:
    """Refuse names given more than once, naming them."""
    seen = list(names)
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(dupes)}")
