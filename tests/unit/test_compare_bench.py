"""The comparison bench's arithmetic (bench/compare.py): added latency, ratios and targets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def compare() -> Any:
    sys.path.insert(0, str(BENCH_DIR))  # its sibling modules (loadgen, servers, ...)
    try:
        spec = importlib.util.spec_from_file_location("compare_bench", BENCH_DIR / "compare.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["compare_bench"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH_DIR))
    return module


def summaries(compare: Any, litellm: bool) -> dict[tuple[str, str], Any]:
    def one(route: str, name: str, p50: float, p99: float, rps: float, cpu: float) -> Any:
        s = compare.Summary(route, name)
        # two rounds around the value: the median is the value itself
        for k in (0.9, 1.1):
            s.rounds.append(compare.Round(p50 * k, p99 * k, rps * k, cpu * k, 100.0))
        return s

    out = {("llm", "direct"): one("llm", "direct", 0.1, 0.5, 10_000, 20),
           ("llm", "passthrough"): one("llm", "passthrough", 0.5, 1.5, 2000, 300),
           ("llm", "modelfence"): one("llm", "modelfence", 0.5, 2.0, 1300, 240)}
    if litellm:
        out[("llm", "litellm")] = one("llm", "litellm", 9.0, 20.0, 100, 9000)
    out[("oip", "direct")] = one("oip", "direct", 1.0, 2.0, 1000, 400)
    out[("oip", "passthrough")] = one("oip", "passthrough", 1.4, 3.0, 900, 300)
    out[("oip", "modelfence")] = one("oip", "modelfence", 2.0, 5.0, 500, 600)
    return out


def test_targets_from_medians(compare: Any) -> None:
    checks = {c["what"]: c for c in compare.verdicts(summaries(compare, litellm=True))}
    added = checks["OpenAI: added p50 at 1 connection"]
    assert added["value"] == pytest.approx(0.4) and added["met"] is True
    assert checks["OpenAI: modelfence / passthrough req/s"]["value"] == pytest.approx(0.65)
    assert checks["OpenAI: modelfence / LiteLLM req/s"]["value"] == pytest.approx(13.0)
    assert checks["OpenAI: modelfence / LiteLLM req/s"]["met"] is False  # target 20x
    assert checks["OpenAI: modelfence CPU per request"]["met"] is True  # 240 <= 250
    assert checks["OIP: added p50 at 1 connection"]["value"] == pytest.approx(1.0)
    assert checks["OIP: added p99 at 1 connection"]["met"] is False  # +3 ms > 2 ms
    assert checks["OIP: modelfence / passthrough req/s"]["met"] is False  # 56 % < 60 %


def test_litellm_not_measured_is_said_not_guessed(compare: Any) -> None:
    checks = {c["what"]: c for c in compare.verdicts(summaries(compare, litellm=False))}
    assert checks["OpenAI: modelfence / LiteLLM req/s"]["value"] is None
    assert checks["OpenAI: modelfence / LiteLLM req/s"]["met"] is None


def test_rows_say_added_and_share_of_passthrough(compare: Any) -> None:
    rows = {(r["route"], r["target"]): r for r in compare.rows(summaries(compare, True))}
    assert "added_p50_ms" not in rows[("OIP", "direct")]
    assert rows[("OIP", "modelfence")]["added_p50_ms"] == pytest.approx(1.0)
    assert rows[("OIP", "modelfence")]["vs_passthrough_pct"] == 56
    assert rows[("OpenAI", "litellm")]["rps"] == 100


def test_a_run_can_be_saved_for_the_docs(compare: Any, tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import results
    finally:
        sys.path.remove(str(BENCH_DIR))
    rows = compare.rows(summaries(compare, True))
    path = tmp_path / "compare.json"
    results.save(path, results.result("compare", "python bench/compare.py", compare.COLUMNS,
                                      rows))
    assert results.load(path)["rows"] == rows
