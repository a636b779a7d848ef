"""How much and how fast a caller asks, against its own history and its peers'.

`PeerStats` is one bounded table per model of what its callers do; `VolumeVelocity` reads
it for "more than its peers". Volume is weak evidence alone (batch jobs are common), so it
scores gently unless a caller is far beyond everyone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from .detector_base import Detector, Reading, log_ramp
from .facts import Rows
from .rings import Ring, _bad_state
from .summary import Array, Summary

if TYPE_CHECKING:
    from .shares import Shared

class PeerStats:
    """What a model's callers do, for "more than its peers": one bounded table per model.

    Each caller reports its volume over the last `HOURS` hours and its busiest hour in them as
    it is observed. The table keeps the `capacity` most recent callers (LRU). Quantiles are read
    from a sorted view rebuilt, when read, if the hour has turned or after `resort_every`
    reports (after as many reports as there are callers, while they are fewer), so a read is
    O(1) and a rebuild (two sorts of at most `capacity` values) falls on under 1% of observes;
    a caller with too few peers to compare reads nothing (`callers`) and rebuilds nothing. A
    caller's own entry is left out of its comparison (by its rank in the sorted view): a thief
    is not its own peer. Values are as of each caller's last query, a bias towards the busy
    that only raises the bar.
    """

    HOURS = 48
    FIELDS = ("volume", "busiest")

    def __init__(self, capacity: int = 1024, resort_every: int = 128) -> None:
        self.capacity, self.resort_every = capacity, resort_every
        self.slots: OrderedDict[str, int] = OrderedDict()
        self.values: Array = np.zeros((2, capacity))
        self.hour: Array = np.full(capacity, -1, np.int64)  # hour of each caller's last report
        self.sorted: list[Array] = [np.zeros(0), np.zeros(0)]
        self.rank: Array = np.full((2, capacity), -1, np.int64)
        self.pending, self.sorted_hour = 0, -1
        self.latest = -1  # the latest hour reported

    @property
    def callers(self) -> int:
        """Callers in the table (live or not): an upper bound on anyone's peers, plus one."""
        return len(self.slots)

    def update(self, key: str, volume: float, busiest: float, hour: int) -> None:
        slot = self.slots.get(key)
        joined = slot is None
        if slot is None:
            if len(self.slots) < self.capacity:
                slot = len(self.slots)
            else:
                _, slot = self.slots.popitem(last=False)
                self.rank[:, slot] = -1  # the sorted view holds the old caller's values
            self.slots[key] = slot
        else:
            self.slots.move_to_end(key)
        self.values[0, slot], self.values[1, slot] = volume, busiest
        self.hour[slot] = max(int(self.hour[slot]), hour) if not joined else hour
        self.pending += 1
        self.latest = max(self.latest, hour)

    def _resort(self, hour: int) -> None:
        n = len(self.slots)
        live = np.nonzero(self.hour[:n] > hour - self.HOURS)[0]
        self.rank[:] = -1
        for f in range(2):
            order = np.argsort(self.values[f, live], kind="stable")
            self.sorted[f] = self.values[f, live[order]]
            self.rank[f, live[order]] = np.arange(len(live))
        self.pending, self.sorted_hour = 0, hour

    def quantile(self, field: str, q: float, key: str) -> tuple[float, int]:
        """(q-quantile of `field` over the peers of `key`, how many peers)."""
        if self.pending >= min(self.resort_every, len(self.slots)) or (
                self.latest > self.sorted_hour):
            self._resort(max(self.latest, self.sorted_hour))
        f = self.FIELDS.index(field)
        s = self.sorted[f]
        slot = self.slots.get(key)
        skip = int(self.rank[f, slot]) if slot is not None else -1
        n = len(s) - (skip >= 0)
        if n <= 0:
            return 0.0, 0

        def at(k: int) -> float:
            return float(s[k + 1 if 0 <= skip <= k else k])

        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        return at(lo) + (at(hi) - at(lo)) * (pos - lo), n

    def state(self) -> tuple[list[list[Any]], dict[str, Array]]:
        """(keys with their slots in LRU order, arrays): what a snapshot keeps."""
        keys = [[k, s] for k, s in self.slots.items()]
        return keys, {
            "values": self.values, "hour": self.hour, "rank": self.rank,
            "sorted0": self.sorted[0], "sorted1": self.sorted[1],
            "at": np.array([self.pending, self.sorted_hour, self.latest], np.int64),
        }

    def load(self, keys: list[list[Any]], state: Mapping[str, Array]) -> None:
        values, hour, rank = (np.asarray(state[k]) for k in ("values", "hour", "rank"))
        sorted_ = [np.asarray(state[f"sorted{f}"], np.float64) for f in range(2)]
        at = np.asarray(state["at"])
        slots: OrderedDict[str, int] = OrderedDict()
        for key, slot in keys:
            if not (isinstance(key, str) and isinstance(slot, int) and 0 <= slot < self.capacity):
                raise _bad_state("peer table entry")
            slots[key] = slot
        if (values.shape != self.values.shape or hour.shape != self.hour.shape
                or rank.shape != self.rank.shape or at.shape != (3,)
                or len(slots) > self.capacity or sorted(slots.values()) != list(range(len(slots)))
                or any(s.ndim != 1 or len(s) > self.capacity for s in sorted_)
                or any(r.min() < -1 or r.max() >= len(s)
                       for r, s in zip(rank, sorted_, strict=True))):
            raise _bad_state("peer table does not fit its capacity")
        self.slots, self.sorted = slots, sorted_
        self.values = values.astype(np.float64)
        self.hour, self.rank = hour.astype(np.int64), rank.astype(np.int64)
        self.pending, self.sorted_hour, self.latest = int(at[0]), int(at[1]), int(at[2])



