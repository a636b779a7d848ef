"""The local transformers backend (`upstream: local:PATH`) and keyed logprob noise.

The model is a tiny GPT-2 built from a `GPT2Config` (no download) with a byte-level BPE
tokenizer trained on the spot; torch and transformers come with the `llm` extra.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelfence.errors import BadRequest, UpstreamRejected
from modelfence.llm.controls import apply_controls
from modelfence.llm.noise import add_noise
from modelfence.llm.settings import LlmControls, LlmModel
from modelfence.llm.upstream import LlmUpstream

from ..support import skip_or_fail

TEXT = ("The quick brown fox jumps over the lazy dog. Models are protected by a gateway. " * 3
        + "Stealing a production language model needs many queries and logprobs. ") * 10
HIDDEN = 32
UPSTREAM = LlmUpstream()  # one per test run: each local model loads once (no HTTP session)


def token_id(folder: Path, text: str) -> int:
    from tokenizers import Tokenizer

    found = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(text)
    assert found is not None
    return int(found)


def build_tiny_model(folder: Path, *, n_embd: int = HIDDEN, vocab: int = 300) -> Path:
    """Save a tiny random GPT-2 and its tokenizer to `folder` (about 0.1 s)."""
    try:
        import torch
        from tokenizers import ByteLevelBPETokenizer
        from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    except ImportError as exc:
        skip_or_fail(f"local LLM tests need torch and transformers (the llm extra): {exc}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=vocab, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    fast: Any = PreTrainedTokenizerFast  # untyped
    tokenizer = fast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=n_embd, n_layer=2,
                        n_head=2, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, initializer_range=0.2)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # as after training: LayerNorm biases are not zero
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.bias.normal_(0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


def local_model(folder: Path, **controls: Any) -> LlmModel:
    return LlmModel(name="tiny", upstream=f"local:{folder}",
                    controls=LlmControls(**controls))


def ask(model: LlmModel, body: dict[str, Any], kind: str = "chat") -> dict[str, Any]:
    """Controls, then the backend, as the gateway's terminal does (no HTTP)."""
    apply_controls(kind, body, model)
    path = "/chat/completions" if kind == "chat" else "/completions"

    async def go() -> bytes:
        return await UPSTREAM.post(model, path, orjson.dumps(body))

    doc: dict[str, Any] = orjson.loads(asyncio.run(go()))
    return doc


def chat(content: str = "the quick fox", **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}],
            "temperature": 0, **extra}


# -- settings ---------------------------------------------------------------------------------

def test_local_upstream_setting() -> None:
    m = LlmModel(name="x", upstream="local:models/gpt2")
    assert m.local_path == Path("models/gpt2")
    assert LlmModel(name="x", upstream="http://h:1/v1/").local_path is None
    for bad in ("local:", "local:  ", "ftp://h/v1", "models/gpt2"):
        with pytest.raises(ValueError, match="upstream"):
            LlmModel(name="x", upstream=bad)


