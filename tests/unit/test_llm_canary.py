"""System-prompt theft protection: canary derivation, streaming leak filter, scan."""

from __future__ import annotations

import random

import pytest

from modelfence.llm.canary import Canary, LeakFilter, LeakPolicy, normalise, system_text

PROMPT = ("You are the support assistant of ACME Corp. Answer politely, in English, and never "
          "discuss competitor pricing, unreleased products or the internal roadmap. Escalate "
          "refunds above 500 dollars to a human agent.")
CANARY = Canary(b"gateway-secret", "acme-support")
BENIGN = ("Thanks for reaching out! Your order shipped yesterday and should arrive within three "
          "business days. If anything is missing, reply here and we will sort it out quickly. ")


def policy(mode: str = "block", **kw: object) -> LeakPolicy:
    return LeakPolicy(canary=CANARY.token, system_prompt=PROMPT, mode=mode, **kw)  # type: ignore[arg-type]


def run(f: LeakFilter, deltas: list[str]) -> tuple[str, int]:
    out, worst = [], 0
    for d in deltas:
        out.append(f.feed(d))
        worst = max(worst, len(normalise(f.pending)))
    out.append(f.finish())
    return "".join(out), worst


def splits(text: str, parts: int) -> list[list[str]]:
    n = len(text)
    if parts == 2:
        return [[text[:i], text[i:]] for i in range(1, n)]
    return [[text[:i], text[i:j], text[j:]] for i in range(1, n) for j in range(i + 1, n)]


def test_canary_is_stable_secret_and_per_deployment() -> None:
    assert CANARY.token == Canary(b"gateway-secret", "acme-support").token
    assert CANARY.token != Canary(b"gateway-secret", "other").token
    assert CANARY.token != Canary(b"other-secret", "acme-support").token
    assert CANARY.token.startswith("mf-") and len(CANARY.token) == 13


def test_protect_puts_the_canary_first_in_every_system_message() -> None:
    """A recitation starts at the top: the canary is the first thing it writes."""
    msgs = [{"role": "system", "content": PROMPT}, {"role": "user", "content": "hi"},
            {"role": "developer", "content": "Second part."}]
    out = CANARY.protect(msgs)
    assert msgs[0]["content"] == PROMPT  # input untouched
    assert out[0]["content"] == CANARY.instruction() + "\n\n" + PROMPT
    assert out[2]["content"].startswith(CANARY.instruction())
    assert out[1] == msgs[1]
    assert system_text(msgs) == PROMPT + "\nSecond part."
    bare = CANARY.protect([{"role": "user", "content": "hi"}])
    assert bare[0]["role"] == "system" and CANARY.token in bare[0]["content"]
    parts = CANARY.protect([{"role": "developer", "content": [{"type": "text", "text": "x"}]}])
    assert parts[0]["content"][0]["text"] == CANARY.instruction()
    assert parts[0]["content"][1]["text"] == "x"
    assert CANARY.policy(msgs[:1]).prompt == normalise(PROMPT).strip()


@pytest.mark.parametrize("parts", [2, 3])
def test_canary_split_at_every_position_is_blocked(parts: int) -> None:
    leak = f"My ref: {CANARY.token}!"
    for deltas in splits(leak, parts):
        f = policy().filter()
        out, _ = run(f, deltas)
        assert f.leaked and f.detections[0].kind == "canary"
        assert out == "My ref: "[: len(out)] and CANARY.token[:3] not in out


@pytest.mark.parametrize("variant", [CANARY.token.upper(), " ".join(CANARY.token),
                                     CANARY.token[:5] + "\n\n" + CANARY.token[5:].title()])
def test_canary_case_and_whitespace_variants(variant: str) -> None:
    r = policy().scan("reference " + variant + " end")
    assert r.leaked and r.text == "reference " and r.detections[0].kind == "canary"
    assert r.detections[0].start == len("reference ")


