"""The TLS context for a collector: its CA (or the system's), a client certificate when
asked; certificate and host name always checked."""

from __future__ import annotations

import ssl

from ..config.siem import SiemTls
from ..errors import ConfigurationError


def client_context(tls: SiemTls | None) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls is not None and tls.ca_file else None)
        if tls is not None and tls.cert_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"siem tls: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
