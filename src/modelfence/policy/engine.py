"""The Cedar policy engine: parsed once, swapped whole on reload, fail closed on error.

Decisions use a pre-parsed `PolicySet` (~126 µs per decision when parsed once, up to ~1 ms
when parsing strings per call), and the request path asks `decide_call`, which keeps each
decision for the requests it stands for (cache.py: ~12 µs on a hit). Policies are validated
against the schema at load, so a mistyped attribute refuses to start instead of silently
never matching.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, PolicyError
from .sources import Statement, read_statements

if TYPE_CHECKING:
    from ..kernel.call import Caller, ModelFacts
    from .cache import DecisionCache
    from .request import Facts

log = logging.getLogger("modelfence.policy")

PACKAGE_DIR = Path(__file__).parent
DEFAULT_SCHEMA = PACKAGE_DIR / "schema.cedarschema"
DEFAULT_POLICY = PACKAGE_DIR / "default.cedar"
_ENTITY_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class PolicyBundle:
    """One validated, parsed policy set and where each policy came from."""

    policy_set: Any
    statements: tuple[Statement, ...]
    loaded_at: float

    @property
    def text(self) -> str:
        return "\n".join(s.text for s in self.statements)

    def label(self, cedar_id: str) -> str:
        """Cedar's `policyN` → the policy's @id or file:line."""
        found = self.statement(cedar_id)
        return found.label if found else cedar_id

    def statement(self, cedar_id: str) -> Statement | None:
        if cedar_id.startswith("policy") and cedar_id[6:].isdigit():
            idx = int(cedar_id[6:])
            if idx < len(self.statements):
                return self.statements[idx]
        return None


def load_bundle(paths: list[Path], schema_path: Path) -> PolicyBundle:
    import cedarpy

    try:
        schema_text = schema_path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"{schema_path}: cannot read schema: {exc.strerror}") from None
    try:
        schema = cedarpy.Schema.from_str(schema_text)
    except ValueError as exc:
        raise ConfigurationError(f"{schema_path}: invalid schema: {' '.join(str(exc).split())}"
                                 ) from None
    return bundle_from_statements(read_statements(paths), schema_path, schema=schema)


def bundle_from_statements(statements: list[Statement], schema_path: Path, *,
                           schema: Any = None, loaded_at: float | None = None) -> PolicyBundle:
    """Validate parsed statements against the schema and build the policy set."""
    import cedarpy

    if schema is None:
        schema = cedarpy.Schema.from_str(schema_path.read_text())
    text = "\n".join(s.text for s in statements)
    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        err = result.errors[0]
        where = _statement_for(statements, err.policy_id)
        message = " ".join(err.error.split())
        prefix = f"{where.file}:{where.line}: policy {where.label!r}" if where else "policies"
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise ConfigurationError(f"{prefix}: {message}{more}")
    return PolicyBundle(cedarpy.PolicySet.from_str(text), tuple(statements),
                        loaded_at if loaded_at is not None else time.time())


def _statement_for(statements: list[Statement], cedar_id: str) -> Statement | None:
    if cedar_id.startswith("policy") and cedar_id[6:].isdigit():
        idx = int(cedar_id[6:])
        if idx < len(statements):
            return statements[idx]
    return None


def _position(cedar_id: str) -> tuple[int, str]:
    """`policy12` → 12: where the policy stands in the set (other ids after, by name)."""
    if cedar_id.startswith("policy") and cedar_id[6:].isdigit():
        return int(cedar_id[6:]), ""
    return 1 << 62, cedar_id


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    policies: tuple[str, ...]   # the determining policies (permits if allowed, forbids if not)
    errors: tuple[str, ...] = ()
    shaping: tuple[str, ...] = ()  # output bands the determining permits pin (@shaping)


class PolicyEngine:
    """Holds the current bundle and its decision cache; `decide_call` is the only call on
    the request path (`decide` evaluates one prepared request, uncached: the CLI's check)."""

    def __init__(self, paths: list[Path], schema_path: Path, *,
                 cache_size: int | None = None) -> None:
        from .cache import DEFAULT_SIZE

        self.paths = paths
        self.schema_path = schema_path
        self._bundle: PolicyBundle | None = None
        self._entities: dict[str, Any] = {}  # entities JSON → parsed; the same key asks again
        #: most decisions kept (`decide_call`); 0 evaluates every request
        self.cache_size = DEFAULT_SIZE if cache_size is None else cache_size
        self._decisions: DecisionCache | None = None

    @property
    def bundle(self) -> PolicyBundle:
        if self._bundle is None:
            raise PolicyError("no policy set is loaded")
        return self._bundle

    def load(self) -> PolicyBundle:
        """Load and validate the files; on error raise and keep the current set."""
        bundle = load_bundle(self.paths, self.schema_path)
        self.use(bundle)
        return bundle

    def use(self, bundle: PolicyBundle) -> None:
        """Serve `bundle` from now on, with a new, empty decision cache of its own."""
        from .cache import DecisionCache
        from .reads import context_reads
        from .request import CONTEXT_VALUES

        reads = context_reads(bundle.text, CONTEXT_VALUES)
        if reads is None:
            log.info("policy decisions are not cached: the policies read context "
                     "attributes this gateway does not send")
        self._decisions = None if reads is None else DecisionCache(reads)
        self._bundle = bundle

    def decide_call(self, principal: Caller, action: str, model: str, attributes: ModelFacts,
                    facts: Facts) -> Verdict:
        """The decision for one call, from the cache when an equal request was decided."""
        from .request import cedar_request, entities_json

        if facts.now is None:  # one clock for the cache key and the request
            facts = dataclasses.replace(facts, now=time.time())
        entities = entities_json(principal, model, attributes)
        cache, size = self._decisions, self.cache_size
        key = None
        if cache is not None and size > 0:
            key = cache.key(action, entities, principal, facts)
            hit = cache.get(key)
            if hit is not None:
                return hit
        request, _ = cedar_request(principal, action, model, attributes, facts,
                                   entities=entities)
        verdict = self.decide(request, entities)  # raises on errors: those are not kept
        if key is not None and cache is self._decisions:  # not reloaded meanwhile
            assert cache is not None
            cache.put(key, verdict, size)
        return verdict

    def decide(self, request: dict[str, Any], entities: str) -> Verdict:
        """One decision. Any evaluation error denies (an erroring forbid might have matched)."""
        import cedarpy

        bundle = self.bundle
        try:
            parsed = self._entities.get(entities)
            if parsed is None:
                if len(self._entities) >= _ENTITY_CACHE_MAX:
                    self._entities.clear()
                parsed = self._entities[entities] = cedarpy.Entities.from_json_str(entities)
            result = cedarpy.is_authorized(request, bundle.policy_set, parsed)
        except Exception as exc:
            raise PolicyError(f"policy engine failed: {exc.__class__.__name__}") from None
        diagnostics = result.diagnostics
        # Cedar gives the reasons in no fixed order: file order, so that equal requests
        # (and a cached decision) name them alike
        reasons = sorted(diagnostics.reasons, key=_position)
        labels = tuple(bundle.label(r) for r in reasons)
        errors = tuple(" ".join(e.split()) for e in diagnostics.errors)
        if errors:
            raise PolicyError("policy evaluation failed: " + "; ".join(errors)[:500])
        allowed = result.decision == cedarpy.Decision.Allow
        pins = tuple(st.shaping for r in reasons
                     if (st := bundle.statement(r)) is not None and st.shaping) if allowed else ()
        return Verdict(allowed, labels, shaping=pins)
