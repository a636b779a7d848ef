"""Relative paths are resolved by their type (`ConfigPath`, `StoreUrl`, `UpstreamUrl`),
not by a list of fields: a new path field needs no change to the resolver."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel, Field

from modelfence.config import (
    ConfigPath,
    FromConfigDir,
    Settings,
    StoreUrl,
    Strict,
    load_settings,
    resolve_paths,
    settings_from_mapping,
)

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


class _Leaf(Strict):
    key: ConfigPath
    note: str = "keys/not-a-path"


class _NewFeature(Strict):
    """A section written after the resolver: nothing in config/paths.py names its fields."""

    model_file: ConfigPath
    extra_files: list[ConfigPath] = Field(default_factory=list)
    maybe: ConfigPath | None = None
    store: StoreUrl = "sqlite:///feature.db"
    leaves: list[_Leaf] = Field(default_factory=list)
    plain: Path = Path("kept/as/written")  # not a ConfigPath: left alone


def test_a_new_models_config_paths_resolve_without_touching_the_resolver(tmp_path: Path
                                                                          ) -> None:
    f = _NewFeature(model_file=Path("m.bin"), extra_files=[Path("a"), Path("/abs/b")],
                    maybe=Path("x/y"), leaves=[_Leaf(key=Path("k.pem"))])
    r = resolve_paths(f, tmp_path)
    assert r.model_file == tmp_path / "m.bin"
    assert r.extra_files == [tmp_path / "a", Path("/abs/b")]
    assert r.maybe == tmp_path / "x" / "y"
    assert r.store == f"sqlite:///{tmp_path}/feature.db"
    assert r.leaves[0].key == tmp_path / "k.pem"
    assert r.leaves[0].note == "keys/not-a-path"
    assert r.plain == Path("kept/as/written")
    assert f.model_file == Path("m.bin")  # the original is frozen and unchanged


def test_absolute_paths_and_urls_stay_as_written(tmp_path: Path) -> None:
    f = _NewFeature(model_file=Path("/srv/m.bin"), store="sqlite:////var/lib/f.db")
    assert resolve_paths(f, tmp_path) == f
    pg = _NewFeature(model_file=Path("/m"), store="postgresql://u@db/x")
    assert resolve_paths(pg, tmp_path).store == "postgresql://u@db/x"


FULL: dict[str, Any] = {
    "secret_file": "s.secret",
    "admin": {"token_file": "admin.tok",
              "tokens": [{"name": "a", "token_file": "t.tok", "scopes": ["keys:read"]}]},
    "stores": {"keys": "sqlite:///keys.db"},
    "identity": {"jwt": {"issuer": "i", "audiences": ["a"], "jwks_file": "jwks.json",
                         "tenant": "t"}},
    "audit": {"sink": "jsonl:///a.jsonl", "checkpoint_key_file": "cp.key", "spill_dir": "sp",
              "retention": {"archive_dir": "arch"}},
    "policy": {"files": ["a.cedar", "/abs/b.cedar"], "schema_file": "s.json"},
    "quotas": {"budget_store": "sqlite:////abs/b.db"},
    "monitor": {"state_dir": "mst", "webhook": {"url": "https://x", "secret_file": "wh"}},
    "watermark": {"keys": [{"id": "k", "secret_file": "wm.secret"}],
                  "evidence_store": "sqlite:///ev.db", "plan_file": "plan.json"},
    "models": [{"name": "m", "backend": {"type": "skops", "path": "m.skops", "artifact": {
        "signature": {"certificate_chain": ["c1.pem"], "file": "m.sig"},
        "decrypt": {"pkcs11_module": "p.so", "token_label": "t", "key_label": "k",
                    "pin_file": "pin"}}}, "monitor": {"summary": "sum.npz"}}],
    "llm": {"models": [{"name": "l", "upstream": "local:gpt2", "api_key_file": "k.txt",
                        "screening": {"external": {"url": "http://c", "api_key_file": "c"}},
                        "distill": {"reference": "ref.txt"}},
                       {"name": "h", "upstream": "http://h/v1"}]},
}


def test_every_path_of_a_full_config_resolves(tmp_path: Path) -> None:
    s = settings_from_mapping(FULL, base_dir=tmp_path)
    assert s.secret_file == tmp_path / "s.secret"
    assert s.admin.tokens[0].token_file == tmp_path / "t.tok"
    assert s.identity.jwt is not None and s.identity.jwt.jwks_file == tmp_path / "jwks.json"
    assert s.audit.sink == f"jsonl:///{tmp_path}/a.jsonl"
    assert s.audit.retention.archive_dir == tmp_path / "arch"
    assert s.policy.files == [tmp_path / "a.cedar", Path("/abs/b.cedar")]
    assert s.quotas.budget_store == "sqlite:////abs/b.db"
    assert s.watermark is not None
    assert s.watermark.keys[0].secret_file == tmp_path / "wm.secret"
    assert s.watermark.evidence_store == f"sqlite:///{tmp_path}/ev.db"
    backend = s.models[0].backend
    assert backend.type == "skops" and backend.artifact and backend.artifact.decrypt
    assert backend.artifact.decrypt.pin_file == tmp_path / "pin"
    assert backend.artifact.signature and backend.artifact.signature.certificate_chain == [
        tmp_path / "c1.pem"]
    local, http = s.llm.models
    assert local.upstream == f"local:{tmp_path}/gpt2"
    assert local.distill is not None and local.distill.reference == tmp_path / "ref.txt"
    assert local.screening and local.screening.external
    assert local.screening.external.api_key_file == tmp_path / "c"
    assert http.upstream == "http://h/v1"


def _path_fields(model: type[BaseModel], seen: set[type] | None = None) -> list[str]:
    """Fields of `model` (and the sections under it) typed Path but not ConfigPath."""
    seen = seen if seen is not None else set()
    if model in seen:
        return []
    seen.add(model)
    bad = []
    for name, field in model.model_fields.items():
        args = _flat(field.annotation)
        if Path in args and not any(isinstance(m, FromConfigDir) for m in
                                    [*field.metadata, *_marks(field.annotation)]):
            bad.append(f"{model.__name__}.{name}")
        for sub in args:
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                bad += _path_fields(sub, seen)
    return bad


def _flat(tp: Any) -> list[Any]:
    return [tp, *(t for a in get_args(tp) for t in _flat(a))]


def _marks(tp: Any) -> list[Any]:
    return [a for t in _flat(tp) for a in getattr(t, "__metadata__", ())]


def test_every_path_field_of_the_settings_is_a_config_path() -> None:
    assert _path_fields(_NewFeature) == ["_NewFeature.plain"]  # the check sees a plain Path
    assert _path_fields(Settings) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_load_as_before(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaded from its file, an example differs from its unresolved settings only in the
    relative paths, each now under the example's folder."""
    monkeypatch.setenv("MODELFENCE_PG_PASSWORD", "example")
    loaded = load_settings(path).model_dump()
    raw = settings_from_mapping(yaml.safe_load(path.read_text()) or {}).model_dump()
    changed: list[tuple[str, Any, Any]] = []
    _diff(raw, loaded, "", changed)
    base = path.parent.resolve()
    for where, before, after in changed:
        if isinstance(before, Path):
            assert after == base / before, where
        else:
            prefix = next(p for p in ("sqlite:///", "jsonl:///", "local:")
                          if before.startswith(p))
            assert after == prefix + str(base / before.removeprefix(prefix)), where
    assert changed, "the examples name relative files"


def _diff(a: Any, b: Any, where: str, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(a, dict):
        for k in a:
            _diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{where}[{i}]", out)
    elif a != b:
        out.append((where, a, b))
