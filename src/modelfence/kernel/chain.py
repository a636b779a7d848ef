"""Guards and the chain that runs them: request phases in order, response phases in reverse.

Like Kong's plugin phases and Envoy's filter chain. A guard works on one kind of `Call`,
named by its generic parameter (`class ShapingGuard(Guard[OipCall])`; a plain `Guard` works
on the base `Call`, on every protocol). It declares which of that type's fields it
`requires`, which it `reads` when some guard fills them (they have a default otherwise,
such as `risk` without a monitor) and which it `provides`; the names are checked against
the type's fields when the guard class is made, so a typo fails on import. A `GuardChain`
is built for one call type: at start-up it refuses a guard made for another protocol, a
requirement no earlier guard provides (or the backend, for response phases) and a field
read before the guard that fills it, so a misordered chain refuses to boot instead of
failing, or deciding on a default, on a request.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

from ..errors import ConfigurationError, RequestError
from .call import Call

log = logging.getLogger("modelfence.chain")

C = TypeVar("C", bound=Call)
C_contra = TypeVar("C_contra", bound=Call, contravariant=True)

#: Fields every Call has before any guard runs.
BASE_FIELDS = frozenset({"request", "action", "model_name", "source"})

Terminal = Callable[[C], Awaitable[None]]


def call_fields(call_type: type[Call]) -> frozenset[str]:
    """The names a guard on `call_type` may declare: its fields and its `source` property."""
    return frozenset({f.name for f in dataclasses.fields(call_type)} | {"source"})


class Guard(Generic[C_contra]):
    """One protection step on calls of type `C_contra`. Override only the phases it needs.

    `on_request` runs before the backend and may deny by raising a `RequestError`;
    `on_response` runs after it, in reverse order, and may transform the answer;
    `on_complete` runs for every call, answered or denied, after the response is
    sent — it must not raise (failures are logged and counted, never shown).
    """

    name: ClassVar[str] = "guard"
    #: The Call type this guard works on: its generic parameter (a chain of a subtype fits).
    call_type: ClassVar[type[Call]] = Call
    #: Call fields an earlier guard must have filled before this one's request phase.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: Call fields read if some guard fills them (then it must run earlier), else the default.
    reads: ClassVar[frozenset[str]] = frozenset()
    #: Call fields this guard fills.
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = _declared_call_type(cls)
        if declared is not None:
            cls.call_type = declared
        for kind in ("requires", "reads", "provides"):
            check_fields(cls.__name__, kind, getattr(cls, kind), cls.call_type)

    async def on_request(self, call: C_contra) -> None:
        return None

    async def on_response(self, call: C_contra) -> None:
        return None

    async def on_complete(self, call: C_contra) -> None:
        return None


def _declared_call_type(cls: type) -> type[Call] | None:
    """The Call type named by `cls`'s `Guard[...]` base, if it names one (not a TypeVar)."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Guard):
            for arg in get_args(base)[:1]:
                if isinstance(arg, type) and issubclass(arg, Call):
                    return arg
                if not isinstance(arg, TypeVar):
                    raise TypeError(f"guard {cls.__name__}: Guard[...] takes a Call type, "
                                    f"got {arg!r}")
    return None


def check_fields(guard: str, kind: str, names: object, call_type: type[Call] = Call) -> None:
    """Refuse a declared name that is not a field of `call_type`: it could never be checked."""
    if not isinstance(names, frozenset):
        raise TypeError(f"guard {guard}: {kind} must be a frozenset of Call field names, "
                        f"got {type(names).__name__}")
    known = call_fields(call_type)
    unknown = sorted(set(names) - known)
    if unknown:
        raise TypeError(f"guard {guard}: {kind} names {unknown}, which are not fields of "
                        f"{call_type.__name__}; known: {', '.join(sorted(known))}")


def _overrides(guard: Guard[Any], phase: str) -> bool:
    return getattr(type(guard), phase) is not getattr(Guard, phase)


class GuardChain(Generic[C]):
    """An ordered, validated list of guards for one type of call."""

    def __init__(self, call_type: type[C], guards: Sequence[Guard[C]], *,
                 terminal_provides: frozenset[str] | None = None) -> None:
        self.call_type = call_type
        self.guards = tuple(guards)
        self._check_types()
        self._check_order(call_type.backend_provides if terminal_provides is None
                          else terminal_provides)
        self._request = [g for g in self.guards if _overrides(g, "on_request")]
        self._response = [g for g in reversed(self.guards) if _overrides(g, "on_response")]
        self._complete = [g for g in reversed(self.guards) if _overrides(g, "on_complete")]

    def _check_types(self) -> None:
        """Each guard works on this chain's calls; its declarations name their fields."""
        names = [g.name for g in self.guards]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"guard chain lists a guard twice: {names}")
        kind = self.call_type.__name__
        for guard in self.guards:
            made_for = guard.call_type
            if not issubclass(self.call_type, made_for):
                raise ConfigurationError(
                    f"guard '{guard.name}' works on {made_for.__name__} calls and cannot run "
                    f"in a chain of {kind} calls")
            for decl in ("requires", "reads", "provides"):  # set on an instance: not checked yet
                try:
                    check_fields(guard.name, decl, getattr(guard, decl), made_for)
                except TypeError as exc:
                    raise ConfigurationError(str(exc)) from None

    def _check_order(self, terminal_provides: frozenset[str]) -> None:
        available = set(BASE_FIELDS)
        names = [g.name for g in self.guards]
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

    async def run(self, call: C, terminal: Terminal[C]) -> None:
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

    async def complete(self, call: C) -> None:
        """Run every complete phase; one failing guard never stops the others."""
        for guard in self._complete:
            try:
                await guard.on_complete(call)
            except Exception:
                log.exception("complete phase of guard %r failed", guard.name)
