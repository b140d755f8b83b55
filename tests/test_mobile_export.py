"""tools/export.py's mobile formats (ncnn, MNN, ONNX Runtime INT8, native-PReLU ONNX), the graph forms each runtime
fuses, and the benchmark's and profiler's mobile modes."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from deploy import export
from deploy.lower import build_deploy_graph
from tests.test_deploy import _trained_like
from tests.test_export import source  # noqa: F401  (fixture)
from tools import export as export_cli


def test_native_prelu_form_matches_and_has_no_prelu_convolutions():
    import onnxruntime as ort

    net = _trained_like("mobilefacenet", seed=4)
    x = export.random_images(2, seed=3)
    model = build_deploy_graph(net).to_onnx(prelu="native")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("PRelu") == 33 and ops.count("Conv") == 50  # the network's 50 convolutions, no 1x1 PReLU ones
    slopes = {i.name: list(i.dims) for i in model.graph.initializer if i.name.endswith("_alpha")}
    assert all(dims[0] == 1 and dims[2:] == [1, 1] for dims in slopes.values())  # (1, C, 1, 1): MNN's PReLU
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"data": x})[0] - net(mx.nd.array(x)).asnumpy()).max() <= 1e-4
    with pytest.raises(ValueError, match="prelu form 'max'"):
        build_deploy_graph(net).to_onnx(prelu="max")


def test_cli_writes_every_mobile_format(source, tmp_path, capsys):  # noqa: F811
    _, spec, _ = source
    formats = "ncnn,ncnn_fp16,mnn,mnn_fp16,onnx"
    assert export_cli.main(["--model", spec, "--output", str(tmp_path), "--formats", formats, "--prelu",
                            "native"]) == 0
    report = json.load(open(tmp_path / "export.json"))["exports"]
    for fmt in ("ncnn", "mnn"):
        assert report[fmt]["max_abs_diff"] <= 1e-3 and report[fmt]["min_cosine"] >= 0.9999
        assert report[fmt + "_fp16"]["min_cosine"] >= 0.9999
    assert report["onnx"]["prelu"] == "native"
    for name in ("ncnn/model.param", "ncnn/model.bin", "ncnn_fp16/model.bin", "model.mnn", "model_fp16.mnn",
                 "model.onnx"):
        assert os.path.getsize(tmp_path / name) > 1000, name
    out = capsys.readouterr().out
    assert "ncnn_fp16 ok" in out and "mnn     ok" in out


def test_cli_needs_calibration_data_for_onnx_int8(source, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="onnx_int8 needs --calib-data"):
        export_cli.main(["--model", source[1], "--output", str(tmp_path), "--formats", "onnx_int8"])


def test_benchmark_mobile_modes_and_thread_runs(monkeypatch):
    from tools.bench import inference as benchmark

    monkeypatch.setattr(benchmark, "matmul_gflops", lambda threads=None: {"best": 100.0})  # not what is tested
    result = benchmark.run_benchmark(["mobilefacenet", "seesaw_shuffle"], ["ncnn", "mnn"], runs1=2, runs32=1,
                                     batch=2, warmup=1, threads=1, memory=False, progress=False)
    rows = {(r["network"], r["mode"]): r for r in result["rows"]}
    assert len(rows) == 4 and all(r["threads"] == 1 and r["throughput"] > 0 for r in rows.values())
    assert rows[("seesaw_shuffle", "ncnn")]["ratio"]["latency"] == pytest.approx(
        rows[("seesaw_shuffle", "ncnn")]["latency_ms"] / rows[("mobilefacenet", "ncnn")]["latency_ms"])
    other = json.loads(json.dumps(result))  # a second run, as with --threads 1,2
    for row in other["rows"]:
        row["threads"] = 2
        row["mode"] = {"ncnn": "onnxruntime", "mnn": "onnxruntime_int8"}[row["mode"]]
    table = benchmark.format_table(benchmark.merge_runs([result, other]))
    assert "| seesaw_shuffle | mnn | 1 |" in table and "| seesaw_shuffle | onnxruntime_int8 | 2 |" in table
    assert "ONNX Runtime INT8 / fp32 batch-2 throughput: mobilefacenet (2 threads)" in table
    assert table.count(" cores; matrix multiply") == 2  # one machine line per run


def test_profile_command_lists_layer_types(tmp_path):
    from tools.bench import profile

    assert profile.main(["--networks", "seesaw_shuffle", "--runs", "1", "--json", str(tmp_path / "p.json")]) == 0
    profiles = json.load(open(tmp_path / "p.json"))
    assert [p["runtime"] for p in profiles] == ["ncnn", "mnn", "onnxruntime"]
    by_runtime = {p["runtime"]: p["layers"] for p in profiles}
    swish = {"dense": 33, "cells": 125}[profiles[0]["layout"]]  # one swish per expansion output piece and block
    assert by_runtime["ncnn"]["Swish"]["count"] == swish and "UnaryOp" in by_runtime["mnn"]
    assert any(kind in by_runtime["onnxruntime"] for kind in ("Conv", "FusedConv", "NchwcConv"))
