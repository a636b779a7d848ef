"""The security-operations console served under `/console` on the admin listener.

Only the security core (signed session cookies, CSRF tokens, response headers) exists so
far; the pages and actions are described in issue 22 and not yet built.
"""
