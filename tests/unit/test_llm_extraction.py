"""A Carlini-style model-stealing attack against the local backend, through the controls.

Carlini et al. 2024, "Stealing Part of a Production Language Model": the logits are
W·h with h of the hidden size, so full-vocabulary logprob vectors from many prompts,
stacked and centred, have rank = hidden size; the SVD shows it as a cliff in the singular
values. With full access (logprobs on, a top_logprobs cap at the vocabulary) the attack
recovers the tiny model's n_embd; with the default controls it gets no vectors at all,
and keyed logprob noise hides the cliff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfence.errors import BadRequest

from .test_llm_local import HIDDEN, TEXT, ask, local_model, tiny_model, token_id

__all__ = ["tiny_model"]  # the session fixture, shared with test_llm_local

BUDGET = 64  # queries per attack: twice the hidden size
VOCAB = 300


def prompts(n: int) -> list[str]:
    return [TEXT[i * 7:i * 7 + 12 + i % 23] for i in range(n)]


def attack(model: Any, *, logit_bias: dict[str, float] | None = None
           ) -> tuple[list[list[float]], int]:
    """Ask BUDGET one-token questions for full logprob vectors; (vectors, refused count)."""
    rows: list[list[float]] = []
    refused = 0
    for prompt in prompts(BUDGET):
        body: dict[str, Any] = {"model": "tiny", "temperature": 0, "max_tokens": 1,
                                "messages": [{"role": "user", "content": prompt}],
                                "logprobs": True, "top_logprobs": VOCAB}
        if logit_bias:
            body["logit_bias"] = logit_bias
        try:
            doc = ask(model, body)
        except BadRequest:
            refused += 1
            try:  # fall back to what the controls still allow: a plain answer
                doc = ask(model, {"model": "tiny", "max_tokens": 1, "temperature": 0,
                                  "messages": [{"role": "user", "content": prompt}]})
            except BadRequest:
                continue
        logprobs = doc["choices"][0].get("logprobs")
        if not logprobs:
            continue
        top = logprobs["content"][0]["top_logprobs"]
        by_token = {bytes(t["bytes"]): t["logprob"] for t in top}
        if len(by_token) == VOCAB:  # the attack needs every token's logprob
            rows.append([by_token[k] for k in sorted(by_token)])
    return rows, refused


def hidden_size(rows: list[list[float]]) -> tuple[int | None, float]:
    """(the estimated hidden size, the cliff: log10 of the biggest singular value ratio)."""
    if len(rows) < 2:
        return None, 0.0
    m = np.asarray(rows, dtype=np.float64)
    m -= m.mean(axis=1, keepdims=True)  # the softmax normaliser is a shift per row
    sv = np.linalg.svd(m, compute_uv=False)
    logs = np.log10(np.maximum(sv, 1e-300))
    drops = logs[:-1] - logs[1:]
    at = int(np.argmax(drops))
    return at + 1, float(drops[at])


def test_full_access_recovers_the_hidden_size(tiny_model: Path) -> None:
    model = local_model(tiny_model, logprobs=True, max_top_logprobs=VOCAB, logit_bias="allow")
    rows, refused = attack(model)
    assert refused == 0 and len(rows) == BUDGET
    found, cliff = hidden_size(rows)
    assert found == HIDDEN
    assert cliff > 3  # singular values fall by over 1000x right after the hidden size
    # logit_bias is accepted too (the ingredient of the top-k-only variant of the attack)
    biased, _ = attack(model, logit_bias={str(token_id(tiny_model, "b")): 5.0})
    assert len(biased) == BUDGET and hidden_size(biased)[0] == HIDDEN


def test_default_controls_give_nothing_to_stack(tiny_model: Path) -> None:
    model = local_model(tiny_model)  # logprobs off, logit_bias refused
    rows, refused = attack(model)
    assert refused == BUDGET and rows == []
    assert hidden_size(rows) == (None, 0.0)
    with pytest.raises(BadRequest, match="logit_bias"):
        ask(model, {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                    "logit_bias": {"1": 100}})


def test_capped_top_logprobs_give_no_full_vectors(tiny_model: Path) -> None:
    model = local_model(tiny_model, logprobs=True, max_top_logprobs=20)  # OpenAI's own cap
    rows, refused = attack(model)
    assert refused == 0 and rows == []  # answered, clamped to 20: no vector to stack


def test_keyed_noise_hides_the_cliff(tiny_model: Path) -> None:
    """Noise at scale 1 on every logprob: the same budget no longer shows the hidden size.

    Through the controls and backend only, so the noise is added here as routes.py does.
    """
    from modelfence.llm.noise import add_noise

    model = local_model(tiny_model, logprobs=True, max_top_logprobs=VOCAB,
                        logprob_noise=1.0)
    rows: list[list[float]] = []
    for prompt in prompts(BUDGET):
        body = {"model": "tiny", "temperature": 0, "max_tokens": 1, "logprobs": True,
                "messages": [{"role": "user", "content": prompt}], "top_logprobs": VOCAB}
        doc = ask(model, body)
        add_noise(doc, b"k" * 32, "acme/thief", body, model.controls.logprob_noise)
        top = doc["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        by_token = {bytes(t["bytes"]): t["logprob"] for t in top}
        rows.append([by_token[k] for k in sorted(by_token)])
    found, cliff = hidden_size(rows)
    assert cliff < 1, (found, cliff)  # no cliff: the rank is hidden


def test_through_the_gateway(tiny_model: Path, tmp_path: Path) -> None:
    """One gateway (`modelfence serve`), the same model behind three sets of controls."""
    import json
    import urllib.error
    import urllib.request

    from ..support import Gateway

    full = {"logprobs": True, "max_top_logprobs": VOCAB, "logit_bias": "allow"}
    llm = {"models": [
        {"name": "open", "upstream": f"local:{tiny_model}", "controls": full},
        {"name": "noisy", "upstream": f"local:{tiny_model}",
         "controls": {**full, "logprob_noise": 1.0}},
        {"name": "guarded", "upstream": f"local:{tiny_model}"},
    ]}
    gw = Gateway(tmp_path / "gw", [], extra={"llm": llm}).start()
    try:
        key = gw.key(models=["open", "noisy", "guarded"])

        def post(name: str, prompt: str, stream: bool = False) -> tuple[int, dict[str, Any]]:
            body = {"model": name, "temperature": 0, "max_tokens": 1, "logprobs": True,
                    "top_logprobs": VOCAB, "messages": [{"role": "user", "content": prompt}],
                    "stream": stream}
            req = urllib.request.Request(  # noqa: S310 (loopback)
                f"{gw.url}/v1/chat/completions", json.dumps(body).encode(),
                {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
                    raw = resp.read()
                    if not stream:
                        return resp.status, json.loads(raw)
                    events = [json.loads(e[6:]) for e in raw.decode().split("\n\n")
                              if e.startswith("data: {")]
                    content = [c for ev in events for ch in ev["choices"]
                               for c in (ch.get("logprobs") or {}).get("content") or []]
                    return resp.status, {"choices": [{"logprobs": {"content": content}}]}
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        def vector(doc: dict[str, Any]) -> list[float]:
            top = doc["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            by_token = {bytes(t["bytes"]): t["logprob"] for t in top}
            return [by_token[k] for k in sorted(by_token)]

        rows = []
        for prompt in prompts(BUDGET):
            status, doc = post("open", prompt)
            assert status == 200, doc
            rows.append(vector(doc))
        assert hidden_size(rows)[0] == HIDDEN
        status, doc = post("guarded", "the fox")
        assert status == 400 and doc["error"]["code"] == "logprobs_refused"
        first, again = post("noisy", "the fox"), post("noisy", "the fox")
        assert first[0] == 200 and vector(first[1]) == vector(again[1])  # repeatable
        assert vector(first[1]) != vector(post("open", "the fox")[1])  # but noised
        streamed = post("noisy", "the fox", stream=True)  # a stream: the same noised numbers
        assert streamed[0] == 200 and vector(streamed[1]) == vector(first[1])
    finally:
        gw.stop()