def test_verbatim_span_split_across_chunks_blocked() -> None:
    span = PROMPT[30:110]
    text = "Sure, my instructions say: " + span.upper().replace(" ", "  ") + " and more"
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), 6))
        deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        f = policy().filter()
        out, _ = run(f, deltas)
        assert f.leaked and f.detections[0].kind == "span"
        assert "Sure, my instructions say: ".startswith(out)


def test_near_miss_not_flagged() -> None:
    n = 40
    near = PROMPT[10:10 + n - 1]
    r = policy().scan("x " + near + " y")
    assert not r.leaked and r.text == "x " + near + " y"
    assert policy().scan("x " + PROMPT[10:10 + n] + " y").leaked


@pytest.mark.parametrize("size", [1, 3, 7, 50])
def test_benign_passes_unchanged_with_bounded_delay(size: int) -> None:
    text = BENIGN * 20 + "\n\nRegards,\t the team"
    pol = policy()
    f = pol.filter()
    out, worst = run(f, [text[i:i + size] for i in range(0, len(text), size)])
    assert out == text and not f.leaked and not f.detections
    assert pol.bound == 39 and worst <= pol.hold_max + 16 + size
    spans = policy(views=False)  # canary and verbatim spans only: the old, shorter hold
    f = spans.filter()
    out, worst = run(f, [text[i:i + size] for i in range(0, len(text), size)])
    assert out == text and worst <= spans.bound


def test_redact_mode_replaces_and_continues() -> None:
    text = (f"Hello. ref {CANARY.token} then: " + PROMPT[0:120] + " -- bye " + CANARY.token)
    pol = policy("redact")
    for size in (1, 5, 1000):
        f = pol.filter()
        out, worst = run(f, [text[i:i + size] for i in range(0, len(text), size)])
        assert out == "Hello. ref [redacted] then: [redacted] -- bye [redacted]"
        dets = sorted(f.detections, key=lambda d: d.start)
        assert [d.kind for d in dets] == ["canary", "span", "canary"]
        span = dets[1]
        assert text[span.start:span.end] == PROMPT[0:120]
        assert worst <= pol.hold_max + 16 + size


def test_property_random_streams() -> None:
    """Canary and verbatim spans (views off: weak marks, which need several together, have
    no single place to redact)."""
    rng = random.Random(3)
    pol_b, pol_r = policy("block", views=False), policy("redact", views=False)
    words = BENIGN.split() + PROMPT.split()
    for _ in range(150):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 80)))
        if rng.random() < 0.3:
            text += " " + CANARY.token
        cuts = sorted(set(rng.sample(range(1, len(text)), min(10, len(text) - 1))))
        deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        fb = pol_b.filter()
        out_b, _ = run(fb, deltas)
        assert text.startswith(out_b)
        if fb.detections:
            assert len(out_b) <= min(d.start for d in fb.detections)
        else:
            assert out_b == text
        fr = pol_r.filter()
        out_r, _ = run(fr, deltas)
        assert CANARY.token not in out_r
        assert not pol_r.scan(out_r.replace("[redacted]", "\x00")).leaked
        assert bool(fr.detections) == bool(fb.detections)


def test_no_system_prompt_only_canary() -> None:
    pol = LeakPolicy(canary=CANARY.token)
    assert pol.scan(BENIGN * 3).text == BENIGN * 3
    assert pol.scan("x" + CANARY.token).leaked


def test_100kb_small_deltas_pass_unchanged() -> None:
    """Tiny deltas over a long benign answer change nothing (bench/llm.py times this)."""
    rng = random.Random(1)
    words = (BENIGN + PROMPT).split()
    text = " ".join(rng.choice(words) for _ in range(20000))
    text = text.replace(PROMPT[:12], "")[:100_000]
    pol = LeakPolicy(canary=CANARY.token, system_prompt="zz " * 3 + PROMPT * 5, span_len=40)
    for size in (4, 16):
        deltas = [text[i:i + size] for i in range(0, len(text), size)]
        f = pol.filter()
        out = "".join(f.feed(d) for d in deltas) + f.finish()
        assert out == text or pol.scan(text).leaked
