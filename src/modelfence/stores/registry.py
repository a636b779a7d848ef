"""Stores chosen by URL scheme, as `limits.storage_from_string` chooses its storages.

Each kind of store (API keys, quota budgets, watermark evidence, the audit log) is one
`StoreKind`: the setting that names it and a factory per scheme. Every kind reads its URL
the same way (`sqlite:///relative.db`, `sqlite:////absolute.db`, `postgresql://` or its
alias `postgres://`) and refuses an unknown scheme with one `ConfigurationError` naming the
setting and the schemes it supports, the URL's credentials never shown. A store's options
(`durability=...`) are passed through to its factory, as `limits` passes its storage
options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..redaction import redact_url

T = TypeVar("T")


@dataclass(frozen=True)
class Scheme(Generic[T]):
    """One URL scheme of a kind of store.

    `build` is given the URL (the file's path instead, for `path` schemes) and the options;
    `form` is how errors show the scheme; a `bare` scheme is also accepted without `://`
    (`none` as well as `none://`).
    """

    names: tuple[str, ...]
    form: str
    build: Callable[..., T]
    path: bool = False
    bare: bool = False


def memory(build: Callable[[], T]) -> Scheme[T]:
    """`memory://`: state in this process; `build` takes nothing."""
    return Scheme(("memory",), "memory://", lambda _url, **_options: build())


def sqlite(build: Callable[..., T]) -> Scheme[T]:
    """`sqlite:///PATH`: `build` takes the database file's path."""
    return Scheme(("sqlite",), "sqlite:///PATH", build, path=True)


def postgresql(build: Callable[..., T]) -> Scheme[T]:
    """`postgresql://USER@HOST/DB` (or `postgres://`): `build` takes the URL."""
    return Scheme(("postgresql", "postgres"), "postgresql://USER@HOST/DB", build)


def file_scheme(name: str, build: Callable[..., T]) -> Scheme[T]:
    """`NAME:///PATH` (`jsonl:///audit.jsonl`): `build` takes the file's path."""
    return Scheme((name,), f"{name}:///PATH", build, path=True)


def plain(name: str, build: Callable[[], T], *, bare: bool = False) -> Scheme[T]:
    """`NAME://` with nothing after it (`log://`); `build` takes nothing."""
    return Scheme((name,), f"{name}://", lambda _url, **_options: build(), bare=bare)


class StoreKind(Generic[T]):
    """The stores of one kind by URL scheme; `setting` (`stores.keys`) names it in errors,
    `noun` says what it is (`store`, `sink`), `why` explains a scheme's absence."""

    def __init__(self, setting: str, *schemes: Scheme[T], noun: str = "store",
                 why: str = "") -> None:
        self.setting, self.noun, self.why = setting, noun, why
        self._schemes = schemes
        self._by_name = {name: s for s in schemes for name in s.names}

    @property
    def schemes(self) -> tuple[str, ...]:
        """Every scheme name accepted, aliases included."""
        return tuple(self._by_name)

    def scheme_of(self, url: str) -> Scheme[T]:
        """The scheme `url` names, or one clear error naming those supported."""
        name = urlsplit(url).scheme
        scheme = self._by_name.get(name)
        if scheme is None and not name:
            bare = self._by_name.get(url)
            scheme = bare if bare is not None and bare.bare else None
        if scheme is None:
            what = f"scheme {name!r} in" if name else "URL"
            forms = [s.form for s in self._schemes]
            supported = ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else forms[0]
            raise ConfigurationError(
                f"{self.setting}: unknown {self.noun} {what} {redact_url(url)}; use "
                f"{supported}" + (f" ({self.why})" if self.why else ""))
        return scheme

    def open(self, url: str, **options: Any) -> T:
        """Build (not connect) the store `url` names."""
        scheme = self.scheme_of(url)
        if not scheme.path:
            return scheme.build(url, **options)
        prefix = f"{urlsplit(url).scheme}:///"
        path = url.removeprefix(prefix)
        if not path or path == url:
            raise ConfigurationError(f"{self.setting}: {scheme.names[0]} URL needs a path "
                                     f"({scheme.form}): {redact_url(url)}")
        return scheme.build(Path(path), **options)
