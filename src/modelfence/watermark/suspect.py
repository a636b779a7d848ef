"""Suspects: the model accused of being a copy, asked through an OIP endpoint or in-process.

A suspect answers rows with label values (as text), which are compared with the labels the
protected model gave. Over HTTP the red team's `HttpOracle` does the asking (the same codec,
errors and keep-alive connection); a model file is loaded with the gateway's own loaders
(skops trust checks, ONNX sessions). A suspect that sends only probabilities is read by
column position, as the protected model's classes.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..redteam.victims import Oracle, victim_source

Array = np.ndarray[Any, Any]


class Suspect(ABC):
    description: str = "suspect"
    kind: str = "model"
    n_features: int = -1
    sha256: str | None = None  # of the model file, when the suspect is one
    asked: int = 0

    @abstractmethod
    def _labels(self, x: Array) -> list[str]: ...

    def labels(self, x: Array) -> list[str]:
        """The suspect's answer to each row, as label text."""
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            return []
        out = self._labels(x)
        self.asked += len(x)
        return out

    def close(self) -> None:
        return None


class OracleSuspect(Suspect):
    """Any red-team oracle: a model in-process, or an OIP endpoint."""

    def __init__(self, oracle: Oracle, *, kind: str, description: str,
                 sha256: str | None = None, batch: int = 64) -> None:
        self._oracle = oracle
        self.kind = kind
        self.description = description
        self.sha256 = sha256
        self.n_features = oracle.n_features
        self._batch = max(1, batch)

    def _labels(self, x: Array) -> list[str]:
        out: list[str] = []
        for start in range(0, len(x), self._batch):
            idx = self._oracle.ask(x[start:start + self._batch]).labels
            classes = self._oracle.classes
            for i in np.asarray(idx, dtype=np.int64).tolist():
                value = classes[i] if classes is not None and i < len(classes) else None
                out.append(str(i) if value is None else str(value))
        return out

    def close(self) -> None:
        self._oracle.close()


class FunctionSuspect(Suspect):
    """A function from rows to labels (a thief's `predict` mapped to class values)."""

    def __init__(self, fn: Callable[[Array], Sequence[Any]], *,
                 description: str = "in-process model", n_features: int = -1) -> None:
        self._fn = fn
        self.description = description
        self.n_features = n_features

    def _labels(self, x: Array) -> list[str]:
        return [str(v) for v in self._fn(x)]


class OpenAIChatSuspect(Suspect):
    """A classifier behind an OpenAI-compatible chat endpoint (a fine-tuned LLM, a vendor API).

    Each row is sent as one user message, the features as a JSON list (or through a
    template with a ``{features}`` field), at temperature 0; the reply's text, stripped, is
    the label. One request per row, as such endpoints answer one conversation at a time.
    """

    kind = "openai"

    def __init__(self, url: str, key: str, model: str, *, template: str = "{features}",
                 timeout_s: float = 30.0) -> None:
        from urllib.parse import urlsplit

        from ..errors import ConfigurationError

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"{url}: not an http(s) address")
        if not model:
            raise ConfigurationError("an OpenAI-style suspect needs --suspect-model (the "
                                     "`model` field of its requests)")
        if "{features}" not in template:
            raise ConfigurationError("the suspect prompt template needs a {features} field")
        base = url.rstrip("/")
        self._url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self._key, self._model, self._template = key, model, template
        self._timeout = timeout_s
        self.description = f"{self._url} ({model})"

    def _labels(self, x: Array) -> list[str]:
        return [self._ask(row) for row in x]

    def _ask(self, row: Array) -> str:
        import json
        import urllib.error
        import urllib.request

        from ..errors import UpstreamError

        features = json.dumps([float(v) for v in row])
        body = json.dumps({"model": self._model, "temperature": 0, "max_tokens": 16,
                           "messages": [{"role": "user",
                                         "content": self._template.format(features=features)}]})
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(  # noqa: S310 (the scheme is checked: http or https)
            self._url, data=body.encode(), headers=headers, method="POST")
        try:
            with _no_redirects().open(request, timeout=self._timeout) as resp:
                answer = json.loads(resp.read())
            return str(answer["choices"][0]["message"]["content"]).strip()
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:  # never resent, with its key, to where a 3xx points
                raise UpstreamError(f"{self.description} answered a redirect ({exc.code}), "
                                    "which is not followed") from None
            raise UpstreamError(f"{self.description} answered {exc.code}") from None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamError(f"{self.description}: no usable answer "
                                f"({type(exc).__name__})") from None


def _no_redirects() -> Any:
    """A urllib opener that refuses redirects: urllib would resend the Authorization header
    (the suspect API's key) to whatever host a 3xx names."""
    import urllib.request

    class Refuse(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(Refuse)


def suspect_from(target: Any, *, key: str = "", model: str | None = None, batch: int = 16,
                 trusted_types: tuple[str, ...] = (), timeout_s: float = 30.0,
                 api: str = "oip", template: str = "{features}") -> Suspect:
    """An http(s):// OIP address (or, with `api="openai"`, an OpenAI-compatible chat
    endpoint), a .skops/.onnx file, or a fitted estimator."""
    text = str(target)
    if api == "openai":
        return OpenAIChatSuspect(text, key, model or "", template=template, timeout_s=timeout_s)
    if isinstance(target, str) and text.startswith(("http://", "https://")):
        from ..redteam.http_oracle import HttpOracle

        oracle = HttpOracle(text, key, model=model, batch=batch, timeout_s=timeout_s)
        return OracleSuspect(oracle, kind="oip", description=oracle.description, batch=batch)
    source = victim_source(target, trusted_types=trusted_types)
    victim = source.load()
    digest = None
    if source.path is not None:
        digest = _file_sha256(source.path)
    kind = "file" if source.path is not None else "model"
    return OracleSuspect(victim, kind=kind, description=source.description, sha256=digest)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
