"""URLs as they may appear in logs and error messages.

A configured URL can carry credentials (``https://user:token@host``) or a token in its
query; every log line and error that names an outbound endpoint (JWKS, webhook, upstream
model servers, prompt classifiers, stores) passes it through `redact_url` first, and a
driver's error text that may echo the URL passes through `hide_password`. A leaf module, so
that every package can use the one helper.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """scheme://host[:port]/path: no user, password, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "<unparsable url>"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def hide_password(text: str, url: str) -> str:
    """`text` (a database driver's error, which may echo its connection string) with the
    password of `url` replaced by ***."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(password, "***") if password else text
