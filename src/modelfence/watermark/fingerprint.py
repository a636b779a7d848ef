"""A fingerprint that needs no watermarked answers: conferrable keyed points.

In the manner of conferrable adversarial examples (Lukas et al., ICLR 2021) and boundary
fingerprints: among keyed candidate points, keep those where models *copied from* the
protected model answer as it does and models *trained independently* do not. A suspect
that agrees with the protected model on many of them learnt its answers from it.

`build_fingerprint`:

1. Candidates, drawn by a generator seeded from `key` (a thief cannot know them): points just
   across the protected model's decision boundary (a binary search between two rows it labels
   differently, then a keyed step beyond the flip), and rows moved by keyed Gaussian noise.
   They are rounded to float32 (what the wire carries) before the protected model labels them.
2. Selection: surrogate copies (trained on the protected model's labels of the rows and of
   keyed noisy neighbours, stand-ins for thieves) and references (trained on the true labels),
   several families each; a point's conferrability is (copies agreeing) x (1 - references
   agreeing)^3; the top `points` are kept. When the protected model's own algorithm is known
   (`recipe`), models of it trained again with other seeds join copies, references and
   calibration: the innocent most like the protected model is the same recipe, retrained.
3. The null, calibrated on *held-out* references (other seeds and data, never used to choose
   points, of every family): their agreement counts on the kept points, fitted per family with
   a beta-binomial (the agreement of one model on many points is over-dispersed: a model agrees
   more or less everywhere, so the points are not independent trials). Families differ far more
   than seeds do (a smooth model agrees with a smooth protected model), so one distribution
   over all families would be both wrong in shape and powerless; instead each family gets its
   own component, made conservative (`fit_null`: upper bounds of mean and variance), and the
   test's p is the largest over the families: a suspect is compared with the family of
   independent models it most resembles.

`fingerprint_test` counts the suspect's agreements with the protected labels and reports that
beta-binomial upper tail, exact in log space.

What it can and cannot do (bench/fingerprint.py): a suspect that answers as the protected model
does (its weights, or a copy of very high fidelity) is identified strongly; a label-only copy
trained on a few thousand natural rows of low-dimensional tabular data agrees with it hardly
more than independent models of a similar family do, and the test, rightly, does not accuse it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..extras import require
from .references import DEFAULT_FAMILIES, Reference, train_recipe, train_references
from .stats import LN2, TestResult

Array = np.ndarray[Any, Any]
Labeler = Callable[[Array], Sequence[str]]

FORMAT = "modelfence-fingerprint"
#: Binary-search steps along a segment between two rows labelled differently.
SEARCH_STEPS = 12
#: Keyed step beyond the boundary, as a share of the segment: uniform in this range.
MARGIN = (0.02, 0.25)
#: Keyed Gaussian noise of perturbed rows, in each feature's standard deviations.
NOISE = (0.05, 0.6)
#: The null's standard deviation of agreement rates is never taken below this: models of one
#: family spread more than a few calibration models show (on the corpus's 3-class quantiles
#: victim, one MLP of 108 innocents agreed on 0.67 of the points where no calibration model
#: reached 0.49, which a floor of 0.02 put at 2^-15).
MIN_SD = 0.1
#: One-sided confidence of the upper bound on the references' variance.
VARIANCE_CONFIDENCE = 0.95
#: The null's family means are raised to their one-sided 95% upper bounds.
MEAN_Z = 1.645
#: Noise (in feature standard deviations) of the copies' extra training rows.
AUGMENT = (0.1, 0.3)
#: Models of the protected model's own recipe among the copies, the selectors (each) and the
#: calibrators.
RECIPE_SELECTORS, RECIPE_CALIBRATORS = 3, 4
#: Rows the selection and calibration models train on (a keyed sample of the data given).
TRAIN_ROWS = 2000


@dataclass(frozen=True)
class NullComponent:
    """The beta-binomial agreement of one family of independent models (or of all)."""

    family: str
    alpha: float
    beta: float
    models: int

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "alpha": self.alpha, "beta": self.beta,
                "mean_agreement": self.mean, "models": self.models}


@dataclass(frozen=True)
class Fingerprint:
    """Keyed points, the protected model's labels there, and the calibrated null."""

    points: Array  # (n, features) float64 holding float32 values
    labels: list[str]
    null: list[NullComponent]
    calibration: list[dict[str, Any]] = field(default_factory=list)
    copies: list[dict[str, Any]] = field(default_factory=list)
    key_id: str = ""

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def null_mean(self) -> float:
        """The largest mean agreement of any family of independent models."""
        return max(c.mean for c in self.null)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (plain floats, no NaN or infinity)."""
        return {
            "format": FORMAT, "v": 1, "key_id": self.key_id, "points": self.n,
            "inputs": [[float(v) for v in row] for row in self.points],
            "labels": list(self.labels),
            "null": {"distribution": "beta-binomial per family; p is the largest",
                     "components": [c.to_dict() for c in self.null]},
            "calibration": self.calibration, "copies": self.copies,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Fingerprint:
        if doc.get("format") != FORMAT:
            raise ConfigurationError("not a modelfence fingerprint")
        try:
            points = np.asarray(doc["inputs"], dtype=np.float64)
            labels = [str(v) for v in doc["labels"]]
            null = [NullComponent(str(c["family"]), float(c["alpha"]), float(c["beta"]),
                                  int(c["models"])) for c in doc["null"]["components"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigurationError(f"fingerprint: malformed document ({e})") from e
        if points.ndim != 2 or len(points) != len(labels) or not null or not all(
                c.alpha > 0 and c.beta > 0 for c in null):
            raise ConfigurationError("fingerprint: inputs, labels and null do not fit")
        return cls(points, labels, null, list(doc.get("calibration", [])),
                   list(doc.get("copies", [])), str(doc.get("key_id", "")))


def _labels(fn: Labeler, x: Array) -> Array:
    return np.asarray([str(v) for v in fn(x)], dtype=object)


def _rng(key: bytes, purpose: bytes) -> np.random.Generator:
    digest = hashlib.sha256(b"modelfence-fingerprint\x00" + purpose + b"\x00" + key).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def _f32(x: Array) -> Array:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def candidates(protected: Labeler, x: Array, key: bytes, n: int) -> Array:
    """`n` keyed candidate points: half across the protected boundary, half perturbed rows."""
    rng = _rng(key, b"candidates")
    base = _labels(protected, x)
    n_boundary = n // 2 if len(set(base.tolist())) >= 2 else 0
    out = [_boundary(protected, x, base, rng, n_boundary)] if n_boundary else []
    sd = np.maximum(x.std(axis=0), 1e-12)
    rows = x[rng.integers(0, len(x), n - n_boundary)]
    scale = rng.uniform(*NOISE, size=(len(rows), 1))
    out.append(rows + rng.standard_normal(rows.shape) * scale * sd)
    return _f32(np.concatenate(out))


def _boundary(protected: Labeler, x: Array, base: Array, rng: np.random.Generator,
              n: int) -> Array:
    i, j = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    for _ in range(50):
        a, b = rng.integers(0, len(x), 4 * n), rng.integers(0, len(x), 4 * n)
        keep = base[a] != base[b]
        i, j = np.concatenate([i, a[keep]]), np.concatenate([j, b[keep]])
        if len(i) >= n:
            break
    i, j = i[:n], j[:n]
    start, end, first = x[i], x[j], base[i]
    lo, hi = np.zeros(len(i)), np.ones(len(i))
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        same = _labels(protected, start + mid[:, None] * (end - start)) == first
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    t = np.clip(hi + rng.uniform(*MARGIN, size=len(i)), 0.0, 1.0)
    out: Array = start + t[:, None] * (end - start)
    return out


def build_fingerprint(protected: Labeler, x: Array, y: Sequence[Any] | Array, *, key: bytes,
                      points: int = 200, candidates_per_point: int = 50, copies: int = 8,
                      selectors: int = 10, calibrators: int = 30,
                      families: Sequence[str] = DEFAULT_FAMILIES,
                      recipe: Callable[[int], Any] | None = None,
                      key_id: str = "") -> Fingerprint:
    """Choose `points` conferrable keyed points and calibrate the null (module docstring).

    `x`, `y`: labelled rows of the protected model's domain (its training data is best: the
    references then see what an innocent competitor with the same data would). `copies`,
    `selectors`, `calibrators`: how many surrogate copies, selection references and held-out
    calibration references to train (each cycles through `families`). `recipe(seed)`, when
    the protected model's algorithm is known (`references.recipe_of`), makes unfitted models
    like it: a few with other seeds join the selectors and the calibration as a family of
    their own, so the points are ones where even the same algorithm, trained again, differs.
    """
    x = np.asarray(x, dtype=np.float64)
    y_arr = np.asarray([str(v) for v in y], dtype=object)
    if x.ndim != 2 or len(x) != len(y_arr) or len(x) < 20:
        raise ConfigurationError("fingerprint: need at least 20 labelled rows (n, features)")
    if points < 10:
        raise ConfigurationError("fingerprint: need at least 10 points")
    if min(copies, selectors) < 1 or calibrators < 3:
        raise ConfigurationError("fingerprint: need copies and selectors >= 1, "
                                 "calibrators >= 3")
    rng = _rng(key, b"models")
    all_x, all_y = x, y_arr  # the held-out references train on every row, as an innocent would
    if len(x) > TRAIN_ROWS:
        keep = np.sort(rng.permutation(len(x))[:TRAIN_ROWS])
        x, y_arr = x[keep], y_arr[keep]
    own = _labels(protected, x)
    if not set(own.tolist()) & set(y_arr.tolist()):
        raise ConfigurationError("fingerprint: the true labels share no class name with the "
                                 "protected model's answers (e.g. '1' and '1.0')")
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, 3)]
    cand = candidates(protected, x, key, max(points * candidates_per_point, 2 * points))
    target = _labels(protected, cand)
    # copies learn the protected model's answers off its training rows too (as a thief's
    # natural rows are): trained on its rows and keyed noisy neighbours, labelled by it
    sd = np.maximum(x.std(axis=0), 1e-12)
    xa = _f32(np.concatenate([x, *(x + s * rng.standard_normal(x.shape) * sd
                                   for s in AUGMENT)]))
    surrogate = train_references(xa, _labels(protected, xa), count=copies, seed=seeds[0],
                                 families=families, subsample=1.0 / (1 + len(AUGMENT)))
    if recipe is not None:
        surrogate += train_recipe(xa, _labels(protected, xa), recipe, count=RECIPE_SELECTORS,
                                  seed=seeds[0], subsample=1.0 / (1 + len(AUGMENT)),
                                  family="recipe copy")
    chooser = train_references(x, y_arr, count=selectors, seed=seeds[1], families=families,
                               subsample=0.7)
    if recipe is not None:
        # on every row, as the protected model was: only the seed differs
        chooser += train_recipe(x, y_arr, recipe, count=RECIPE_SELECTORS, seed=seeds[1])
    c = np.mean([_labels(m, cand) == target for m in surrogate], axis=0)
    r = np.mean([_labels(m, cand) == target for m in chooser], axis=0)
    score = conferrability(c, r) + 1e-9 * _rng(key, b"ties").random(len(cand))
    kept = np.sort(np.argsort(-score, kind="stable")[:points])
    pts, labels = cand[kept], target[kept]
    # held-out references: other seeds (and data: every row) than the selectors
    held = train_references(all_x, all_y, count=calibrators, seed=seeds[2], families=families)
    if recipe is not None:
        held += train_recipe(all_x, all_y, recipe, count=RECIPE_CALIBRATORS,
                             seed=seeds[2] + 7919)
    calibration = [_score(m, pts, labels) for m in held]
    null = fit_null([d["agreements"] for d in calibration],
                    [d["family"] for d in calibration], points)
    return Fingerprint(pts, [str(v) for v in labels], null, calibration,
                       [_score(m, pts, labels) for m in surrogate], key_id)


def conferrability(copies: Array, references: Array) -> Array:
    """How well a point tells copies from independent models: the share of copies that agree
    with the protected model times the share of references that do not (Lukas et al.), the
    latter cubed: a point where any family of references agrees makes that family's null
    wide. Measured on the corpus (bench/fingerprint.py): a copy of the weights of a 3-class MLP
    and a 10-class forest reached 2^-108 with the cube, 2^-61 and 2^-16 without."""
    out: Array = copies * (1.0 - references) ** 3
    return out


def _score(ref: Reference, pts: Array, labels: Array) -> dict[str, Any]:
    agree = int(np.sum(_labels(ref, pts) == labels))
    return {"name": ref.name, "family": ref.family, "agreements": agree,
            "rate": agree / len(labels)}


def fit_null(agreements: Sequence[int], families: Sequence[str], n: int
             ) -> list[NullComponent]:
    """One conservative beta-binomial per family of reference models.

    Each family's variance is the largest of: its own sample variance, the variance pooled
    within families at its one-sided 95% chi-square upper bound, and `MIN_SD` squared; its
    mean agreement is raised to its one-sided 95% upper bound (`MEAN_Z`).
    A suspect of any family is then tested against the family it most resembles: the
    test's p is the largest over the components.
    """
    require("local", "the fingerprint's null", "scipy")
    from scipy.stats import chi2

    rates = np.asarray(agreements, dtype=np.float64) / n
    if len(rates) < 3 or len(rates) != len(families):
        raise ConfigurationError("fingerprint: the null needs at least 3 reference models")
    by_family: dict[str, list[float]] = {}
    for f, v in zip(families, rates, strict=True):
        by_family.setdefault(f, []).append(float(v))

    def upper(var: float, dof: int) -> float:
        return var * dof / float(chi2.ppf(1.0 - VARIANCE_CONFIDENCE, dof)) if dof else 0.0

    dof_w = len(rates) - len(by_family)
    within = sum(float(np.sum((np.asarray(v) - np.mean(v)) ** 2)) for v in by_family.values())
    var_w = upper(within / dof_w, dof_w) if dof_w else 0.0
    out = []
    for family, v in sorted(by_family.items()):
        var_f = float(np.var(v, ddof=1)) if len(v) > 1 else 0.0
        var = max(var_f, var_w, MIN_SD**2)
        mean = float(np.mean(v)) + MEAN_Z * math.sqrt(var / len(v))
        mean = min(max(mean, 0.5 / n), 1.0 - 0.5 / n)
        out.append(_component(family, mean, var, n, len(v)))
    return out


def _component(family: str, mean: float, var: float, n: int, models: int) -> NullComponent:
    """The beta-binomial with this mean and variance of the agreement rate."""
    binom = mean * (1.0 - mean) / n
    rho = (var - binom) / (mean * (1.0 - mean) - binom) if var > binom else 0.0
    rho = min(max(rho, 1e-6), 0.999)
    conc = 1.0 / rho - 1.0
    return NullComponent(family, mean * conc, (1.0 - mean) * conc, models)


def log_betabinom_sf(x: int, n: int, a: float, b: float) -> float:
    """ln P[BetaBinomial(n, a, b) >= x], exact (log-sum-exp of the terms)."""
    if x <= 0:
        return 0.0
    if x > n:
        return -math.inf

    def lbeta(p: float, q: float) -> float:
        return math.lgamma(p) + math.lgamma(q) - math.lgamma(p + q)

    base = math.lgamma(n + 1) - lbeta(a, b)
    terms = [base - math.lgamma(j + 1) - math.lgamma(n - j + 1) + lbeta(j + a, n - j + b)
             for j in range(x, n + 1)]
    top = max(terms)
    return min(0.0, top + math.log(math.fsum(math.exp(t - top) for t in terms)))


def fingerprint_test(fp: Fingerprint, suspect_labels: Sequence[Any]) -> TestResult:
    """The suspect's agreements with the protected labels on the fingerprint, against the
    calibrated null of independently trained models."""
    got = [str(v) for v in suspect_labels]
    if len(got) != fp.n:
        raise ConfigurationError(f"fingerprint: {len(got)} suspect answers for {fp.n} points")
    agree = sum(g == e for g, e in zip(got, fp.labels, strict=True))
    log2_p = max(log_betabinom_sf(agree, fp.n, c.alpha, c.beta) for c in fp.null) / LN2
    # never below the share of held-out references agreeing at least as much: where an
    # independently trained model answers as the protected one does (a deterministic learner
    # on the same rows is the same model), nothing here can tell a copy from it
    reached = sum(int(d["agreements"]) >= agree for d in fp.calibration)
    if reached:
        log2_p = max(log2_p, math.log2((1 + reached) / (1 + len(fp.calibration))))
    return TestResult(
        "fingerprint test",
        f"the suspect was asked {fp.n} keyed fingerprint points (chosen because copies of the "
        "protected model answer them as it does and independently trained models do not) and "
        f"gave the protected model's answer on {agree}. p is the probability that a model "
        "trained independently of the protected model, of any family, agrees on at least as "
        "many: for each of the "
        f"{len(fp.null)} families of reference models, a beta-binomial fitted conservatively "
        "(upper bounds of mean and variance) to the agreement of that family's held-out "
        "references (models never used to choose the points; "
        f"{len(fp.calibration)} in all) gives a tail probability, and p is the largest of "
        f"them (the most similar family's mean agreement is {fp.null_mean:.3f}), and never "
        "below the share of those references that agree at least as much as the suspect "
        f"({reached} of {len(fp.calibration)})",
        fp.n, agree, fp.null_mean, max(log2_p, -1e9))
