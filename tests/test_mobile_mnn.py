"""MNN exports (deploy.mnn_runtime, deploy.mobile_export): MNN's conversion of the folded graph reproduces the source
network in MNN, holds the fused ops, and a damaged model file is refused with a message naming it."""
import os

import mxnet as mx
import numpy as np
import pytest

from deploy import export, mobile_export
from deploy.embedders import compare_embeddings
from tests.test_deploy import _trained_like

mnn_runtime = pytest.importorskip("deploy.mnn_runtime")
if not mnn_runtime.mnn_available():
    pytest.skip("the mnn wheel is not installed (pip install mnn)", allow_module_level=True)


@pytest.fixture(scope="module")
def probe():
    return export.random_images(3, seed=5)


@pytest.fixture(scope="module")
def shuffle_export(tmp_path_factory, probe):
    net = _trained_like("seesaw_shuffle", seed=8)
    path = tmp_path_factory.mktemp("mnn") / "model.mnn"
    return net, path, mobile_export.export_mnn(net, str(path), probe, layout="dense")


def test_export_reproduces_the_network_and_fuses_swish(shuffle_export, probe):
    net, path, result = shuffle_export
    assert result["max_abs_diff"] <= 1e-3 and result["min_cosine"] >= 0.9999
    ops = result["ops"]
    # swish became one SiLU op each, the SE PReLU (slopes (1, C, 1, 1)) one PReLU op, not Less/Select/Mul
    assert ops["UnaryOp.SILU"] == 33 and ops["PReLU"] == 15 and "Select" not in ops
    embedder = mnn_runtime.MnnEmbedder(str(path), threads=1)
    reference = net(mx.nd.array(probe)).asnumpy()
    for part in (probe[:1], probe):
        stats = compare_embeddings(reference[:len(part)], embedder(part))
        assert stats["max_abs_diff"] <= 1e-3 and stats["min_cosine"] >= 0.9999


def test_fp16_weights_are_rounded_to_nearest(shuffle_export, probe, tmp_path):
    """MNN's converter truncates weights to float16; rounded to nearest first, the error is ~12x smaller."""
    net, _, fp32 = shuffle_export
    result = mobile_export.export_mnn(net, str(tmp_path / "fp16.mnn"), probe, layout="dense", fp16=True)
    assert result["min_cosine"] >= 0.99999 and result["bytes"] < 0.55 * fp32["bytes"]
    model = mobile_export.runtime_onnx(net, "mnn", "dense")[0]
    rounded = mnn_runtime.round_weights_to_fp16(model)
    weights = {i.name: i for i in rounded.graph.initializer}
    name = next(n for n, i in weights.items() if len(i.dims) == 4)
    from onnx import numpy_helper

    w = numpy_helper.to_array(weights[name])
    assert np.array_equal(w, w.astype(np.float16).astype(np.float32))


def test_damaged_files_are_refused_with_their_name(shuffle_export, tmp_path):
    data = shuffle_export[1].read_bytes()
    (tmp_path / "cut.mnn").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cut.mnn: damaged or truncated MNN model"):
        mnn_runtime.MnnEmbedder(str(tmp_path / "cut.mnn"))
    (tmp_path / "text.mnn").write_text("not a model\n" * 200)
    with pytest.raises(ValueError, match="text.mnn: .*MNN model"):
        mnn_runtime.MnnEmbedder(str(tmp_path / "text.mnn"))
    with pytest.raises(ValueError, match="none.mnn: MNN model file not found"):
        mnn_runtime.MnnEmbedder(str(tmp_path / "none.mnn"))


def test_op_profile_from_mnn_callbacks(shuffle_export, probe):
    profile = mnn_runtime.profile_ops(str(shuffle_export[1]), probe[0], threads=1, runs=1)
    assert profile["Convolution"][0] >= 48 and profile["Convolution"][1] > 0
    assert "PReLU" in profile and "UnaryOp" in profile
