"""The one base of every settings model, the types that mark a value as a path, and the
checks more than one section shares.

Every section of modelfence.yaml, whichever feature it configures, derives from `Strict`:
a misspelt key is an error at start instead of a silently ignored setting, and loaded
settings cannot change under a running gateway. A field typed `ConfigPath` (or
`StoreUrl`, `UpstreamUrl` for URLs that may carry a file path) is taken relative to the
config file's folder by `config.paths.resolve_paths`, so a new path field needs no change
to the loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys refused, values frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class FromConfigDir:
    """Marks a field whose relative path is read from the config file's folder.

    `prefixes` empty: the value is a `Path`. Otherwise the value is a string, and the text
    after whichever prefix it starts with is the path (`sqlite:///audit.db`); an absolute
    path there (`sqlite:////var/lib/audit.db`) is left as written.
    """

    prefixes: tuple[str, ...] = ()


def checked_rate(value: str, example: str) -> str:
    """`value` when the limits package reads it as rates (`10/second;1000/hour`); otherwise
    a ValueError that shows `example`."""
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate like {example}") from None
    return value


#: A file or folder named in the config: relative to the config file's folder.
ConfigPath = Annotated[Path, FromConfigDir()]
#: A store URL: `sqlite:///PATH` and `jsonl:///PATH` name a file relative to the config.
StoreUrl = Annotated[str, FromConfigDir(("sqlite:///", "jsonl:///"))]
#: An upstream: an http(s) URL, or `local:PATH`, a model folder relative to the config.
UpstreamUrl = Annotated[str, FromConfigDir(("local:",))]
