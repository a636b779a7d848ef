"""A local backend: a saved Hugging Face transformers causal LM served in-process.

Configured as an LLM whose upstream is `local:PATH`. torch and transformers (the `llm`
extra) are imported when such a model is first called, never at start-up; that they are
installed is checked at start (`require_extra`), so a missing extra is one line then, not
an error at the first request. Generation runs
in a worker thread, one request at a time per model; it answers chat and completions
(streams are the finished answer cut into chunks) with `logprobs` / `top_logprobs`,
`logit_bias`, `temperature`, `seed`, `n`, `stop` and `max_tokens`.

A model with `text_watermark` set gets the keyed green-list bias of
`modelfence.watermark.llm_text` added to its logits at every step (after `logit_bias`,
before sampling or argmax), keyed per model name from the secret the gateway gives the
backend. The logprobs returned are those of the distribution actually sampled from, the
biased one, as with `logit_bias`: the unbiased numbers would take a second softmax per step
and would tell a caller exactly how far each token was pushed.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from ..extras import require
from .settings import LlmModel

if TYPE_CHECKING:
    from ..watermark.llm_text import TextWatermark

#: (key, gamma, delta) of a model's text watermark.
WatermarkSpec = tuple[bytes, float, float]

#: OpenAI's own bound on one logit_bias value.
MAX_BIAS = 100.0


#: What a local model imports (the `llm` extra).
_MODULES = ("torch", "transformers")


def require_extra(models: Iterable[LlmModel]) -> None:
    """Raise ConfigurationError naming the `llm` extra when a `local:` model is configured
    without torch or transformers; imports nothing (called at start)."""
    names = sorted(m.name for m in models if m.local_path is not None)
    if names:
        require("llm", f"local model {', '.join(names)}", *_MODULES)


def _reject(message: str) -> UpstreamRejected:
    return UpstreamRejected(400, message)


@dataclass(slots=True)
class _Token:
    id: int
    text: str
    bytes: list[int]
    logprob: float
    top: list[tuple[int, float]]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (byte-level BPE vocabularies use it)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
            *range(ord("\xae"), ord("\xff") + 1)]
    table = {b: chr(b) for b in kept}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _token_bytes(tokenizer: Any, size: int) -> list[bytes]:
    """Each token id's exact bytes (byte-level BPE), else its decoded text as UTF-8."""
    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: list[bytes] = []
    for i in range(size):
        piece = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
        if piece is None:
            out.append(b"")
        elif i not in special and all(c in decoder for c in piece):
            out.append(bytes(decoder[c] for c in piece))
        else:
            out.append(tokenizer.decode([i]).encode())
    return out


