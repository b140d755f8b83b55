"""ncnn exports (deploy.ncnn_runtime, deploy.mobile_export): pnnx's conversion of the folded graph reproduces the
source network in ncnn, holds the fused layers, and a damaged model file is refused with a message naming it."""
import os

import mxnet as mx
import numpy as np
import pytest

from deploy import export, mobile_export
from deploy.embedders import compare_embeddings
from tests.test_deploy import _trained_like

ncnn_runtime = pytest.importorskip("deploy.ncnn_runtime")
if not ncnn_runtime.ncnn_available():
    pytest.skip("the ncnn wheel is not installed (pip install ncnn)", allow_module_level=True)
try:
    ncnn_runtime.pnnx_executable()
except RuntimeError as err:
    pytest.skip(str(err), allow_module_level=True)


@pytest.fixture(scope="module")
def probe():
    return export.random_images(3, seed=4)


@pytest.fixture(scope="module")
def shuffle_export(tmp_path_factory, probe):
    net = _trained_like("seesaw_shuffle", seed=6)
    folder = tmp_path_factory.mktemp("ncnn")
    result = mobile_export.export_ncnn(net, str(folder / "ncnn"), probe, layout="dense")
    return net, folder / "ncnn", result


def test_export_reproduces_the_network_and_fuses_swish(shuffle_export, probe):
    net, folder, result = shuffle_export
    assert result["max_abs_diff"] <= 1e-3 and result["min_cosine"] >= 0.9999
    layers = result["layers"]
    # swish Mul(x, Sigmoid(x)) became one Swish layer each; the SE PReLU one PReLU layer; the SE gate's sigmoid is
    # fused into its convolution (no Sigmoid layer left)
    assert layers["Swish"] == 33 and layers["PReLU"] == 15 and "Sigmoid" not in layers
    embedder = ncnn_runtime.NcnnEmbedder(str(folder / "model.param"), threads=1)
    reference = net(mx.nd.array(probe)).asnumpy()
    for part in (probe[:1], probe):  # batch 1 and a batch
        stats = compare_embeddings(reference[:len(part)], embedder(part))
        assert stats["max_abs_diff"] <= 1e-3 and stats["min_cosine"] >= 0.9999


def test_mobilefacenet_gets_native_prelu_layers(probe, tmp_path):
    net = _trained_like("mobilefacenet", seed=2)  # slopes in (-0.2, 1.3)
    result = mobile_export.export_ncnn(net, str(tmp_path / "ncnn"), probe)
    assert result["layers"]["PReLU"] == 33 and result["max_abs_diff"] <= 1e-3
    assert result["layers"]["ConvolutionDepthWise"] == 17  # the network's own, no 1x1 PReLU convolutions


def test_fp16_export_halves_the_weights(shuffle_export, probe, tmp_path):
    net, _, fp32 = shuffle_export
    result = mobile_export.export_ncnn(net, str(tmp_path / "fp16"), probe, layout="dense", fp16=True)
    assert result["min_cosine"] >= mobile_export.FP16_MIN_COSINE
    assert result["bytes"] < 0.55 * fp32["bytes"]


def test_a_mismatch_is_refused_and_nothing_written(shuffle_export, probe, tmp_path):
    net = shuffle_export[0]
    with pytest.raises(export.ExportMismatch, match="max abs difference"):
        mobile_export.export_ncnn(net, str(tmp_path / "bad"), probe, layout="dense", tolerance=0.0)
    assert not os.path.exists(tmp_path / "bad")


def test_damaged_files_are_refused_with_their_name(shuffle_export, tmp_path):
    folder = shuffle_export[1]
    param, weights = (folder / "model.param").read_text(), (folder / "model.bin").read_bytes()
    (tmp_path / "cut.param").write_text(param[:len(param) // 2])
    with pytest.raises(ValueError, match="cut.param: not a readable ncnn .param file"):
        ncnn_runtime.NcnnEmbedder(str(tmp_path / "cut.param"), str(folder / "model.bin"))
    (tmp_path / "cut.bin").write_bytes(weights[:len(weights) // 2])
    with pytest.raises(ValueError, match="cut.bin: truncated ncnn weights file"):
        ncnn_runtime.NcnnEmbedder(str(folder / "model.param"), str(tmp_path / "cut.bin"))
    with pytest.raises(ValueError, match="missing.bin: ncnn model file not found"):
        ncnn_runtime.NcnnEmbedder(str(folder / "model.param"), str(tmp_path / "missing.bin"))


def test_layer_profile_covers_the_layers(shuffle_export, probe):
    embedder = ncnn_runtime.NcnnEmbedder(str(shuffle_export[1] / "model.param"), threads=1)
    profile = ncnn_runtime.profile_layers(embedder, probe[0], runs=1)
    assert profile["Swish"][0] == 33 and profile["Convolution"][1] > 0
    assert sum(count for count, _ in profile.values()) == len(embedder.layers) - 1  # every layer but the input
