"""The bench scripts' `--save` writes the result format the docs render (bench/results.py)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .snippets import ROOT


def _bench(name: str) -> ModuleType:
    """A bench script as a module: they import their siblings by plain name."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def _round_trip(doc: dict[str, object], tmp_path: Path) -> list[str]:
    results = _bench("results")
    path = tmp_path / "result.json"
    results.save(path, doc)
    loaded = results.load(path)
    assert loaded["commit"] == results.commit() and loaded["machine"]
    lines: list[str] = results.table(loaded)
    return lines


def test_overhead_saves_the_table_it_prints(tmp_path: Path) -> None:
    overhead = _bench("overhead")
    s = {name: overhead.Summary(name, p50, p50 * 2, rps, cpu) for name, p50, rps, cpu in
         [("direct", 0.4, 5000, 100), ("passthrough", 0.9, 2500, 300),
          ("gateway", 1.3, 1700, 600)]}
    lines = _round_trip(overhead.saved_result(s, "python bench/overhead.py"), tmp_path)
    assert lines[2] == "| direct | 0.400 | 0.800 | 5,000 | — | — | 200 % | 100 |"
    assert lines[4] == ("| gateway | 1.300 | 2.600 | 1,700 | **+0.900** | **+1.800** | **68 %** "
                        "| 600 |")


def test_llm_saves_the_table_it_prints(tmp_path: Path) -> None:
    llm = _bench("llm")

    def summary(name: str, p50: float, ttft: float, rps: float | None) -> object:
        fields: dict[str, float | None] = {f: None for f in llm.Round.__dataclass_fields__}
        fields.update(p50_ms=p50, p99_ms=p50 * 2, ttft_p50_ms=ttft, rps=rps,
                      cpu_us_per_req=None if rps is None else 100.0)
        return llm.Summary(name, [llm.Round(**fields)])

    s = {"direct": summary("direct", 0.1, 0.3, 9000), "modelfence": summary("modelfence", 1.0,
         1.2, 2000), "mf+canary": summary("mf+canary", 1.1, 8.0, None)}
    lines = _round_trip(llm.saved_result(s, "python bench/llm.py"), tmp_path)
    assert lines[3] == ("| modelfence | 1.000 | **+0.900** | +1.800 | 1.200 | **+0.900** | "
                        "2,000 | 100 |")
    assert lines[4] == "| mf+canary | 1.100 | +1.000 | +2.000 | 8.000 | +7.700 | — | — |"


def test_startup_saves_the_table_it_prints(tmp_path: Path) -> None:
    startup = _bench("startup")
    mib = 1024 * 1024
    doc = startup.saved_result({"total": 200 * mib, "installed": 180 * mib},
                               {"total": 500 * mib, "installed": 480 * mib}, "73a51f1",
                               [1.2, 1.5, 1.1], [0.8, 0.9, 0.7], "python bench/startup.py")
    lines = _round_trip(doc, tmp_path)
    assert lines[2] == ("| `pip install .` of this tree (base, no extras) | **200 MiB** | "
                        "180 MiB | **1.20 s** | 1.50 s | 0.80 s |")
    assert lines[4].startswith("| the base install as a share of 73a51f1 | 40.0% | 37.5% |")


def test_audit_and_quota_save_the_tables_they_print(tmp_path: Path) -> None:
    audit, quota = _bench("audit"), _bench("quota")
    lines = _round_trip(audit.saved_result({
        "append sqlite batched": {"per_s": 48166.4, "write_p50_us": 4.2, "write_p99_us": 11.0,
                                  "cpu_us_per_record": 33.94},
        "verify sqlite": {"per_s": 213422.0}}, "python bench/audit.py"), tmp_path)
    assert lines[2:] == ["| append sqlite batched | 48,166 | 33.9 | 4 µs | 11 µs |",
                         "| verify sqlite | 213,422 | — | — | — |"]
    stats = quota.Stats(p50_us=6.44, p99_us=8.91, mean_us=7.0, per_s=50000.0)
    lines = _round_trip(quota.saved_result({"rate limit moving-window on memory": stats},
                                           "python bench/quota.py"), tmp_path)
    assert lines[2] == "| rate limit moving-window on memory | 6.4 µs | 8.9 µs | 50,000 |"


def test_the_corpora_save_their_targets(tmp_path: Path) -> None:
    from modelfence.evaluation.target import Target

    results = _bench("results")
    targets = [Target("test", "honest callers flagged", "0", "0", "2 | 3", False, "see x")]
    lines = _round_trip(results.corpus_result("corpus", "python bench/corpus.py", targets),
                        tmp_path)
    assert lines[2] == "| test | honest callers flagged | 0 | 0 | 2 \\| 3 | **missed** | see x |"


