"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .openai_stub import OpenAiStub


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAiStub]:
    """An OpenAI-speaking upstream stub on loopback, one per test module."""
    s = OpenAiStub().start()
    yield s
    s.stop()
