"""A monitor's snapshot: its callers' state copied at one moment, then written as an .npz.

A gateway on Linux takes its snapshots in a forked child (`forked`), which runs both steps
below at once on its copy of the state. Elsewhere, taking a snapshot is two steps, so that a
gateway with thousands of callers never holds its event loop for long
(`Monitor.snapshot_async`):

- `Capture` copies each caller's state (only the values its rings hold: a caller with three
  queries copies three rows), a bounded number of callers at a time; between steps the
  loop serves requests. A caller that a request is about to change before its turn is
  copied first (`before_change`), so the snapshot is the state at the moment the capture
  began, never a caller half old and half new (copy on write, as a forked process's memory).
- `Capture.encode` turns the copies into the .npz bytes: arrays only, no pickle. It reads
  nothing live, so it runs in a worker thread.

Format (version 5): a field whose arrays have the same shape for every caller is stacked
[callers, ...], as version 4 wrote every field (whole rings, empty slots included); one
whose arrays differ (rings holding different counts) is concatenated along the first axis,
with each caller's length in `{kind}.lengths.{field}`. `Fields` reads both, so a snapshot
written by the version before (4) restores after an upgrade.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ..errors import ConfigurationError
from ..risk import Episode
from .detectors import Reading
from .summary import Array
from .verdict import Kind, Risk

if TYPE_CHECKING:
    from .callers import CallerState, Table

#: What `snapshot` writes; `restore` reads this format, versions `READS` (2: float32 rows,
#: each caller's repeat digests, the peer table's latest hour; 3: each caller's episode and
#: its raw risk; 4: each caller's re-send anchors, detectors fitted by summary format 3;
#: 5: only the values each ring holds).
SNAPSHOT_FORMAT, SNAPSHOT_VERSION = "modelfence-monitor", 5
READS = (4, 5)


class _Caller:
    """One caller's state, copied: its query count, risk and every field's arrays."""

    __slots__ = ("fields", "queries", "risk")

    def __init__(self, state: CallerState) -> None:
        self.queries, self.risk = state.queries, state.risk  # a Risk is never changed
        fields = state.filters_state()
        for name, det in state.detectors.items():
            fields.update({f"{name}.{k}": v for k, v in det.state().items()})
        self.fields = fields


class Capture:
    """A monitor's state as of the moment this was made, copied caller by caller.

    `step` copies the next callers; `before_change(state)`, called by the monitor before a
    caller's state changes, copies that caller at once if its turn has not come. The peer
    tables (small and fixed in size) are copied whole when the capture begins.
    """

    def __init__(self, header: dict[str, Any], tables: Mapping[Kind, Table]) -> None:
        self.header = header
        self.names: tuple[str, ...] = tuple(header["detectors"])
        self.keys = {kind: list(t.states) for kind, t in tables.items()}
        self.peers = {kind: _copy_peers(t) for kind, t in tables.items()}
        self.copies: dict[Kind, list[_Caller | None]] = {
            kind: [None] * len(t.states) for kind, t in tables.items()}
        # every caller in turn, and those still to copy (by identity)
        self.queue = [(state, kind, i) for kind, t in tables.items()
                      for i, state in enumerate(t.states.values())]
        self.todo: dict[CallerState, tuple[Kind, int]] = {
            state: (kind, i) for state, kind, i in self.queue}
        self.at = 0  # the next in `queue`

    @property
    def done(self) -> bool:
        return not self.todo

    def step(self, callers: int | None = None) -> bool:
        """Copy the next `callers` (all when None); whether any remain."""
        n = len(self.queue) if callers is None else callers
        while n > 0 and self.at < len(self.queue):
            state, kind, i = self.queue[self.at]
            self.at += 1
            if self.todo.pop(state, None) is not None:  # else `before_change` copied it
                self.copies[kind][i] = _Caller(state)
                n -= 1
        return bool(self.todo)

    def before_change(self, state: CallerState) -> None:
        """Copy `state` now if it is still to be copied: a request is about to change it."""
        at = self.todo.pop(state, None)
        if at is not None:
            self.copies[at[0]][at[1]] = _Caller(state)

    def encode(self) -> bytes:
        """The .npz bytes of the copies (reads nothing live: safe in a worker thread)."""
        out = io.BytesIO()
        self.write(out)
        return out.getvalue()

    def write(self, out: BinaryIO) -> None:
        """The .npz of the copies, written to `out` (a forked child writes its file)."""
        if self.todo:
            raise RuntimeError("a monitor capture is encoded before every caller was copied")
        header = dict(self.header)
        arrays: dict[str, Array] = {}
        for kind, copies in self.copies.items():
            callers = [c for c in copies if c is not None]
            readings = [[c.risk.readings.get(n, Reading(0.0, "")) for n in self.names]
                        for c in callers]
            peer_keys, peer_arrays = self.peers[kind]
            header[kind] = {"keys": self.keys[kind], "peers": peer_keys,
                            "why": [[r.why for r in row] for row in readings]}
            n, width = len(callers), 1 + len(self.names)
            arrays[f"{kind}.queries"] = np.array([c.queries for c in callers], np.int64)
            arrays[f"{kind}.risk"] = np.array(
                [[c.risk.raw, *(r.score for r in row)] for c, row in zip(callers, readings,
                                                                         strict=True)],
                np.float64).reshape(n, width)
            arrays[f"{kind}.episode"] = np.array(
                [c.risk.episode.as_row() for c in callers], np.float64).reshape(n, 4)
            arrays.update({f"{kind}.peers.{k}": v for k, v in peer_arrays.items()})
            for field in callers[0].fields if callers else ():
                parts = [c.fields[field] for c in callers]
                shape = parts[0].shape
                if all(p.shape == shape for p in parts):
                    arrays[f"{kind}.{field}"] = np.stack(parts)
                else:
                    arrays[f"{kind}.{field}"] = np.concatenate(parts)
                    arrays[f"{kind}.lengths.{field}"] = np.array([len(p) for p in parts],
                                                                 np.int64)
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        np.savez(out, **arrays)  # type: ignore[arg-type]  # numpy's stub: allow_pickle in kwds


def _copy_peers(table: Table) -> tuple[list[list[Any]], dict[str, Array]]:
    keys, arrays = table.peers.state()
    return [list(k) for k in keys], {k: np.array(v, copy=True) for k, v in arrays.items()}


class Fields:
    """One table's per-caller fields in a snapshot: stacked (every version) or concatenated
    with their lengths (version 5), read back caller by caller."""

    def __init__(self, kind: Kind, arrays: Mapping[str, Array], n: int) -> None:
        self.kind, self.arrays, self.n = kind, arrays, n
        self._offsets: dict[str, Array | None] = {}

    def _offsets_of(self, name: str) -> Array | None:
        if name not in self._offsets:
            lengths = self.arrays.get(f"{self.kind}.lengths.{name}")
            stacked = self.arrays[f"{self.kind}.{name}"]
            if lengths is None:
                if len(stacked) != self.n:
                    raise ConfigurationError(f"monitor snapshot's {self.kind}.{name} holds "
                                             f"{len(stacked)} callers, not {self.n}")
                self._offsets[name] = None
            else:
                lengths = np.asarray(lengths)
                if (lengths.shape != (self.n,) or lengths.dtype.kind not in "iu"
                        or (lengths < 0).any() or int(lengths.sum()) != len(stacked)):
                    raise ConfigurationError(
                        f"monitor snapshot's {self.kind}.{name} lengths do not fit its rows")
                self._offsets[name] = np.concatenate([[0], np.cumsum(lengths)])
        return self._offsets[name]

    def part(self, name: str, i: int) -> Array:
        """Caller `i`'s arrays of field `name`."""
        offsets = self._offsets_of(name)
        data: Array = self.arrays[f"{self.kind}.{name}"]
        if offsets is None:
            row: Array = data[i]
            return row
        return data[int(offsets[i]):int(offsets[i + 1])]

    def caller(self, i: int, names: Mapping[str, Any]) -> dict[str, Array]:
        """Caller `i`'s arrays of every field in `names` (a state's keys)."""
        return {k: self.part(k, i) for k in names}


def risk_of(queries: int, readings: dict[str, Reading], raw: float, row: Array) -> Risk:
    """A caller's risk as a snapshot keeps it: its readings, raw risk and episode row."""
    episode = Episode.from_row(row)
    return Risk(episode.level, episode.active, queries, readings, raw, episode)
