"""What a thief keeps: the fidelity of a copy trained on the answers it was shown.

Each thief trains a label-only copy (the red team's MLP thief on standardised inputs, on a
smaller iteration budget) on its queries and the top-1 answers it received, and is scored by
agreement with the model on the world's never-queried rows. Beside it, the same copy on the
answers an undefended model gives (what the defence costs the thief), and a thief that knows the
defence. That thief reads what an answer shows: whether probabilities came with it, and the
decimal grid they lie on (a band that rounds or withholds shows itself; a band name is not
sent unless the operator sets `reveal_band`). It suspects every answer whose look differs
from that of its first answers (before any monitor could have flagged it), and, knowing
that misinformation only touches rows off the data, only the rows it made up itself. Then it
tries each way of undoing a lie it knows and keeps its best (an upper bound: a real thief
cannot tell in advance which way wins), net of what the same way does to a copy of
undefended answers (see `fidelities`):

- ``drop``: leave the suspected answers out of training;
- ``flip`` (binary models): flip them, the rule that undid a lie that was always the other
  class;
- ``reask``: ask each suspected row twice more, nudged by 0.1% of each feature's spread (a
  lie keyed by the exact input changes with it), and take the majority of the three. The
  re-asks are answered in the band the row was answered in: the thief is still flagged.

Copies are memoised by their training labels, so a defence that changed nothing costs one
fit.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..summary import Array
from .harness import Gateway, Replay

#: Re-asks are nudged by this share of each feature's standard deviation.
NUDGE = 1e-3
#: L-BFGS iterations of a copy (the red team's thief takes up to 200; on made-up rows with
#: lies among the labels it uses them all, and the corpus fits thousands of copies).
COPY_ITER = 80
#: Copies (seeds) a defence-aware strategy's apparent gain is confirmed on.
CONFIRM = 12


def model_proba(world: Any, x: Array) -> Array:
    """The victim's probabilities for `x` (float64, as the monitor takes them)."""
    p = world.victim.ask(x).proba
    assert p is not None
    out: Array = np.asarray(p, dtype=np.float64)
    return out


class _Labels:
    """The model's top-1 on a world's never-queried rows, for the last few worlds (a world
    holds arrays, so it is not hashable: kept by identity, with the world itself)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._seen: dict[int, tuple[Any, Array]] = {}

    def __call__(self, world: Any) -> Array:
        hit = self._seen.get(id(world))
        if hit is not None and hit[0] is world:
            return hit[1]
        labels: Array = np.asarray(world.victim.ask(world.test_x).labels)
        if len(self._seen) >= self.size:
            self._seen.pop(next(iter(self._seen)))
        self._seen[id(world)] = (world, labels)
        return labels


#: What a copy is compared with; per process, like the worlds themselves.
victim_labels = _Labels()


class Copies:
    """Label-only copies of one victim from one thief's queries, fitted once per labelling."""

    def __init__(self, world: Any, x: Array, seed: int) -> None:
        self.world, self.x, self.seed = world, x, seed
        self.k = int(world.summary.n_classes)
        self._memo: dict[bytes, float] = {}

    def fidelity(self, labels: Array, rows: Array | None = None, fits: int = 1) -> float:
        """Agreement with the model on its test rows of a copy trained on (x, labels): the
        mean over `fits` copies trained from different seeds."""
        return float(np.mean([self._one(labels, rows, self.seed + i) for i in range(fits)]))

    def _one(self, labels: Array, rows: Array | None, seed: int) -> float:
        keep = np.ones(len(labels), dtype=bool) if rows is None else rows
        key = hashlib.blake2b(np.asarray(labels, np.int64).tobytes()
                              + np.packbits(keep).tobytes() + seed.to_bytes(8, "big"),
                              digest_size=16).digest()
        if key not in self._memo:
            if not keep.any():
                self._memo[key] = 0.0
            else:
                guess = copy_predict(self.x[keep], np.asarray(labels)[keep],
                                     self.world.test_x, seed)
                self._memo[key] = float(np.mean(guess == victim_labels(self.world)))
        return self._memo[key]


