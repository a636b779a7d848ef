"""Evidence bundles: RFC 8785 bytes signed and written exactly, a byte changed anywhere fails
`evidence verify`, numbers JSON cannot hold are refused, and the HTML page for people."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import rfc8785
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from modelfence.cli.evidence import evidence_app, evidence_verify
from modelfence.errors import ConfigurationError
from modelfence.watermark import bundle
from modelfence.watermark.report import coins, render_html

EVIL = "<script>alert('x')</script>"


def new_schema() -> dict[str, Any]:
    """A bundle as the multi-set verification makes it (the plan's schema)."""
    def one(name: str, kind: str, log2_p: float, adjusted: float) -> dict[str, Any]:
        return {"set": name, "kind": kind, "marks": 40, "controls": 400,
                "mark_disagreements": 38, "decoy_hits": 30, "control_disagreements": 41,
                "log2_p": log2_p, "log2_p_adjusted": adjusted, "p_value": 2.0 ** log2_p,
                "statement": "one-sided Fisher exact test of disagreements on marks vs "
                             "controls"}
    return {
        "type": bundle.BUNDLE_TYPE, "v": 2, "modelfence": "0.1.0", "model": "fraud",
        "principal": None, "started": "2026-12-03T06:00:00+00:00",
        "finished": "2026-12-03T06:01:00+00:00",
        "suspect": {"kind": "file", "description": "stolen.skops", "sha256": "ab" * 32,
                    "queries": 440},
        "evidence": {"records": {"watermark": 40, "control": 400}, "excluded": {},
                     "watermark_keys": ["k1"], "asked": {"watermark": 40, "control": 400}},
        "queries": [
            {"kind": "watermark", "input_sha256": "cd" * 32, "principals": [EVIL],
             "tenants": ["acme"], "recorded_at": "2026-12-01T00:00:00+00:00",
             "protected_label": "0", "answer_given": "1", "watermark_label": "1",
             "suspect_label": "1", "agrees_with_model": False, "repeats_watermark": True},
            {"kind": "control", "input_sha256": "ef" * 32, "principals": ["bob"],
             "tenants": ["acme"], "recorded_at": "2026-12-01T00:00:01+00:00",
             "protected_label": "0", "answer_given": "0", "watermark_label": "1",
             "suspect_label": "0", "agrees_with_model": True, "repeats_watermark": False}],
        "tests": {
            "sets": [one(f"principal:{EVIL}", "principal", -47.7, -45.7),
                     one("tenant:acme", "tenant", -30.0, -28.0),
                     one("all", "all", -12.5, -10.5)],
            "fingerprint": {"method": "conferrable examples", "points": 200,
                            "log2_p": -21.0, "statement": "fingerprint agreement test"},
            "combined": {"method": "Fisher", "log2_p": -62.25, "p_value": 2.0 ** -62.25,
                         "inputs": [-45.7, -21.0]}},
        "verdict": {"accused": True, "alpha": 1e-6, "log2_p": -62.25,
                    "convicting_set": f"principal:{EVIL}",
                    "summary": "the suspect was made from this model's answers",
                    "reasons": [f"set principal:{EVIL} convicted at 2^-45.7 after correction",
                                "the fingerprint agrees at 2^-21"]}}


def old_schema() -> dict[str, Any]:
    """A bundle of the first schema (one decoy test, per principal), still rendered."""
    doc = new_schema()
    doc["v"] = 1
    doc["tests"] = {"decoy": {"name": "decoy test", "statement": "binomial", "trials": 38,
                              "successes": 30, "p0": 0.5, "log2_p": -20.0,
                              "p_value": 2.0 ** -20},
                    "conservative": None}
    doc["control"] = {"asked": 400, "disagreements": 41, "decoy_hits": 3}
    doc["by_principal"] = [{"principal": EVIL, "tenants": ["acme"], "watermark_inputs": 40,
                            "repeats": 30, "disagreements": 38, "log2_p": -20.0,
                            "p_value": 2.0 ** -20}]
    doc["fingerprint"] = {"method": "boundary", "points": 60, "suspect_agreement": 0.95,
                          "reference_agreements": [0.5, 0.6], "z": 4.1, "rank_p": 0.33}
    doc["verdict"] = {"accused": True, "alpha": 1e-6, "log2_p": -20.0, "test": "decoy",
                      "summary": "copy"}
    return doc


# canonical bytes ---------------------------------------------------------------------------


def test_signed_bytes_are_rfc8785_without_signature_and_timestamp() -> None:
    doc = {"type": bundle.BUNDLE_TYPE, "b": 1.0, "a": "é", "c": [1e21, 1e-7, -0.0],
           "timestamp": {"time": "t"}, "signature": {"value": "00"}}
    # RFC 8785: keys sorted by UTF-16 code units, ES6 number form, UTF-8 unescaped
    assert bundle.canonical(doc) == (b'{"a":"\xc3\xa9","b":1,"c":[1e+21,1e-7,0],'
                                     b'"type":"modelfence.ownership.evidence"}')
    key = Ed25519PrivateKey.generate()
    signed = bundle.sign(doc, key)
    assert "timestamp" not in signed  # a timestamp over an old signature cannot survive
    key.public_key().verify(bytes.fromhex(signed["signature"]["value"]),
                            rfc8785.dumps({k: v for k, v in signed.items()
                                           if k != "signature"}))
    # a timestamp added after signing is outside what is signed
    assert bundle.problem({**signed, "timestamp": {"tsa": "x"}}, key.public_key()) is None


def test_write_is_the_exact_canonical_bytes_of_the_whole_document(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    signed = bundle.sign(new_schema(), key)
    json_path, html_path = bundle.write(signed, tmp_path)
    data = json_path.read_bytes()
    assert data == rfc8785.dumps(signed)
    assert bundle.file_problem(data, orjson.loads(data)) is None
    assert bundle.problem(bundle.read(json_path), key.public_key()) is None
    assert html_path.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_numbers_json_cannot_hold_are_refused_by_name() -> None:
    key = Ed25519PrivateKey.generate()
    for bad, shown in ((math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")):
        doc = new_schema()
        doc["tests"]["sets"][1]["log2_p"] = bad
        with pytest.raises(ConfigurationError,
                           match=rf"bundle\.tests\.sets\[1\]\.log2_p = {shown}: .*no NaN"):
            bundle.sign(doc, key)
        with pytest.raises(ConfigurationError, match="no NaN or infinity"):
            bundle.write(doc, Path("/nonexistent-never-written"))
    with pytest.raises(ConfigurationError, match="beyond 2"):
        bundle.sign({"n": 2**60}, key)
    with pytest.raises(ConfigurationError, match=r"bundle\.x: a set cannot"):
        bundle.sign({"x": {1}}, key)
    # numpy scalars and tuples become plain JSON, and the result verifies
    signed = bundle.sign({"type": bundle.BUNDLE_TYPE, "a": np.int64(3), "b": np.float64(0.5),
                          "c": np.bool_(True), "d": (1, 2)}, key)
    assert (signed["a"], signed["b"], signed["c"], signed["d"]) == (3, 0.5, True, [1, 2])
    assert type(signed["a"]) is int and type(signed["c"]) is bool
    assert bundle.problem(signed, key.public_key()) is None


# evidence verify: a byte changed anywhere fails -------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(evidence_app, name="evidence")
    return app


APP, RUNNER = _app(), CliRunner()


def run(*args: str) -> Any:
    return RUNNER.invoke(APP, ["evidence", *args])


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, Path, bytes]:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "signer.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    json_path, _ = bundle.write(bundle.sign(new_schema(), key), tmp_path / "case")
    return json_path, pub, json_path.read_bytes()


def _verify(path: Path, pub: Path, data: bytes) -> Any:
    path.write_bytes(data)
    return run("verify", str(path), "--public-key", str(pub))


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def test_the_written_bundle_verifies(case: tuple[Path, Path, bytes]) -> None:
    path, pub, _ = case
    ok = run("verify", str(path), "--public-key", str(pub))
    assert ok.exit_code == 0, ok.output
    assert "signature valid" in ok.output and "canonical bytes" in ok.output
    assert "not timestamped" in ok.output


@pytest.mark.parametrize(("what", "needle", "offset", "message"), [
    ("structure: an opening brace", b'{"evidence"', 0, "damaged: not valid JSON"),
    ("structure: a colon", b'"model":', 7, "damaged: not valid JSON"),
    ("structure: a comma", b'"fraud",', 7, "damaged: not valid JSON"),
    ("a member name", b'"model":', 2, "signature does not match"),
    ("the type", b'"modelfence.ownership', 3, "damaged: its type is"),
    ("the signature member's name", b'"signature"', 3, "carries no signature"),
    ("a string value", b'"stolen.skops"', 3, "signature does not match"),
    ("a number value", b'"marks":40', 8, "signature does not match"),
    ("a boolean", b'"accused":true', 11, "damaged: not valid JSON"),
    ("the signature's value", b'"value":"', 12, "signature does not match"),
    ("the signing key's id", b'"key_id":"', 12, "not by the given key"),
])
def test_a_flipped_byte_fails_with_exit_1(case: tuple[Path, Path, bytes], what: str,
                                          needle: bytes, offset: int, message: str) -> None:
    path, pub, data = case
    at = data.index(needle) + offset
    result = _verify(path, pub, _flip(data, at))
    assert result.exit_code == 1, (what, result.output)
    assert message in result.output, (what, result.output)
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("what", "change"), [
    ("a space after a comma", lambda d: d.replace(b',"model"', b', "model"', 1)),
    ("a newline at the end", lambda d: d + b"\n"),
    ("indentation", lambda d: orjson.dumps(orjson.loads(d), option=orjson.OPT_INDENT_2
                                           | orjson.OPT_SORT_KEYS)),
    ("key order", lambda d: orjson.dumps(dict(reversed(orjson.loads(d).items())))),
    ("a number's spelling", lambda d: d.replace(b'"marks":40', b'"marks":40.0', 1)),
    ("a number's exponent", lambda d: d.replace(b'"marks":40', b'"marks":4e1', 1)),
    ("a character escaped", lambda d: d.replace(b'"fraud"', b'"fr\\u0061ud"', 1)),
])
def test_same_content_other_bytes_fails(case: tuple[Path, Path, bytes], what: str,
                                        change: Any) -> None:
    path, pub, data = case
    changed = change(data)
    assert changed != data
    # the content (and so the signature) is untouched: only the bytes differ
    doc = orjson.loads(changed)
    key_ok = bundle.problem(doc, serialization.load_pem_public_key(  # type: ignore[arg-type]
        pub.read_bytes())) is None
    assert key_ok, what
    result = _verify(path, pub, changed)
    assert result.exit_code == 1, (what, result.output)
    assert "not byte for byte the canonical (RFC 8785) form" in result.output


def test_every_single_byte_flip_fails(case: tuple[Path, Path, bytes],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Not a sample: every position of the file, each flipped on its own, fails with exit 1
    (the command's function is called directly: the runner would take 12 ms a call)."""
    path, pub, data = case

    def exit_code(changed: bytes) -> int:
        path.write_bytes(changed)
        try:
            evidence_verify(path, pub)
        except typer.Exit as exc:
            return int(exc.exit_code)
        return 0

    assert exit_code(data) == 0
    passed = [at for at in range(len(data)) if exit_code(_flip(data, at)) != 1]
    assert passed == [], f"{len(passed)} of {len(data)} flips not refused: {passed[:10]}"
    assert "Traceback" not in capsys.readouterr().err


def test_not_a_bundle_is_exit_2_and_an_edit_says_edited(case: tuple[Path, Path, bytes],
                                                        tmp_path: Path) -> None:
    path, pub, data = case
    other = tmp_path / "other.json"
    other.write_bytes(b'{"hello": 1}')
    result = run("verify", str(other), "--public-key", str(pub))
    assert result.exit_code == 2 and "not a modelfence evidence bundle" in result.output
    doc = orjson.loads(data)
    doc["verdict"]["accused"] = False
    edited = _verify(path, pub, rfc8785.dumps(doc))  # canonical bytes, edited content
    assert edited.exit_code == 1 and bundle.EDITED in edited.output


# the HTML page -------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        assert not any(name.startswith("on") or name in ("src", "href") for name, _ in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _page(doc: dict[str, Any]) -> tuple[str, _Page]:
    html = render_html(doc)
    page = _Page()
    page.feed(html)
    page.close()
    return html, page


@pytest.mark.parametrize("doc", [new_schema(), old_schema()], ids=["new", "old"])
def test_html_escapes_everything_and_runs_nothing(doc: dict[str, Any]) -> None:
    html, page = _page(doc)
    assert "script" not in page.tags and "<script" not in html
    text = "".join(page.text)
    assert EVIL in text  # shown as text, exactly as named
    assert "http" not in html  # self-contained: nothing fetched


def test_html_says_what_was_asked_what_matched_and_each_test() -> None:
    _, page = _page(new_schema())
    text = " ".join(" ".join(page.text).split())
    assert "Copy identified" in text
    assert "marked inputs asked 1" in text
    assert "where the suspect gave exactly our altered answer 1" in text
    # every set with raw and adjusted p, the convicting one named
    for name, raw, adjusted in ((f"principal:{EVIL}", "-47.7", "-45.7"),
                                ("tenant:acme", "-30.0", "-28.0"), ("all", "-12.5", "-10.5")):
        assert name in text and f"2^{raw}" in text and f"2^{adjusted}" in text
    assert text.count("convicted") >= 1 and "adjusted" in text
    assert "as unlikely as 46 fair coins, tossed together, all landing heads" in text
    # the fingerprint on its own, and the combination
    assert "Test 2: the fingerprint" in text and "2^-21.0" in text
    assert "Fisher combination" in text and "2^-62.2" in text
    assert "as unlikely as 62 fair coins" in text
    assert "It is not the chance that the suspect is innocent" in text
    assert "alpha = 1e-06" in text and "as unlikely as 20 fair coins" in text
    assert "the fingerprint agrees at 2^-21" in text  # the verdict's reasons
    assert "Not timestamped" in text


def test_html_missing_members_are_not_run_and_timestamp_states() -> None:
    doc = new_schema()
    del doc["tests"]["fingerprint"]
    del doc["tests"]["combined"]
    _, page = _page(doc)
    text = " ".join(" ".join(page.text).split())
    assert "Test 2: the fingerprint (needs no marked answers) not run" in text
    assert "The tests together not run" in text
    # a bare bundle renders too
    _, bare = _page({"type": bundle.BUNDLE_TYPE})
    assert "no verdict in the bundle" in "".join(bare.text)
    failed = {**doc, "timestamp": {"tsa": "https://tsa.example/<x>", "error": "HTTP 500"}}
    html, page = _page(failed)
    assert "requesting a timestamp from https://tsa.example/<x> failed (HTTP 500)" in \
        " ".join(" ".join(page.text).split())
    assert "<x>" not in html
    stamped = {**doc, "timestamp": {"tsa": "t", "token": "AA==", "time": "2026-12-03T06:02:00",
                                    "hash": "sha256"}}
    _, page = _page(stamped)
    text = " ".join(" ".join(page.text).split())
    assert "Timestamped at 2026-12-03T06:02:00" in text and "--tsa-cert" in text


def test_coins_in_words() -> None:
    assert coins(-20.0) == "as unlikely as 20 fair coins, tossed together, all landing heads"
    assert coins(-1205.4) == ("as unlikely as 1,205 fair coins, tossed together, all landing "
                              "heads")
    assert coins(-3.5).startswith("as unlikely as 3.5 fair coins")
    assert "no surprise" in coins(-0.2)
    assert coins(None) == "not run" and coins(math.nan) == "not run"
