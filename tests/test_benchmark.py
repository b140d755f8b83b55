"""tools/bench/inference.py: every (network, mode) is measured in one run, with ratios to mobilefacenet."""
import json
import re

import pytest

from tools.bench import inference as benchmark


@pytest.fixture(scope="module")
def result():
    return benchmark.run_benchmark(["mobilefacenet", "seesaw_shuffle", "seesaw_shuffle:no_se"],
                                   ["fused", "int8", "onnxruntime"], runs1=2, runs32=1, batch=2, warmup=1,
                                   memory=False, progress=False)


def test_rows_and_ratios(result):
    rows = {(r["network"], r["mode"]): r for r in result["rows"]}
    # the folded-graph option no_se is measured in the folded-graph modes only
    assert set(rows) == ({(n, m) for n in ("mobilefacenet", "seesaw_shuffle") for m in ("fused", "int8", "onnxruntime")}
                         | {("seesaw_shuffle:no_se", "onnxruntime")})
    for (name, mode), row in rows.items():
        assert row["latency_ms"] > 0 and row["throughput"] > 0 and row["gflops"] > 0
        base = rows[("mobilefacenet", mode)]
        assert row["ratio"]["latency"] == pytest.approx(row["latency_ms"] / base["latency_ms"])
        assert row["ratio"]["throughput"] == pytest.approx(row["throughput"] / base["throughput"])
    assert rows[("mobilefacenet", "onnxruntime")]["ratio"]["madds"] == 1.0
    # batches run the folded seesaw_shuffle graph with the paper's multiply-adds, fewer than MobileFaceNet's;
    # batch 1 the dense layout (fewest operators), whose zero blocks cost MobileFaceNet's pointwise MAdds
    ss, mfn = rows[("seesaw_shuffle", "onnxruntime")], rows[("mobilefacenet", "onnxruntime")]
    assert ss["layouts"] == {1: "dense", 2: "cells"}
    assert ss["madds_batch"] / mfn["madds_batch"] < 0.7
    assert ss["madds"] > ss["madds_batch"]
    # without the SE blocks the graph loses their fully connected layers' MAdds, nothing else
    no_se = rows[("seesaw_shuffle:no_se", "onnxruntime")]
    assert 0 < ss["madds_batch"] - no_se["madds_batch"] < 0.01 * ss["madds_batch"]
    assert no_se["ratio"]["latency"] == pytest.approx(no_se["latency_ms"] / mfn["latency_ms"])


@pytest.mark.parametrize("spec, expected", [
    ("seesaw_shuffle", ("seesaw_shuffle", {}, {})),
    ("mobilefacenet:swish", ("mobilefacenet", {"act": "swish"}, {})),
    ("seesaw_share:relu:no_se", ("seesaw_share", {"act": "relu"}, {"se": False})),
    ("seesaw_share:no_se", ("seesaw_share", {}, {"se": False})),
])
def test_network_options(spec, expected):
    assert benchmark.parse_network(spec) == expected


@pytest.mark.parametrize("argv, message", [
    (["--networks", "seesaw_shuffle:relu:swish"], "expected name[:activation][:no_se]"),
    (["--networks", "seesaw_shuffle:no_se", "--modes", "fused,int8"], "no_se applies"),
    (["--networks", "mobilefacenet:no_se", "--modes", "onnxruntime"], "no_se applies"),
])
def test_bad_network_options_are_refused(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        benchmark.main(argv)


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


def test_command_line_shares_one_onnx_thread_pool(tmp_path):
    """The CLI times the ONNX Runtime sessions on one process-wide pool (see share_onnx_threads); run in a
    child process because the pool cannot be undone in this one."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "b.json"
    done = subprocess.run([sys.executable, "tools/bench/inference.py", "--networks", "seesaw_share", "--modes",
                           "onnxruntime", "--runs", "5", "--runs-batch", "2", "--batch", "2", "--no-memory",
                           "--json", str(out)], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["machine"]["onnx_thread_pool"] == "shared"
    assert [(r["network"], r["mode"]) for r in result["rows"]] == [("mobilefacenet", "onnxruntime"),
                                                                 ("seesaw_share", "onnxruntime")]
    assert "| seesaw_share | onnxruntime |" in done.stdout
