"""The watermark evidence store: round trip on every backend, repeats ignored, sealed inputs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from modelfence.errors import ConfigurationError
from modelfence.watermark.keyring import EvidenceCipher, Keyring, WatermarkKey
from modelfence.watermark.marking import Watermarker, make_record
from modelfence.watermark.store import EvidenceRecord, EvidenceStore, evidence_store_from_url
from modelfence.watermark.verify import questions_from

MARKER = Watermarker(Keyring([WatermarkKey("k1", b"q" * 40)]), lambda risk: 0.3)
CLASSES = [str(i) for i in range(10)]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EvidenceStore]:
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/evidence.db"
    else:
        url = "memory://"
    s = evidence_store_from_url(url)
    await s.open()
    yield s
    await s.close()


def records(model: str, principal: str, *, cipher: EvidenceCipher | None = None,
            seed: int = 0) -> list[EvidenceRecord]:
    x = np.random.default_rng(seed).standard_normal((60, 5))
    marks = MARKER.select(x, np.arange(len(x)) % 10, 10)
    return [make_record(m, model=model, principal=principal, tenant="acme", classes=CLASSES,
                        n_features=5, request_id="r1", time_us=1_700_000_000_000_000 + i,
                        cipher=cipher) for i, m in enumerate(marks)]


async def test_round_trip_and_repeats_are_ignored(store: EvidenceStore) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"  # the PostgreSQL table is shared between runs
    mine = records(model, "alice")
    assert len(mine) > 10
    assert await store.add(mine) == len(mine)
    assert await store.add(mine) == 0
    theirs = records(model, "bob", seed=1)
    await store.add(theirs)
    got = await store.records(model, principal="alice")
    assert sorted(got, key=lambda r: r.input_sha256) == sorted(mine,
                                                               key=lambda r: r.input_sha256)
    assert len(await store.records(model)) == len(mine) + len(theirs)
    wm = await store.records(model, principal="bob", kind="watermark")
    assert wm and all(r.kind == "watermark" and r.principal == "bob" for r in wm)
    holdings = {(h.principal, h.kind): h.count for h in await store.holdings(model)}
    assert sum(holdings.values()) == len(mine) + len(theirs)
    assert await store.ping()


async def test_sealed_inputs_round_trip(store: EvidenceStore, tmp_path: Path) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    (tmp_path / "ek").write_text("cd" * 32)
    cipher = EvidenceCipher.from_file(tmp_path / "ek")
    sealed = records(model, "alice", cipher=cipher)
    await store.add(sealed)
    got = await store.records(model)
    assert all(r.sealed_by == cipher.key_id for r in got)
    ev = questions_from(got, model=model, principal=None, marker=MARKER, cipher=cipher)
    assert not ev.excluded and len(ev.watermark) + len(ev.control) == len(sealed)
    with pytest.raises(ConfigurationError, match="sealed with evidence key"):
        questions_from(got, model=model, principal=None, marker=MARKER, cipher=None)


def test_altered_records_are_excluded_and_counted() -> None:
    good = records("m", "alice")
    bad_input = replace(good[0], input=good[0].input[:-1] + b"\x00")
    forged = replace(good[1], decoy_index=(good[1].decoy_index + 1) % 10
                     if (good[1].decoy_index + 1) % 10 != good[1].model_index
                     else (good[1].decoy_index + 2) % 10)
    ev = questions_from([bad_input, forged, *good[2:]], model="m", principal=None,
                        marker=MARKER, cipher=None)
    assert ev.excluded == {"input does not match its digest": 1,
                           "decoy not derived by its watermark key": 1}


def test_the_same_input_for_two_principals_is_one_question_naming_both() -> None:
    a, b = records("m", "alice"), records("m", "bob")
    ev = questions_from(a + b, model="m", principal=None, marker=MARKER, cipher=None)
    assert len(ev.watermark) + len(ev.control) == len(a)
    assert all(q.principals == ["alice", "bob"] for q in ev.watermark)


@pytest.mark.parametrize("url", ["redis://x", "sqlite://", "nope"])
def test_unknown_store_urls_are_one_clear_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"watermark\.evidence_store"):
        evidence_store_from_url(url)


async def test_marked_before_names_only_this_principals_marked_inputs(
        store: EvidenceStore) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    mine = records(model, "alice")
    await store.add(mine)
    await store.add(records(model, "bob", seed=1))
    marked = {r.input_sha256 for r in mine if r.kind == "watermark"}
    controls = {r.input_sha256 for r in mine if r.kind == "control"}
    assert marked and controls
    unknown = {f"{i:064x}" for i in range(3)}
    asked = sorted(marked | controls | unknown)
    assert await store.marked_before(model, "alice", asked) == marked
    assert await store.marked_before(model, "carol", asked) == set()  # another principal
    assert await store.marked_before("other-model", "alice", asked) == set()
    assert await store.marked_before(model, "alice", []) == set()
    # many digests in one call (SQLite binds them in chunks)
    many = [f"{i:064x}" for i in range(1200)] + sorted(marked)
    assert await store.marked_before(model, "alice", many) == marked