class LocalModel:
    """One model folder, loaded on first use; calls are serialised by a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._bytes: list[bytes] = []
        self.vocab_size = 0
        self.max_positions = 1024
        self._cache_arg = "past_key_values"  # transformers 5.x names it `cache`
        self._watermarks: dict[WatermarkSpec, TextWatermark] = {}

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # `require_extra` found them at start: a broken install
            raise UpstreamError(f"local models need the 'llm' extra (cannot import "
                                f"{exc.name or 'torch or transformers'}): "
                                "pip install 'modelfence[llm]'") from None
        torch.set_num_threads(int(os.environ.get("MODELFENCE_TORCH_THREADS", "1")))
        if not self.path.is_dir():
            raise UpstreamError(f"local model folder {str(self.path)[:200]!r} does not exist")
        tokenizer: Any = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True)
        model.eval()
        if "cache" in inspect.signature(model.forward).parameters:
            self._cache_arg = "cache"
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        config: Any = model.config
        positions: Any = (getattr(config, "n_positions", None)
                          or getattr(config, "max_position_embeddings", None) or 1024)
        self.max_positions = int(positions)
        self._bytes = _token_bytes(tokenizer, self.vocab_size)
        self._tokenizer = tokenizer
        self._model = model

    def answer(self, kind: str, body: dict[str, Any],
               watermark: WatermarkSpec | None = None) -> dict[str, Any]:
        """The OpenAI answer (non-stream shape) for a `chat` or `completion` request,
        watermarked with `watermark` (key, gamma, delta) when given."""
        with self._lock:
            self._load()
            return self._answer(kind, body, self._watermark(watermark))

    def _watermark(self, spec: WatermarkSpec | None) -> TextWatermark | None:
        if spec is None:
            return None
        found = self._watermarks.get(spec)
        if found is None:
            from ..watermark.llm_text import TextWatermark

            key, gamma, delta = spec
            found = self._watermarks[spec] = TextWatermark(key, self.vocab_size, gamma, delta)
        return found

    # -- request parsing ----------------------------------------------------------------------

    def _prompt(self, kind: str, body: dict[str, Any]) -> str:
        if kind == "completion":
            prompt = body.get("prompt", "")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise _reject("prompt: a local model takes one string")
            return prompt
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _reject("messages: required (a non-empty list)")
        lines = []
        for m in messages:
            if not isinstance(m, dict):
                raise _reject("messages: each must be an object")
            content = m.get("content") or ""
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content
                                  if isinstance(p, dict) and isinstance(p.get("text"), str))
            if not isinstance(content, str):
                raise _reject("messages[].content: must be a string or text parts")
            lines.append(f"{m.get('role', 'user')}: {content}\n")
        return "".join(lines) + "assistant:"

    def _bias(self, body: dict[str, Any]) -> Any:
        import torch

        raw = body.get("logit_bias")
        if not raw:
            return None
        if not isinstance(raw, dict):
            raise _reject("logit_bias: must be an object of token id to bias")
        bias = torch.zeros(self.vocab_size)
        for key, value in raw.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise _reject(f"logit_bias: {str(key)[:20]!r} is not a token id") from None
            if not 0 <= token < self.vocab_size:
                raise _reject(f"logit_bias: token {token} is outside the vocabulary")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _reject(f"logit_bias[{token}]: must be a number")
            bias[token] = max(-MAX_BIAS, min(MAX_BIAS, float(value)))
        return bias

    @staticmethod
    def _int(body: dict[str, Any], field: str, default: int, low: int) -> int:
        value = body.get(field)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _reject(f"{field}: must be an integer of at least {low}")
        return value

    # -- generation ---------------------------------------------------------------------------

    def _answer(self, kind: str, body: dict[str, Any],
                watermark: TextWatermark | None = None) -> dict[str, Any]:
        import torch

        prompt = self._prompt(kind, body)
        max_tokens = self._int(body, "max_completion_tokens",
                               self._int(body, "max_tokens", 16, 1), 1)
        n = self._int(body, "n", 1, 1)
        if kind == "chat":
            top_k = self._int(body, "top_logprobs", 0, 0) if body.get("logprobs") else 0
            want_logprobs = bool(body.get("logprobs"))
        else:
            top_k = self._int(body, "logprobs", 0, 0) if body.get("logprobs") is not None else 0
            want_logprobs = body.get("logprobs") is not None
        temperature = body.get("temperature", 1.0)
        if temperature is None:
            temperature = 1.0
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
                0 <= temperature <= 2):
            raise _reject("temperature: must be a number from 0 to 2")
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
        bias = self._bias(body)
        seed = body.get("seed")
        generator = torch.Generator()
        if isinstance(seed, int) and not isinstance(seed, bool):
            generator.manual_seed(seed)
        else:
            generator.seed()

        ids = self._tokenizer(prompt)["input_ids"] or [self._eos()]
        room = self.max_positions - 1
        ids = ids[-room:]
        max_tokens = max(1, min(max_tokens, self.max_positions - len(ids)))
        choices = []
        completion_tokens = 0
        for index in range(n):
            tokens, finish = self._generate(ids, max_tokens, float(temperature), bias, top_k,
                                            stops, generator, watermark)
            completion_tokens += len(tokens)
            choices.append(self._choice(kind, index, tokens, finish, want_logprobs, top_k,
                                        stops))
        created = int(time.time())
        return {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": created, "model": body.get("model", ""), "choices": choices,
            "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                      "total_tokens": len(ids) + completion_tokens},
        }

    def _eos(self) -> int:
        eos = self._tokenizer.eos_token_id
        return int(eos) if eos is not None else 0

    def _generate(self, ids: list[int], max_tokens: int, temperature: float, bias: Any,
                  top_k: int, stops: list[str], generator: Any,
                  watermark: TextWatermark | None = None) -> tuple[list[_Token], str]:
        import torch

        eos = self._tokenizer.eos_token_id
        out: list[_Token] = []
        text = b""
        with torch.inference_mode():
            result = self._model(input_ids=torch.tensor([ids]), use_cache=True)
            for _ in range(max_tokens):
                logits = result.logits[0, -1, :].float()
                if bias is not None:
                    logits = logits + bias
                if watermark is not None:  # green list of the previous token
                    prev = out[-1].id if out else ids[-1]
                    logits = logits + torch.tensor(watermark.bias(prev))
                logp = torch.log_softmax(logits, dim=-1)
                if temperature == 0:
                    token = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=generator))
                top: list[tuple[int, float]] = []
                if top_k:
                    values, indices = torch.topk(logp, min(top_k, logp.shape[0]))
                    top = list(zip(indices.tolist(), values.tolist(), strict=True))
                raw = self._bytes[token]
                out.append(_Token(token, raw.decode("utf-8", "replace"), list(raw),
                                  float(logp[token]), top))
                if eos is not None and token == eos:
                    return out, "stop"
                text += raw
                if stops and any(s in text.decode("utf-8", "replace") for s in stops):
                    return out, "stop"
                cache = {self._cache_arg: getattr(result, self._cache_arg)}
                result = self._model(input_ids=torch.tensor([[token]]), use_cache=True,
                                     **cache)
        return out, "length"

    def _choice(self, kind: str, index: int, tokens: list[_Token], finish: str,
                want_logprobs: bool, top_k: int, stops: list[str]) -> dict[str, Any]:
        eos = self._tokenizer.eos_token_id
        raw = b"".join(bytes(t.bytes) for t in tokens if t.id != eos)
        text = raw.decode("utf-8", "replace")
        for s in stops:
            if s in text:
                text = text[:text.index(s)]
        choice: dict[str, Any] = {"index": index, "finish_reason": finish}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if not want_logprobs:
            choice["logprobs"] = None
            return choice
        if kind == "chat":
            choice["logprobs"] = {"content": [
                {"token": t.text, "logprob": t.logprob, "bytes": t.bytes,
                 "top_logprobs": [self._entry(i, lp) for i, lp in t.top]} for t in tokens]}
        else:
            offsets, at = [], 0
            for t in tokens:
                offsets.append(at)
                at += len(t.text)
            choice["logprobs"] = {
                "tokens": [t.text for t in tokens],
                "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{self._bytes[i].decode("utf-8", "replace"): lp
                                  for i, lp in t.top} for t in tokens] if top_k else None,
                "text_offset": offsets}
        return choice

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self._bytes[token]
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


class LocalBackend:
    """The `local:` models of one gateway process, each loaded on its first call."""

    def __init__(self, *, watermark_secret: bytes | None = None) -> None:
        self._models: dict[Path, LocalModel] = {}
        self._watermark_secret = watermark_secret

    def watermark(self, settings: LlmModel) -> WatermarkSpec | None:
        """(key, gamma, delta) of the model's text watermark; None when it has none."""
        wm = settings.text_watermark
        if wm is None:
            return None
        if self._watermark_secret is None:
            raise UpstreamError(f"model {settings.name!r} has a text_watermark but the local "
                                "backend was given no watermark secret")
        from ..watermark.llm_text import model_key

        return model_key(self._watermark_secret, settings.name), wm.gamma, wm.delta

    def model(self, settings: LlmModel) -> LocalModel:
        path = settings.local_path
        assert path is not None
        entry = self._models.get(path)
        if entry is None:
            entry = self._models[path] = LocalModel(path)
        return entry

    async def post(self, settings: LlmModel, path: str, body: bytes) -> bytes:
        """The JSON answer to a POST on `path`, as an HTTP upstream would give it."""
        doc = await self._answer(settings, path, body)
        return orjson.dumps(doc)

    async def stream(self, settings: LlmModel, path: str, body: bytes
                     ) -> AsyncIterator[bytes]:
        """The finished answer as SSE chunks, one per choice, then usage and [DONE]."""
        doc = await self._answer(settings, path, body)
        return _sse_chunks(doc, path.endswith("/chat/completions"))

    async def _answer(self, settings: LlmModel, path: str, body: bytes) -> dict[str, Any]:
        kinds = {"/chat/completions": "chat", "/completions": "completion"}
        kind = kinds.get(path)
        if kind is None:
            raise _reject("this local model serves chat and completions only")
        request = orjson.loads(body)
        model = self.model(settings)
        watermark = self.watermark(settings)
        try:
            return await asyncio.wait_for(asyncio.to_thread(model.answer, kind, request,
                                                            watermark),
                                          settings.timeout_s)
        except TimeoutError:
            raise UpstreamTimeout(
                f"the local model did not answer within {settings.timeout_s:g} s") from None


async def _sse_chunks(doc: dict[str, Any], chat: bool) -> AsyncIterator[bytes]:
    head = {"id": doc["id"], "object": "chat.completion.chunk" if chat else "text_completion",
            "created": doc["created"], "model": doc["model"]}
    for choice in doc["choices"]:
        part: dict[str, Any] = {"index": choice["index"], "logprobs": choice.get("logprobs"),
                                "finish_reason": choice["finish_reason"]}
        if chat:
            part["delta"] = {"role": "assistant", "content": choice["message"]["content"]}
        else:
            part["text"] = choice["text"]
        yield b"data: " + orjson.dumps({**head, "choices": [part]}) + b"\n\n"
    yield b"data: " + orjson.dumps({**head, "choices": [], "usage": doc["usage"]}) + b"\n\n"
    yield b"data: [DONE]\n\n"
