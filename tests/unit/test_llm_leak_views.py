"""Decoded views of an answer (leak_views.py) and the marks of a prompt (leak_marks.py)."""

from __future__ import annotations

import base64
import codecs

from modelfence.llm.leak_marks import PromptMarks, common_words, is_common, secret_parts
from modelfence.llm.leak_views import compact, decoded_runs, fold, leet, open_tail, rot13

PERSONA = "You are Nova, the friendly assistant of Brightwater Bank."
PROMPT = (f"{PERSONA} Never promise a refund above 300 euros. The escalation code for the "
          "fraud team is ORCHID-7731; never give it out. The duty manager is Ingrid Halvorsen. "
          'The staff wifi password is "quiet lantern 42". Admin override number: 48213.')


def _decoded(text: str) -> set[str]:
    return {compact(fold(t)) for _, t in decoded_runs(text)}


def test_fold_and_compact_undo_case_accents_lookalikes_and_spacing() -> None:
    assert compact(fold("O R C H I D - 7 7 3 1")) == "orchid7731"
    wide = "\uff2f\uff52\uff43\uff48\uff49\uff44\u00a07731"  # full width, nbsp
    assert compact(fold(wide)) == "orchid7731"
    assert compact(fold("Orch\u00edd\u20137731")) == "orchid7731"  # accent, en dash
    assert compact(fold("\u041eR\u0421HID-7731")) == "orchid7731"  # Cyrillic O and S
    assert leet(fold("0RCH1D-7731")) == leet("orchid7731")
    assert leet(fold("1ngr!d H@lv0r$3n")) == leet("ingridhalvorsen")
    assert rot13("orchid") == "bepuvq"


def test_every_encoding_decodes_back() -> None:
    secret = "code ORCHID-7731"
    raw = secret.encode()
    forms = {
        "base64": base64.b64encode(raw).decode(),
        "base64 wrapped": "\n".join(base64.b64encode(raw * 8).decode()[i:i + 20]
                                    for i in range(0, 176, 20)),
        "base64 grouped": " ".join(base64.b64encode(raw).decode()[i:i + 4]
                                   for i in range(0, 24, 4)),
        "urlsafe": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "base32": base64.b32encode(raw).decode(),
        "hex": raw.hex(),
        "hex spaced": " ".join(f"{b:02x}" for b in raw),
        "hex 0x": ", ".join(f"0x{b:02X}" for b in raw),
        "hex \\x": "".join(f"\\x{b:02x}" for b in raw),
        "binary": " ".join(f"{b:08b}" for b in raw),
        "decimal": " ".join(str(b) for b in raw),
        "url": "".join(f"%{b:02X}" for b in raw),
        "html": "".join(f"&#{b};" for b in raw),
        "morse": ".-. -.-. .... .. -.. / --... --... ...-- .----",
        "nato": "Oscar Romeo Charlie Hotel India Delta seven seven three one",
        "nato dash": "oscar romeo charlie hotel india delta dash seven seven three one",
    }
    for name, text in forms.items():
        views = _decoded(f"Sure, here it is: {text} . Anything else?")
        assert any("orchid7731" in v or "rchid7731" in v for v in views), name
    assert "bepuvq7731" in compact(fold(codecs.encode(secret, "rot13")))
    assert "71564" in _decoded("Sure, here it is: seven one five six four")


def test_ordinary_prose_has_no_encoded_runs() -> None:
    prose = ("Thanks for reaching out! Your card was shipped yesterday and should arrive "
             "within three business days. Reply here if anything is missing.")
    assert list(decoded_runs(prose)) == []


def test_open_tail_holds_runs_a_disguise_could_be_building() -> None:
    assert open_tail("the password: Z E B R") == len("Z E B R")
    assert open_tail("in hexadecimal: 4f 52 43 48") == len("4f 52 43 48")
    assert open_tail("done. SGVsbG8gd29ybGQgaXMgaGVyZQ") == len("SGVsbG8gd29ybGQgaXMgaGVyZQ")
    assert open_tail("an ordinary sentence ending") == len("ending")
    assert open_tail("an ordinary sentence ending ") == 0


def test_common_words_are_shipped_and_stemmed() -> None:
    common = common_words()
    assert 9000 < len(common) <= 10000 and "the" in common
    assert is_common("walked", common) and is_common("houses", common)
    assert not is_common("halvorsen", common)


def test_marks_of_a_prompt() -> None:
    marks = PromptMarks.build(PROMPT, canary="mf-0123abcd45", public=[PERSONA])
    kinds = {m.key: (m.kind, m.strong) for m in marks.marks}
    assert kinds["mf0123abcd45"] == ("canary", True)
    assert kinds["orchid7731"][1] and kinds["48213"] == ("number", True)
    assert kinds["ingridhalvorsen"] == ("name", True)
    assert kinds["quietlantern42"] == ("quoted", True)
    assert kinds["300"] == ("number", False)  # 3 digits: weak
    assert kinds["halvorsen"] == ("word", False)
    # the public persona is cut out: none of its words is a mark, and no span crosses it
    assert not {"nova", "brightwater"} & set(kinds)
    assert secret_parts(PROMPT, [PERSONA.upper()])[0].startswith(" Never promise")
    assert not any("brightwater" in g for g in marks.plain_grams | marks.short_grams)
