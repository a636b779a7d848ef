"""The LLM text watermark (green lists, Kirchenbauer et al. 2023) end to end on a tiny GPT-2.

Answers are generated through the local backend with the watermark on and off, then
re-tokenized and tested as `modelfence watermark detect-text` does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from pydantic import ValidationError

from modelfence.errors import UpstreamError
from modelfence.llm.controls import apply_controls
from modelfence.llm.settings import LlmControls, LlmModel, TextWatermarkSettings
from modelfence.llm.upstream import LlmUpstream
from modelfence.watermark.llm_text import (
    TextWatermark,
    backend_secret,
    model_key,
    text_watermark_key,
)

from ..support import cli
from .test_llm_local import build_tiny_model, tiny_model, token_id  # noqa: F401

SERVER_SECRET = "w" * 40
UPSTREAM = LlmUpstream(watermark_secret=backend_secret(SERVER_SECRET.encode()))


def model(folder: Path, *, watermark: bool) -> LlmModel:
    return LlmModel(name="tiny", upstream=f"local:{folder}",
                    controls=LlmControls(logit_bias="allow", max_tokens=200),
                    text_watermark=TextWatermarkSettings() if watermark else None)


def suppressed(folder: Path) -> dict[str, float]:
    """End-of-text, and tokens that are not whole UTF-8 characters: a trained model writes
    those only in valid sequences, a random one would scatter them (and re-tokenizing the
    replacement characters would break the token pairs)."""
    from tokenizers import Tokenizer

    from modelfence.llm.local import _bytes_to_unicode

    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab()
    out = {str(token_id(folder, "<|endoftext|>")): -100.0}
    for piece, i in vocab.items():
        try:
            bytes(decoder[c] for c in piece).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            out[str(i)] = -100.0
    return out


def answers(folder: Path, *, watermark: bool, seeds: range) -> str:
    """Sampled answers (temperature 1, see `suppressed`), joined."""
    m = model(folder, watermark=watermark)
    bias = suppressed(folder)
    texts = []
    for seed in seeds:
        body: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                "temperature": 1.0, "seed": seed, "max_tokens": 110,
                                "logit_bias": dict(bias)}
        apply_controls("chat", body, m)

        async def go(b: dict[str, Any] = body) -> bytes:
            return await UPSTREAM.post(m, "/chat/completions", orjson.dumps(b))

        doc = orjson.loads(asyncio.run(go()))
        texts.append(doc["choices"][0]["message"]["content"])
    return "".join(texts)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:  # noqa: F811
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)


@pytest.fixture(scope="module")
def texts(tiny_model: Path) -> dict[str, str]:  # noqa: F811
    return {"marked": answers(tiny_model, watermark=True, seeds=range(1, 4)),
            "plain": answers(tiny_model, watermark=False, seeds=range(1, 4))}


def detector(tokenizer: Any, model_name: str = "tiny") -> TextWatermark:
    return TextWatermark(text_watermark_key(SERVER_SECRET.encode(), model_name), len(tokenizer))


def test_watermarked_answers_are_detected_and_plain_ones_are_not(
        texts: dict[str, str], tokenizer: Any) -> None:
    wm = detector(tokenizer)
    marked = tokenizer.encode(texts["marked"], add_special_tokens=False)
    plain = tokenizer.encode(texts["plain"], add_special_tokens=False)
    n = min(len(marked), len(plain), 201)
    assert n >= 150
    found = wm.detect(marked[:n])
    assert found.watermarked and found.p_value <= 1e-6 and found.verdict == "watermarked"
    assert found.method == "binomial" and found.z > 5
    clean = wm.detect(plain[:n])
    assert not clean.watermarked and clean.p_value > 1e-3
    assert clean.verdict == "not watermarked"
    assert wm.detect_text(texts["marked"], tokenizer).p_value <= 1e-6
    other = detector(tokenizer, "another-model").detect(marked[:n])
    assert other.p_value > 1e-3


def test_green_mask_is_keyed_deterministic_and_exact() -> None:
    key = text_watermark_key(b"k" * 32, "m")
    a, b = TextWatermark(key, 1000), TextWatermark(key, 1000)
    assert np.array_equal(a.green_mask(7), b.green_mask(7))
    assert int(a.green_mask(7).sum()) == 250 == round(0.25 * 1000)
    assert int(TextWatermark(key, 999, gamma=0.3).green_mask(1).sum()) == round(0.3 * 999)
    assert not np.array_equal(a.green_mask(7), a.green_mask(8))
    other = TextWatermark(text_watermark_key(b"k" * 32, "n"), 1000)
    assert not np.array_equal(a.green_mask(7), other.green_mask(7))
    assert np.array_equal(a.bias(7), 2.0 * a.green_mask(7))
    assert not a.green_mask(7).flags.writeable
    assert model_key(backend_secret(b"k" * 32), "m") == key
    small = TextWatermark(key, 1000, cache_size=2)
    for prev in range(5):
        small.green_mask(prev)
    assert np.array_equal(small.green_mask(0), a.green_mask(0))  # evicted, rebuilt the same


def test_repeated_pairs_are_scored_once() -> None:
    wm = TextWatermark(b"k" * 32, 100)
    prev = 3
    green = int(np.flatnonzero(wm.green_mask(prev))[0])
    ids = [prev, green] * 20
    assert wm.detect(ids).tokens_scored == len({(prev, green), (green, prev)})
    assert wm.detect(ids, ignore_repeated=False).tokens_scored == 39
    assert wm.detect([5]).tokens_scored == 0 and wm.detect([5]).p_value == 1.0


def test_text_watermark_settings() -> None:
    m = LlmModel(name="x", upstream="local:models/gpt2",
                 text_watermark=TextWatermarkSettings(gamma=0.5, delta=4))
    assert m.text_watermark is not None and m.text_watermark.gamma == 0.5
    with pytest.raises(ValidationError, match="text_watermark needs a local: upstream"):
        LlmModel(name="x", upstream="http://h:8000/v1", text_watermark=TextWatermarkSettings())
    for bad in ({"gamma": 0}, {"gamma": 1}, {"delta": 0}, {"delta": 11}):
        with pytest.raises(ValidationError):
            TextWatermarkSettings(**bad)


def test_cli_detect_text(tmp_path: Path, tiny_model: Path,  # noqa: F811
                         texts: dict[str, str]) -> None:
    config = tmp_path / "modelfence.yaml"
    config.write_text(yaml.safe_dump({"llm": {"models": [
        {"name": "tiny", "upstream": f"local:{tiny_model}", "text_watermark": {}},
        {"name": "plain", "upstream": f"local:{tiny_model}"}]}}))
    (tmp_path / "marked.txt").write_text(texts["marked"], encoding="utf-8")
    env = {"MODELFENCE_SECRET": SERVER_SECRET, "HF_HUB_OFFLINE": "1"}
    base = ("watermark", "detect-text", "--model", "tiny", "--config", str(config))
    marked = cli(*base, "--file", str(tmp_path / "marked.txt"), "--json", env=env,
                 check=False)
    assert marked.returncode == 0, marked.stderr
    doc = json.loads(marked.stdout)
    assert doc["verdict"] == "watermarked" and doc["p_value"] <= 1e-6
    plain = cli(*base, "--text", texts["plain"], env=env, check=False)
    assert plain.returncode == 1, plain.stderr
    assert "not watermarked" in plain.stdout and "p-value" in plain.stdout
    unmarked = cli("watermark", "detect-text", "--model", "plain", "--config", str(config),
                   "--text", "x", env=env, check=False)
    assert unmarked.returncode == 2 and "no text watermark" in unmarked.stderr


def test_backend_without_a_secret_refuses_a_watermarked_model(
        tiny_model: Path) -> None:  # noqa: F811
    m = model(tiny_model, watermark=True)
    body = orjson.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 2})

    async def go() -> bytes:
        return await LlmUpstream().post(m, "/chat/completions", body)

    with pytest.raises(UpstreamError, match="no watermark secret"):
        asyncio.run(go())


def test_through_the_gateway(tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    """The key path a deployment uses: `modelfence serve` answers, the CLI reading the same
    config finds the watermark; a model without it answers plain text."""
    import urllib.request

    from ..support import Gateway

    controls = {"logit_bias": "allow", "max_tokens": 120}
    llm = {"models": [
        {"name": "marked", "upstream": f"local:{tiny_model}", "controls": controls,
         "text_watermark": {"gamma": 0.25, "delta": 2.0}},
        {"name": "plain", "upstream": f"local:{tiny_model}", "controls": controls}]}
    gw = Gateway(tmp_path / "gw", [], extra={"llm": llm}).start()
    try:
        key = gw.key(models=["marked", "plain"])
        bias = suppressed(tiny_model)

        def answer(name: str) -> str:
            text = ""
            for seed in range(3):
                body = {"model": name, "temperature": 1.0, "seed": seed, "max_tokens": 110,
                        "logit_bias": bias, "messages": [{"role": "user", "content": "hi"}]}
                req = urllib.request.Request(  # noqa: S310 (loopback)
                    f"{gw.url}/v1/chat/completions", json.dumps(body).encode(),
                    {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
                    text += json.loads(resp.read())["choices"][0]["message"]["content"]
            return text

        for name, expected in (("marked", 0), ("plain", 1)):
            # through a file: sampled text may hold a NUL, which no command-line argument can
            answer_file = tmp_path / f"{name}.txt"
            answer_file.write_text(answer(name), encoding="utf-8")
            result = cli("watermark", "detect-text", "--model", "marked", "--config",
                         str(gw.config), "--file", str(answer_file), "--json", check=False)
            assert result.returncode == expected, result.stdout + result.stderr
    finally:
        gw.stop()
