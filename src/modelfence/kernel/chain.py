"""Guards and the chain that runs them: request phases in order, response phases in reverse.

Like Kong's plugin phases and Envoy's filter chain. A guard declares which `Call`
fields it `requires`, which it `reads` when some guard fills them (they have a default
otherwise, such as `risk` without a monitor) and which it `provides`. The names are
`Call`'s own fields, checked when the guard class is made, so a typo fails on import;
`GuardChain` checks at start-up that every requirement is provided by an earlier guard
(or by the backend, for response phases) and that a field a guard reads is filled
before it, not after, so a misordered chain refuses to boot instead of failing, or
deciding on a default, on a request.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from ..errors import ConfigurationError, RequestError
from .call import Call

log = logging.getLogger("modelfence.chain")

#: The names a guard may declare: Call's fields and its `source` property.
CALL_FIELDS = frozenset({f.name for f in dataclasses.fields(Call)} | {"source"})
#: Fields every Call has before any guard runs.
BASE_FIELDS = frozenset({"request", "action", "model_name", "source"})
#: Fields the terminal (backend call) provides to response phases.
TERMINAL_FIELDS = frozenset({"outputs"})

Terminal = Callable[[Call], Awaitable[None]]


class Guard:
    """One protection step. Override only the phases the guard needs.

    `on_request` runs before the backend and may deny by raising a `RequestError`;
    `on_response` runs after it, in reverse order, and may transform `call.outputs`;
    `on_complete` runs for every call, answered or denied, after the response is
    sent — it must not raise (failures are logged and counted, never shown).
    """

    name: ClassVar[str] = "guard"
    #: Call fields an earlier guard must have filled before this one's request phase.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: Call fields read if some guard fills them (then it must run earlier), else the default.
    reads: ClassVar[frozenset[str]] = frozenset()
    #: Call fields this guard fills.
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for kind in ("requires", "reads", "provides"):
            check_fields(cls.__name__, kind, getattr(cls, kind))

    async def on_request(self, call: Call) -> None:
        return None

    async def on_response(self, call: Call) -> None:
        return None

    async def on_complete(self, call: Call) -> None:
        return None


def check_fields(guard: str, kind: str, names: object) -> None:
    """Refuse a declared name that is not a `Call` field: it could never be checked."""
    if not isinstance(names, frozenset):
        raise TypeError(f"guard {guard}: {kind} must be a frozenset of Call field names, "
                        f"got {type(names).__name__}")
    unknown = sorted(set(names) - CALL_FIELDS)
    if unknown:
        raise TypeError(f"guard {guard}: {kind} names {unknown}, which are not Call fields; "
                        f"known: {', '.join(sorted(CALL_FIELDS))}")


def _overrides(guard: Guard, phase: str) -> bool:
    return getattr(type(guard), phase) is not getattr(Guard, phase)


class GuardChain:
    """An ordered, validated list of guards for one kind of call."""

    def __init__(self, guards: Sequence[Guard], *,
                 terminal_provides: frozenset[str] = TERMINAL_FIELDS) -> None:
        self.guards = tuple(guards)
        self._check_order(terminal_provides)
        self._request = [g for g in self.guards if _overrides(g, "on_request")]
        self._response = [g for g in reversed(self.guards) if _overrides(g, "on_response")]
        self._complete = [g for g in reversed(self.guards) if _overrides(g, "on_complete")]

    def _check_order(self, terminal_provides: frozenset[str]) -> None:
        available = set(BASE_FIELDS)
        names = [g.name for g in self.guards]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"guard chain lists a guard twice: {names}")
        for guard in self.guards:  # declarations set on an instance were not checked yet
            for kind in ("requires", "reads", "provides"):
                try:
                    check_fields(guard.name, kind, getattr(guard, kind))
                except TypeError as exc:
                    raise ConfigurationError(str(exc)) from None
        order = ' → '.join(names)
        for i, guard in enumerate(self.guards):
            if _overrides(guard, "on_request"):
                missing = guard.requires - available
                if missing:
                    raise ConfigurationError(
                        f"guard '{guard.name}' needs {sorted(missing)} but no earlier guard "
                        f"provides it; chain order: {order}"
                    )
                for later in self.guards[i + 1:]:
                    late = (guard.reads & later.provides) - available
                    if late:
                        raise ConfigurationError(
                            f"guard '{guard.name}' reads {sorted(late)}, which guard "
                            f"'{later.name}' fills only after it; move '{later.name}' "
                            f"before '{guard.name}'; chain order: {order}")
            available |= guard.provides
        available |= terminal_provides
        for guard in self.guards:
            if _overrides(guard, "on_response") and not _overrides(guard, "on_request"):
                missing = guard.requires - available
                if missing:
                    raise ConfigurationError(
                        f"guard '{guard.name}' needs {sorted(missing)} which nothing provides")

    async def run(self, call: Call, terminal: Terminal) -> None:
        """Run request phases, the terminal, then response phases; a denial stops the pass."""
        try:
            for guard in self._request:
                await guard.on_request(call)
            await terminal(call)
            for guard in self._response:
                await guard.on_response(call)
        except RequestError as exc:
            call.error = exc
            raise

    async def complete(self, call: Call) -> None:
        """Run every complete phase; one failing guard never stops the others."""
        for guard in self._complete:
            try:
                await guard.on_complete(call)
            except Exception:
                log.exception("complete phase of guard %r failed", guard.name)
