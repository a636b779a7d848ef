"""Policy files → one Cedar policy set, with every error pointing at file and line.

Cedar's parser and validator name a policy by its position (`policy3`), not by file and
line; this module splits each file into statements itself so that an error, a decision
and an audit record can say `policies/analysts.cedar:12` or the policy's `@id`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigurationError

_ID_ANNOTATION = re.compile(r'@id\s*\(\s*"((?:[^"\\]|\\.)*)"\s*\)')
_SHAPING_ANNOTATION = re.compile(r'@shaping\s*\(\s*"((?:[^"\\]|\\.)*)"\s*\)')


@dataclass(frozen=True, slots=True)
class Statement:
    """One policy and where it came from; its annotations are read once, here, not per request.

    `label` is the policy's @id, or file:line when it has none; `shaping` is the output band a
    `@shaping("band")` annotation on a permit pins the callers it lets in to.
    """

    text: str
    file: str
    line: int
    label: str = field(init=False, compare=False)
    shaping: str | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        m = _ID_ANNOTATION.search(self.text)
        object.__setattr__(self, "label",
                           m.group(1) if m else f"{Path(self.file).name}:{self.line}")
        m = _SHAPING_ANNOTATION.search(self.text)
        object.__setattr__(self, "shaping", m.group(1) if m else None)


def split_statements(text: str, file: str) -> list[Statement]:
    """Split Cedar source at top-level semicolons, skipping strings and // comments."""
    out: list[Statement] = []
    line, start, start_line = 1, 0, None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch == '"':
            start_line = start_line or line
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
        elif ch == "\n":
            line += 1
        elif ch == ";":
            out.append(Statement(text[start:i + 1].strip(), file, start_line or line))
            start, start_line = i + 1, None
        elif not ch.isspace() and start_line is None:
            start_line = line
        i += 1
    if start_line is not None:
        raise ConfigurationError(f"{file}:{start_line}: syntax error: policy does not end with ';'")
    return out


def read_statements(paths: list[Path]) -> list[Statement]:
    """Every statement of every file, each parsed alone so a syntax error names its line."""
    import cedarpy

    statements: list[Statement] = []
    for path in paths:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigurationError(f"{path}: cannot read policy file: {exc.strerror}") from None
        for st in split_statements(text, str(path)):
            try:
                cedarpy.PolicySet.from_str(st.text)
            except ValueError as exc:
                reason = " ".join(str(exc).split())
                raise ConfigurationError(f"{st.file}:{st.line}: syntax error: {reason}") from None
            statements.append(st)
    labels = [s.label for s in statements]
    for label in labels:
        if labels.count(label) > 1:
            st = statements[len(labels) - 1 - labels[::-1].index(label)]
            raise ConfigurationError(f"{st.file}:{st.line}: policy id {label!r} is used twice")
    return statements