class VolumeVelocity(Detector):
    """Volume and velocity against the caller's own history and its peers'.

    Heavy and bursty use is common and benign (batch scoring, nightly jobs), and a patient
    thief looks like anyone, so volume is weak evidence and scores gently: at most `GENTLE`
    (0.2), enough to add to other detectors' evidence through the noisy-OR, not enough to flag
    a caller alone. The larger of two signals counts:

    - velocity: the last 10 minutes' rate against the caller's own rate before them (5x to 50x
      ramps from 0 to 1) and against its peers' busiest hour (1x to 4x); GENTLE times the
      smaller ramp. Needs an hour of the caller's own history and `min_peers` peers.
    - volume: queries in the last 48 hours against the peers' 99th percentile, 2x to 20x ramps
      to GENTLE. Only the extreme flags alone: beyond `EXTREME` (20x) the peers' 99th
      percentile, with at least `min_peers` peers and `min_volume` queries, scores from 0.5
      up to 1 at 100x.

    State: per-minute counts for the last hour and per-hour counts for the last 48, indexed by
    time, so a caller idle for a day costs nothing to catch up; under a kilobyte whatever the
    volume. A clock that goes backwards (replicas' clocks differ) counts in the newest bucket.
    """

    name = "volume"
    sees_repeats = True  # load is load, repeated or not
    GENTLE, EXTREME = 0.2, 20.0
    MINUTES, HOURS, RECENT = 60, PeerStats.HOURS, 10

    def __init__(self, summary: Summary, *, peers: PeerStats | None = None, key: str = "",
                 min_peers: int = 5, min_volume: int = 10_000) -> None:
        super().__init__(summary)
        self.peers = peers if peers is not None else PeerStats()
        self.key, self.min_peers, self.min_volume = key, min_peers, min_volume
        # plain lists: a few int updates per observe cost less than numpy's per-call overhead
        self.minutes, self.hours = [0] * self.MINUTES, [0] * self.HOURS
        self.started, self.minute, self.first = False, 0, 0  # minutes since the epoch
        self.volume = 0  # sum of `hours`, kept as buckets fill and expire
        self.busiest = 0  # max of `hours`, kept likewise (not taken over 48 buckets a query)

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, peers=shared.peers, key=key)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        self.count(len(features), now)

    def take(self, rows: Rows, now: float) -> None:
        self.count(len(rows), now)

    def count(self, n: int, now: float) -> None:
        """`n` queries at unix time `now`."""
        if not n:
            return
        self._advance(int(now // 60))
        hour = self.minute // 60
        self.minutes[self.minute % self.MINUTES] += n
        bucket = hour % self.HOURS
        self.hours[bucket] += n
        self.volume += n
        self.busiest = max(self.busiest, self.hours[bucket])
        self.peers.update(self.key, float(self.volume), float(self.busiest), hour)

    def _advance(self, minute: int) -> None:
        """Move the clock to `minute`, emptying the buckets it passes."""
        if not self.started:
            self.started, self.minute, self.first = True, minute, minute
            return
        if minute <= self.minute:
            return
        for m in range(self.minute + 1, min(minute, self.minute + self.MINUTES) + 1):
            self.minutes[m % self.MINUTES] = 0
        old, new = self.minute // 60, minute // 60
        for h in range(old + 1, min(new, old + self.HOURS) + 1):
            self.volume -= self.hours[h % self.HOURS]
            self.hours[h % self.HOURS] = 0
        if new > old:
            self.busiest = max(self.hours)
        self.minute = minute

    def score(self) -> Reading:
        if not self.started:
            return Reading(0.0, "no queries yet")
        volume, hours = self.volume, self.HOURS
        if self.peers.callers - 1 < self.min_peers:  # too few even if all were live
            few = max(self.peers.callers - 1, 0)
            return Reading(0.0, lambda: f"{volume} queries in {hours} h; {few} peers, too few "
                                        "to compare")
        v99, peers = self.peers.quantile("volume", 0.99, self.key)
        if peers < self.min_peers:
            return Reading(0.0, lambda: f"{volume} queries in {hours} h; {peers} peers, too "
                                        "few to compare")
        ratio = self.volume / max(v99, 1.0)
        best = self.GENTLE * log_ramp(ratio, 2.0, self.EXTREME)
        if ratio > self.EXTREME and self.volume >= self.min_volume:
            best = 0.5 + 0.5 * log_ramp(ratio, self.EXTREME, 5.0 * self.EXTREME)
        why: str | Callable[[], str] = partial(
            "{} queries in {} h, {:.1f}x the 99th percentile of {} peers".format,
            volume, hours, ratio, peers)
        history = min(self.minute - self.first, self.HOURS * 60) - self.RECENT
        last = self.minute % self.MINUTES + 1  # the last RECENT buckets, wrapping around
        recent = sum(self.minutes[max(0, last - self.RECENT):last]) + sum(
            self.minutes[self.MINUTES + min(0, last - self.RECENT):])
        if history >= 60 and recent:
            busiest, _ = self.peers.quantile("busiest", 0.99, self.key)
            own = max((self.volume - recent) / history, 0.1)  # queries a minute before
            to_own = recent / self.RECENT / own
            to_peers = recent * (60 / self.RECENT) / max(busiest, 1.0)
            fast = self.GENTLE * min(log_ramp(to_own, 5.0, 50.0), log_ramp(to_peers, 1.0, 4.0))
            if fast > best:
                best = fast
                why = (f"{recent} queries in {self.RECENT} min, {to_own:.0f}x its own rate and "
                       f"{to_peers:.1f}x the busiest hour of {peers} peers")  # rare: eager
        return Reading(best, why)

    def rings(self) -> dict[str, Ring]:
        return {}

    def state(self) -> dict[str, Array]:
        clock = np.array([self.started, self.minute, self.first], np.int64)
        return {"minutes": np.array(self.minutes, np.int64),
                "hours": np.array(self.hours, np.int64), "clock": clock}

    def load(self, state: Mapping[str, Array]) -> None:
        minutes, hours, clock = (np.asarray(state[k]) for k in ("minutes", "hours", "clock"))
        if (minutes.shape != (self.MINUTES,) or hours.shape != (self.HOURS,)
                or clock.shape != (3,) or minutes.dtype.kind not in "iu"
                or hours.dtype.kind not in "iu" or (minutes < 0).any() or (hours < 0).any()):
            raise _bad_state("volume counts")
        self.minutes, self.hours = minutes.tolist(), hours.tolist()
        self.started, self.minute, self.first = bool(clock[0]), int(clock[1]), int(clock[2])
        self.volume = sum(self.hours)
        self.busiest = max(self.hours)

    @property
    def nbytes(self) -> int:
        """As stored in a snapshot (the lists hold small ints of 8 bytes' range)."""
        return 8 * (self.MINUTES + self.HOURS + 3)
