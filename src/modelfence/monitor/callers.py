"""The callers of one kind (principals or tenants): each caller's detectors, re-send
filters and risk (`CallerState`), kept in a bounded LRU table with the peers' statistics
(`Table`). Each caller's rows pass its `Repeats` first: exact repeats of its recent rows
reach only the detectors that see repeats (volume)."""

from __future__ import annotations

from collections import OrderedDict

from ..stores.recent import recent
from .detectors import DETECTORS, Detector, PeerStats, Repeats, Shared
from .facts import Batch, Cells, Judge, Rows
from .resends import Resends
from .summary import Array, Summary
from .verdict import NO_RISK, Kind, MonitorSettings, Risk

#: What a row is to its caller (`CallerState._kind`): new, an exact repeat, or a noisy
#: re-send whose answer is the same as, or differs from, its anchor's.
FRESH, REPEAT, SAME, FLIP = 0, 1, 2, 3
#: Which rows a detector is shown (`Detector.sees_repeats`, `sees_resends`, or neither).
REPEATS, RESENDS, FRESH_ONLY = "repeats", "resends", "fresh"


class CallerState:
    """All detectors for one caller, its re-send filters, its query count and risk."""

    def __init__(self, summary: Summary, names: tuple[str, ...], *, key: str,
                 shared: Shared) -> None:
        self.detectors: dict[str, Detector] = {
            n: DETECTORS[n].for_caller(summary, key=key, shared=shared) for n in names}
        self.repeats = Repeats()
        self.resends = Resends(summary.n_features, summary.resend_radius,
                               int(summary.resend_key), gap=summary.natural_gap)
        self.queries = 0
        self.risk = NO_RISK
        # which rows each detector sees, looked up once rather than on every observe
        self._roles = [(n, d, REPEATS if d.sees_repeats else RESENDS if d.sees_resends
                        else FRESH_ONLY) for n, d in self.detectors.items()]

    def _kind(self, rows: Batch, i: int) -> int:
        """`FRESH`, `REPEAT` (exact), `SAME` (a noisy re-send answered as its anchor was) or
        `FLIP` (a noisy re-send answered another class) for row `i`; a fresh row becomes an
        anchor, and so does a natural re-send of one (an echo, `Resends.seen_at`)."""
        if self.repeats.seen_digest(rows.digest(i)):
            return REPEAT
        label = rows.labels[i]
        a, aa = rows.anchor(i)
        anchor = self.resends.seen_at(a, aa, label, lambda: rows.natural(i))
        if anchor is None:
            return FRESH
        return FLIP if anchor not in (label, -1) else SAME

    def observe(self, rows: Batch, now: float) -> set[str]:
        """Show the rows to the detectors: fresh rows to most, noisy re-sends to those that
        `sees_resends`, all rows to volume; returns the names of the detectors that saw any.
        What the detectors read of the rows comes from `rows`, computed once for every
        caller that the same rows are fresh to (`facts`)."""
        kinds = [self._kind(rows, i) for i in range(len(rows))]
        every = rows.rows()
        if kinds.count(FRESH) == len(kinds):
            fresh: Rows | None = every
        else:
            mask = [k == FRESH for k in kinds]
            fresh = rows.rows(mask) if any(mask) else None
        noisy: Rows | None = None
        if SAME in kinds or FLIP in kinds:
            noisy = rows.rows([k >= SAME for k in kinds])
        seen = set()
        for name, det, sees in self._roles:
            if sees == REPEATS:
                det.take(every, now)
            elif sees == RESENDS:
                if noisy is None:
                    continue
                det.take_resends(noisy, [k == FLIP for k in kinds if k >= SAME], now)
            elif fresh is not None:
                det.take(fresh, now)
            else:
                continue
            seen.add(name)
        self.queries += len(rows)
        return seen

    def filters_state(self) -> dict[str, Array]:
        """The re-send filters' state as named arrays (a snapshot's part for this caller)."""
        return {**{f"repeats.{k}": v for k, v in self.repeats.state().items()},
                **{f"resends.{k}": v for k, v in self.resends.state().items()}}

    def load_filters(self, state: dict[str, Array]) -> None:
        self.repeats.load({k[8:]: v for k, v in state.items() if k.startswith("repeats.")})
        self.resends.load({k[8:]: v for k, v in state.items() if k.startswith("resends.")})

    @property
    def nbytes(self) -> int:
        return (sum(d.nbytes for d in self.detectors.values()) + self.repeats.nbytes
                + self.resends.nbytes)


class Table:
    """The callers of one kind, least recently seen first, and what they do as peers."""

    def __init__(self, kind: Kind, summary: Summary, settings: MonitorSettings,
                 cells: Cells, judge: Judge) -> None:
        self.kind, self.summary, self.settings = kind, summary, settings
        self.states: OrderedDict[str, CallerState] = OrderedDict()
        self.shared = Shared(PeerStats(), cells, judge)
        self.peers = self.shared.peers

    def new(self, key: str) -> CallerState:
        return CallerState(self.summary, self.settings.detectors, key=key, shared=self.shared)

    def touch(self, key: str) -> CallerState:
        """The caller's state, created if new, marked most recent."""
        return recent(self.states, key, lambda: self.new(key), self.settings.max_principals)

    def risk(self, key: str) -> Risk:
        state = self.states.get(key)
        return NO_RISK if state is None else state.risk
