"""`console:` — the security-operations console under `/console` on the admin listener."""

from __future__ import annotations

from pydantic import Field

from .base import ConfigPath, Strict


class ConsoleSettings(Strict):
    """The console signs its sessions with a key derived from the server secret and lets an
    admin do only what its admin scopes allow. A session ends at its lifetime, at logout (on
    every worker and replica, through the audit store) and when the admin credential that
    opened it leaves the configuration."""

    enabled: bool = Field(False, description="serve /console on the admin listener "
                          "(needs server.admin_listen and an admin credential)")
    session_lifetime_s: int = Field(900, ge=60, le=43200, description="seconds a console "
                                    "login lasts before the admin pastes its credential again")
    secure_cookie: bool = Field(False, description="mark the session cookie Secure even when "
                                "the request arrived over plain HTTP: set it when a proxy "
                                "ends TLS in front of the admin listener (over TLS it always is)")
    reports_dir: ConfigPath | None = Field(None, description="folder of red-team assessment "
                                           "reports and evidence bundles the console lists "
                                           "for download; none: no reports page")
    page_size: int = Field(50, ge=10, le=500, description="rows per page of the audit "
                           "search and the rankings")