def copy_predict(x: Array, labels: Array, test_x: Array, seed: int) -> Array:
    """A label-only copy trained on (x, labels), asked about `test_x`: the red team's MLP
    thief (64 hidden units, standardised inputs, L-BFGS) with a budget of `COPY_ITER`
    iterations, so thousands of copies fit in the corpus's time."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(labels)
    if len(classes) < 2:
        return np.full(len(test_x), classes[0] if len(classes) else 0)
    model = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(64,), solver="lbfgs", alpha=1e-3, max_iter=COPY_ITER,
        max_fun=2 * COPY_ITER, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the budget is the point
        model.fit(x, labels)
    out: Array = np.asarray(model.predict(test_x))
    return out


def fidelities(gw: Gateway, rep: Replay, stream: Any, proba: Array, world: Any, *,
               seed: int) -> dict[str, Any]:
    """The naive copy's fidelity defended and undefended, and the defence-aware best.

    A strategy's gain is what it adds over the naive copy against the defended answers, less
    whatever the same strategy (same rows dropped, flipped or re-asked) adds against the
    undefended ones: dropping, flipping or re-asking moves a copy's fidelity by a point or
    two on its own, lies or not, and only the part due to the defence is the thief's gain
    from knowing it. A strategy no better than naive gains nothing.

    A copy trained on a few hundred made-up rows on a short budget moves by several points
    when a handful of its labels change, lies or not; so a strategy that looks better on one
    copy is judged on the mean of `CONFIRM` copies from different seeds, naive and control
    alike, before its gain counts."""
    copies = Copies(world, np.asarray(stream.x, dtype=np.float64), seed)
    undefended = copies.fidelity(rep.truth_labels)
    defended = copies.fidelity(rep.labels)
    best, how, gain = defended, "naive", 0.0
    for name, (labels, rows, control) in knowing_views(gw, rep, stream, world, seed).items():
        f = copies.fidelity(labels, rows)
        if f <= defended:  # no better than naive: nothing gained from knowing
            continue
        f = copies.fidelity(labels, rows, CONFIRM)
        naive = copies.fidelity(rep.labels, None, CONFIRM)
        if f <= naive:
            continue
        g = (f - naive) - max(0.0, copies.fidelity(control, rows, CONFIRM)
                              - copies.fidelity(rep.truth_labels, None, CONFIRM))
        if g > gain:
            best, how, gain = f, name, g
    return {"fidelity_defended": defended, "fidelity_undefended": undefended,
            "fidelity_knowing": best, "knowing_strategy": how,
            "knowing_gain_pts": 100.0 * gain}


def knowing_views(gw: Gateway, rep: Replay, stream: Any, world: Any, seed: int
                  ) -> dict[str, tuple[Array, Array | None, Array]]:
    """(labels, rows kept, the same strategy on undefended answers) per defence-aware
    strategy."""
    suspect = suspected(rep, reveal=gw.reveal_band,
                        withheld=np.asarray(gw.withholds, dtype=bool)[rep.band])
    if stream.truth is not None:  # natural rows are never lied to: only its own rows
        suspect &= np.asarray(stream.truth) < 0
    if not suspect.any():
        return {}
    truth = rep.truth_labels
    views: dict[str, tuple[Array, Array | None, Array]] = {
        "drop": (rep.labels, ~suspect, truth)}
    if gw.monitor.summary.n_classes == 2:
        flipped, control = rep.labels.copy(), truth.copy()
        flipped[suspect] = 1 - flipped[suspect]
        control[suspect] = 1 - control[suspect]
        views["flip"] = (flipped, None, control)
    asked, control = reask(gw, rep, stream, world, suspect, seed)
    views["reask"] = (asked, None, control)
    return views


#: Answers before this many queries are the thief's reference look (no monitor flags sooner).
FIRST = 20
#: The finest decimal grid a thief checks answers against (float32 carries about 7 digits).
GRIDS = 4


def looks(rep: Replay, withheld: Array) -> Array:
    """What each answer shows of its band: -1 where probabilities are withheld, else the
    fewest decimals (0-4) its probabilities are written with, 5 for finer ones."""
    p = np.asarray(rep.proba, dtype=np.float64)
    out = np.full(len(p), GRIDS + 1, dtype=np.int8)
    for d in range(GRIDS, -1, -1):  # coarsest grid last, so it wins
        scaled = p * 10.0**d
        out[np.all(np.abs(scaled - np.round(scaled)) < 1e-3, axis=1)] = d
    out[withheld] = -1
    return out


def suspected(rep: Replay, *, reveal: bool = False, withheld: Array | None = None) -> Array:
    """Answers that look different from most of the first `FIRST` (or name another band)."""
    if reveal:
        out: Array = rep.band != rep.band[0] if len(rep) else np.zeros(0, bool)
        return out
    look = looks(rep, np.zeros(len(rep), bool) if withheld is None else withheld)
    if not len(look):
        return np.zeros(0, bool)
    values, counts = np.unique(look[:FIRST], return_counts=True)
    usual = values[np.argmax(counts)]
    out = look != usual
    out[:FIRST] = False
    return out


def reask(gw: Gateway, rep: Replay, stream: Any, world: Any, suspect: Array,
          seed: int) -> tuple[Array, Array]:
    """Labels after asking each suspect row twice more, nudged, and taking the majority; and
    the same votes over the model's own answers (what re-asking does without a defence)."""
    idx = np.nonzero(suspect)[0]
    x = np.asarray(stream.x, dtype=np.float64)[idx]
    who = [stream.principals[i] for i in idx]
    rng = np.random.default_rng(seed + 7)
    scale = np.asarray(world.summary.scale, dtype=np.float64)
    shown, own = [], []
    for _ in range(2):
        nudged = x + rng.normal(0.0, NUDGE, x.shape) * scale
        proba = model_proba(world, nudged)
        shown.append(gw.answer(rep.band[idx], proba, nudged, who).argmax(axis=1))
        own.append(proba.argmax(axis=1))
    return (_vote(rep.labels, idx, shown[0], shown[1]),
            _vote(rep.truth_labels, idx, own[0], own[1]))


def _vote(labels: Array, idx: Array, a: Array, b: Array) -> Array:
    """Majority of (labels[idx], a, b); the first answer where all three differ."""
    first = labels[idx]
    out: Array = labels.copy()
    out[idx] = np.where((first == a) | (first == b), first, np.where(a == b, a, first))
    return out
