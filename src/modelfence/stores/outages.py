"""Which store errors are outages: the store cannot be reached, rather than one call failed.

A circuit breaker (stores/breaker.py) that opens on any error lets one caller's bad call
refuse everyone: a budget key too long for PostgreSQL's index (ProgramLimitExceeded), a
text with NUL in it, a deadlock or a cancelled statement would each cut every call in
flight, refuse all calls until the probe passes and log an outage. Only a failure of the
connection itself says the store is gone; everything else fails the one call that hit it.

A timeout is neither here: the breaker decides about those (a slow query is not an outage;
a timeout whose probe fails too is).
"""

from __future__ import annotations

#: PostgreSQL SQLSTATEs that mean the server cannot serve this client: connection
#: exceptions (class 08), an administrator or crash shutting it down (57P01-57P03) and
#: too many connections (53300). Anything else (a deadlock, a cancelled statement, a
#: value too long for an index, a full disk) is about one statement, not the connection.
_PG_OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def postgres_outage(exc: BaseException) -> bool:
    """True for a psycopg error that means the server or the connection to it is gone."""
    import psycopg

    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:  # no answer from the server: a broken connection, a pool timeout
            return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        return state.startswith("08") or state in _PG_OUTAGE_STATES
    return isinstance(exc, OSError) and not isinstance(exc, TimeoutError)


def redis_outage(exc: BaseException) -> bool:
    """True for a Redis client's connection or timeout error (also wrapped by `limits`);
    a command the server refused (`ResponseError`: WRONGTYPE, OOM, a script error) is not."""
    import redis.exceptions
    from limits.errors import StorageError

    if isinstance(exc, StorageError):
        exc = exc.storage_error
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, TimeoutError)