def test_torch_not_imported_until_a_local_model_is_called() -> None:
    code = ("import sys, modelfence.llm.routes, modelfence.llm.local, modelfence.llm.noise\n"
            "from modelfence.llm.settings import LlmModel\n"
            "LlmModel(name='x', upstream='local:/nowhere')\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


# -- the backend ------------------------------------------------------------------------------

def test_chat_answer_greedy_and_usage(tiny_model: Path) -> None:
    model = local_model(tiny_model)
    a = ask(model, chat(max_tokens=6))
    b = ask(model, chat(max_tokens=6))
    assert a["object"] == "chat.completion"
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["choices"][0]["logprobs"] is None
    usage = a["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 6


def test_logprobs_and_top_logprobs(tiny_model: Path) -> None:
    model = local_model(tiny_model, logprobs=True, max_top_logprobs=500)
    doc = ask(model, chat(max_tokens=3, logprobs=True, top_logprobs=7))
    content = doc["choices"][0]["logprobs"]["content"]
    assert len(content) == doc["usage"]["completion_tokens"]
    for entry in content:
        top = entry["top_logprobs"]
        assert len(top) == 7
        values = [t["logprob"] for t in top]
        assert values == sorted(values, reverse=True) and values[0] <= 0
        assert entry["logprob"] == pytest.approx(values[0])  # greedy: the top token
        assert bytes(entry["bytes"]) == bytes(top[0]["bytes"])
    full = ask(model, chat(max_tokens=1, logprobs=True, top_logprobs=500))
    top = full["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert len(top) == 300  # the whole vocabulary
    assert sum(2.718281828459045 ** t["logprob"] for t in top) == pytest.approx(1.0, abs=1e-4)


def test_logit_bias_steers_the_answer(tiny_model: Path) -> None:
    model = local_model(tiny_model, logit_bias="allow", logprobs=True)
    b = token_id(tiny_model, "b")
    forced = ask(model, chat(max_tokens=4, logit_bias={str(b): 100}, logprobs=True))
    tokens = forced["choices"][0]["logprobs"]["content"]
    assert [bytes(t["bytes"]) for t in tokens] == [b"b"] * 4
    assert forced["choices"][0]["message"]["content"] == "bbbb"
    assert all(t["logprob"] > -0.01 for t in tokens)  # logprobs of the biased distribution
    with pytest.raises(UpstreamRejected, match="outside the vocabulary"):
        ask(model, chat(logit_bias={"99999": 1}))
    refused = local_model(tiny_model)
    with pytest.raises(BadRequest, match="logit_bias"):
        ask(refused, chat(logit_bias={str(b): 100}))


def test_completions_format_and_stop(tiny_model: Path) -> None:
    model = local_model(tiny_model, logprobs=True, logit_bias="allow")
    doc = ask(model, {"model": "tiny", "prompt": "The quick", "max_tokens": 4,
                      "temperature": 0, "logprobs": 2}, kind="completion")
    choice = doc["choices"][0]
    assert doc["object"] == "text_completion" and isinstance(choice["text"], str)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"])
    assert all(len(alts) <= 2 for alts in lp["top_logprobs"])
    b = token_id(tiny_model, "b")
    forced = ask(model, {"model": "tiny", "prompt": "x", "max_tokens": 8, "temperature": 0,
                         "logit_bias": {str(b): 100}, "stop": "bbb"}, kind="completion")
    assert forced["choices"][0] == {"index": 0, "finish_reason": "stop", "text": "",
                                    "logprobs": None}


def test_sampling_with_seed_repeats(tiny_model: Path) -> None:
    model = local_model(tiny_model, max_n=2)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 1.0, "seed": 7, "max_tokens": 8, "n": 2}
    a, b = ask(model, dict(body)), ask(model, dict(body))
    assert [c["message"] for c in a["choices"]] == [c["message"] for c in b["choices"]]
    assert len(a["choices"]) == 2


def test_stream_is_sse(tiny_model: Path) -> None:
    model = local_model(tiny_model)
    body = chat(max_tokens=3, stream=True)
    apply_controls("chat", body, model)

    async def go() -> list[bytes]:
        chunks = await UPSTREAM.stream(model, "/chat/completions", orjson.dumps(body))
        return [c async for c in chunks]

    events = asyncio.run(go())
    assert events[-1] == b"data: [DONE]\n\n"
    first = orjson.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk"
    assert "content" in first["choices"][0]["delta"]
    assert orjson.loads(events[-2][6:])["usage"]["completion_tokens"] >= 1


def test_embeddings_refused(tiny_model: Path) -> None:
    model = local_model(tiny_model)

    async def go() -> bytes:
        return await UPSTREAM.post(model, "/embeddings", b'{"input": "x"}')

    with pytest.raises(UpstreamRejected, match="chat and completions only"):
        asyncio.run(go())


# -- keyed noise ------------------------------------------------------------------------------

def test_logprob_noise_is_keyed_and_repeatable(tiny_model: Path) -> None:
    model = local_model(tiny_model, logprobs=True, logprob_noise=0.5)
    body = chat(max_tokens=3, logprobs=True, top_logprobs=5)
    clean = ask(model, dict(body))

    def noised(principal: str, secret: bytes = b"s" * 32,
               request: dict[str, Any] | None = None) -> list[float]:
        doc = orjson.loads(orjson.dumps(clean))
        add_noise(doc, secret, principal, request or body, model.controls.logprob_noise)
        content = doc["choices"][0]["logprobs"]["content"]
        return [t["logprob"] for e in content for t in [e, *e["top_logprobs"]]]

    raw = [t["logprob"] for e in clean["choices"][0]["logprobs"]["content"]
           for t in [e, *e["top_logprobs"]]]
    alice = noised("acme/alice")
    assert alice == noised("acme/alice")  # the same request: the same numbers
    assert alice != raw and all(v <= 0 for v in alice)
    assert alice != noised("acme/bob")
    assert alice != noised("acme/alice", secret=b"t" * 32)
    assert alice != noised("acme/alice", request=chat("another prompt"))
    content = clean["choices"][0]["logprobs"]["content"]
    doc = orjson.loads(orjson.dumps(clean))
    add_noise(doc, b"s" * 32, "acme/alice", body, 0.5)
    for entry in doc["choices"][0]["logprobs"]["content"]:  # greedy: chosen == top[0]
        assert entry["logprob"] == entry["top_logprobs"][0]["logprob"]
    unchanged = orjson.loads(orjson.dumps(clean))
    add_noise(unchanged, b"s" * 32, "acme/alice", body, 0.0)
    assert unchanged["choices"][0]["logprobs"]["content"] == content


def test_noisy_logprobs_stream_with_the_numbers_of_the_whole_answer() -> None:
    from modelfence.llm.noise import LogprobNoise

    model = LlmModel(name="m", upstream="http://h/v1",
                     controls=LlmControls(logprobs=True, logprob_noise=0.1))
    apply_controls("chat", chat(stream=True, logprobs=True), model)  # allowed now

    def entry(i: int) -> dict[str, Any]:
        return {"token": f"t{i}", "logprob": -0.1 * i,
                "top_logprobs": [{"token": f"t{i}", "logprob": -0.1 * i},
                                 {"token": "x", "logprob": -3.0}]}

    whole = {"choices": [{"index": 0, "logprobs": {"content": [entry(i) for i in range(5)]}}]}
    noise = LogprobNoise(b"s" * 32, b"ctx", 0.5)
    noise.apply(whole)
    offsets: dict[Any, int] = {}
    streamed = []
    for part in ([0, 1], [2], [3, 4]):
        chunk = {"choices": [{"index": 0, "logprobs": {"content": [entry(i) for i in part]}}]}
        noise.apply(chunk, offsets)
        streamed += chunk["choices"][0]["logprobs"]["content"]
    assert streamed == whole["choices"][0]["logprobs"]["content"]
    assert streamed[3]["logprob"] != -0.3  # noised