def test_a_malformed_result_is_refused(tmp_path: Path) -> None:
    results = _bench("results")
    doc = results.result("x", "python bench/x.py", [{"key": "a", "title": "A"}],
                         [{"a": 1, "b": 2}])
    with pytest.raises(ValueError, match="values no column shows"):
        results.save(tmp_path / "x.json", doc)


X = "\N{MULTIPLICATION SIGN}"


def _same_columns_as_published(doc: dict[str, object], name: str) -> None:
    """A new run's file renders the same table as the one the page quotes now."""
    published = _bench("results").load(name)
    assert doc["columns"] == published["columns"], name


def test_the_oip_benches_save_the_tables_the_page_shows(tmp_path: Path) -> None:
    readiness, poison = _bench("oip_readiness"), _bench("oip_poison")
    grpc, binary = _bench("oip_grpc"), _bench("oip_binary")

    doc = readiness.saved_result([
        {"path": "/v2/health/ready", "statuses": {"200": 50}, "p50_ms": 3.41, "p99_ms": 12.6,
         "max_ms": 62.2},
        {"path": "/v2/models/stalled/ready", "statuses": {"503": 49, "200": 1}, "p50_ms": 1.2,
         "p99_ms": 16.8, "max_ms": 53.5}], "python bench/oip_readiness.py --n 50")
    _same_columns_as_published(doc, "oip-readiness-2026-12-03")
    lines = _round_trip(doc, tmp_path)
    assert lines[2:] == [
        f"| `GET /v2/health/ready` | 200 {X} 50 | 3.4 ms | 12.6 ms | **62.2 ms** |",
        f"| `GET /v2/models/stalled/ready` | 200 {X} 1, 503 {X} 49 | 1.2 ms | 16.8 ms "
        "| 53.5 ms |"]

    doc = poison.saved_result({"valid": 1000, "hostile": 1000, "connections": 4, "seconds": 23.71,
                               "valid_failures": 0, "hostile_statuses": {"200": 320, "400": 510,
                                                                         "413": 10, "502": 160},
                               "unclear_answers": [], "gateway_log_tracebacks": 0},
                              19, "python bench/oip_poison.py")
    _same_columns_as_published(doc, "oip-poison-2026-12-03")
    assert _round_trip(doc, tmp_path)[2] == ("| 4 + 4 connections, seed 19 | 1,000 | **0** | "
                                             "1,000 | 320 | 510 | 160 | 10 | 23.7 s |")

    summary = {"rounds": 5, "requests": 400, "load_average": (5.13, 5.7, 6.0),
               "grpc": {"direct_ms": {"p50": 0.958}, "gateway_ms": {"p50": 2.724},
                        "added_p50_ms": 1.765, "added_p50_ms_per_round": [1.404, 1.767],
                        "gateway_cpu_ms_per_request": 1.514},
               "rest": {"direct_ms": {"p50": 1.364}, "gateway_ms": {"p50": 4.111},
                        "added_p50_ms": 2.747, "added_p50_ms_per_round": [1.958, -0.62],
                        "gateway_cpu_ms_per_request": 1.924}}
    doc = grpc.saved_result(summary, "python bench/oip_grpc.py --rest")
    _same_columns_as_published(doc, "oip-grpc-2026-12-03")
    assert _round_trip(doc, tmp_path)[2:] == [
        f"| 5 {X} 400, load 5.1 | gRPC | 0.958 ms | 2.724 ms | **+1.765 ms** | 1.404 / 1.767 "
        "| 1.514 ms |",
        f"| 5 {X} 400, load 5.1 | REST | 1.364 ms | 4.111 ms | +2.747 ms | 1.958 / -0.620 "
        "| 1.924 ms |"]

    rounds = {"prebuilt": {"json": binary.Rounds([480.0, 490.0], [1.1, 1.2], [0.5, 0.5]),
                           "binary": binary.Rounds([500.0, 470.0], [1.0, 1.1], [0.4, 0.4])},
              "tritonclient": {"json": binary.Rounds([200.0], [1.7], [1.3]),
                               "binary": binary.Rounds([500.0], [1.1], [0.4])}}
    doc = binary.saved_result(rounds, f"5 s {X} 1, load 7.8", {"json": 0.632, "binary": 0.583},
                              "python bench/oip_binary.py")
    _same_columns_as_published(doc, "oip-binary-2026-12-03")
    assert _round_trip(doc, tmp_path)[2:] == [
        f"| 5 s {X} 1, load 7.8 | prebuilt | 485 | 485 | 1.00{X} | 1.150 ms | 1.050 ms |",
        f"| 5 s {X} 1, load 7.8 | tritonclient | 200 | 500 | **2.50{X}** | 1.700 ms | 1.100 ms |"]
    assert "JSON 0.632 ms, binary 0.583 ms" in doc["note"]
