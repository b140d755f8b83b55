"""ONNX Runtime static INT8 (deploy.onnx_int8) of a trained network: every embedding kept, the graph really INT8."""
import os

import mxnet as mx
import numpy as np
import pytest

from deploy import export, onnx_int8
from deploy.embedders import compare_embeddings
from deploy.onnx_runtime import OnnxEmbedder
from tests.test_deploy import _trained_like
from tests.test_export import generated_faces, trained_net  # noqa: F401  (fixtures)

pytest.importorskip("onnxruntime.quantization", reason="ONNX Runtime's quantization needs ml_dtypes")


@pytest.fixture(scope="module")
def quantized(trained_net, generated_faces):  # noqa: F811
    calib = export.load_images(os.path.join(generated_faces, "train.rec"), 32, seed=0)
    probe = np.concatenate([export.load_images(os.path.join(generated_faces, f"{name}.bin"), 8, seed=1)
                            for name in ("synth_lfw", "synth_cfp_fp", "synth_agedb_30")])
    return probe, onnx_int8.quantize_onnx_int8(
        export_graph(trained_net), calib)


def export_graph(net):
    from deploy.lower import build_deploy_graph

    return build_deploy_graph(net, "dense").to_onnx()


def test_int8_keeps_every_embedding_of_a_trained_network(trained_net, quantized):  # noqa: F811
    probe, model = quantized
    reference = trained_net(mx.nd.array(probe)).asnumpy()
    stats = compare_embeddings(reference, OnnxEmbedder(model)(probe))
    assert stats["max_abs_diff"] > 1e-3  # really quantized
    assert stats["min_cosine"] >= 0.99, stats  # every image


def test_onnx_runtime_runs_int8_convolutions(quantized):
    ops = onnx_int8.quantized_op_counts(quantized[1])
    assert ops.get("QLinearConv", 0) >= 100  # every convolution but the stem
    assert ops.get("Conv", 0) + ops.get("FusedConv", 0) + ops.get("NchwcConv", 0) <= 1


def test_export_refuses_a_bad_quantization(tmp_path):
    net = _trained_like("mobilefacenet", seed=3)  # untrained-like weights: INT8 loses the embedding
    images = export.random_images(10, seed=2)
    with pytest.raises(export.ExportMismatch, match=r"min cosine similarity 0\.\d+ < 0\.9999"):
        onnx_int8.export_onnx_int8(net, str(tmp_path / "int8.onnx"), images[:8], images[8:], min_cosine=0.9999)
    assert not os.path.exists(tmp_path / "int8.onnx")


def test_benchmark_runner_runs_the_int8_graph():
    from deploy.runners import make_runner

    net = _trained_like("mobilefacenet", seed=1)
    runner, madds, layout = make_runner(net, "onnxruntime_int8", 2, calib=export.random_images(8), threads=1)
    assert runner()[0].shape == (2, 512) and madds > 0 and layout
