"""tools/benchmark.py: every (network, mode) is measured in one run, with ratios to mobilefacenet."""
import json

import pytest

from tools import benchmark


@pytest.fixture(scope="module")
def result():
    return benchmark.run_benchmark(["mobilefacenet", "seesaw_shuffle"], ["fused", "int8", "onnxruntime"], runs1=2,
                                   runs32=1, batch=2, warmup=1, memory=False, progress=False)


def test_rows_and_ratios(result):
    rows = {(r["network"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {(n, m) for n in ("mobilefacenet", "seesaw_shuffle") for m in ("fused", "int8", "onnxruntime")}
    for (name, mode), row in rows.items():
        assert row["latency_ms"] > 0 and row["throughput"] > 0 and row["gflops"] > 0
        base = rows[("mobilefacenet", mode)]
        assert row["ratio"]["latency"] == pytest.approx(row["latency_ms"] / base["latency_ms"])
        assert row["ratio"]["throughput"] == pytest.approx(row["throughput"] / base["throughput"])
    assert rows[("mobilefacenet", "onnxruntime")]["ratio"]["madds"] == 1.0
    # the folded seesaw_shuffle graph runs the paper's multiply-adds, fewer than MobileFaceNet's
    assert rows[("seesaw_shuffle", "onnxruntime")]["ratio"]["madds"] < 0.8


def test_table_reports_int8_speedup(result):
    speedups = benchmark.int8_speedups(result)
    rows = {(r["network"], r["mode"]): r for r in result["rows"]}
    assert set(speedups) == {"mobilefacenet", "seesaw_shuffle"}
    assert speedups["seesaw_shuffle"] == pytest.approx(rows[("seesaw_shuffle", "int8")]["throughput"]
                                                       / rows[("seesaw_shuffle", "fused")]["throughput"])
    table = benchmark.format_table(result)
    assert "INT8 / fused fp32 batch-2 throughput: mobilefacenet" in table
    assert table.count("| seesaw_shuffle |") == 3
    json.dumps(result)  # what --json writes
