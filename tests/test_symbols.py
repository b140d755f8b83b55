"""Every registered network: shapes, hybridization, oneDNN fusion, gradients, export round trip, counts."""
import os

import mxnet as mx
import numpy as np
import pytest

import symbols
from symbols.common import channel_shuffle
from symbols.mobilefacenet import Bottleneck
from symbols.seesaw import SeesawBlock
from tools import flops

NAMES = symbols.list_models()


def _randomise_bn(net, seed):
    """Non-trivial BatchNorm statistics and affine terms, so inference-mode comparisons mean something."""
    rng = np.random.RandomState(seed)
    for name, param in net.collect_params().items():
        shape = param.shape
        if name.endswith("running_mean") or name.endswith("beta"):
            param.set_data(mx.nd.array(rng.uniform(-0.1, 0.1, shape)))
        elif name.endswith("running_var") or name.endswith("gamma"):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, shape)))


def _build(name, emb_size=512, **kwargs):
    net = symbols.get_model(name, emb_size=emb_size, **kwargs)
    symbols.init_model(net)
    _randomise_bn(net, 0)
    return net


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    name = request.param
    x = mx.nd.array(np.random.RandomState(1).uniform(0, 255, (2, 3, 112, 112)).astype("float32"))
    net = _build(name)
    reference = net(x).asnumpy()
    return name, net, x, reference


def test_registry_lists_every_network_and_rejects_unknown_names():
    assert NAMES == ["mobilefacenet", "seesaw_shuffle", "seesaw_share", "seesaw_shuffle_mobi", "dw_seesaw_v1",
                     "dw_seesaw_v2"]
    with pytest.raises(ValueError) as err:
        symbols.get_model("seesaw_shufle")
    for name in NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="activation"):
        symbols.get_model("mobilefacenet", act="gelu")


def test_forward_shape_no_nan(built):
    name, net, x, reference = built
    assert reference.shape == (2, 512)
    assert np.isfinite(reference).all()
    assert reference.std() > 0


def test_hybridized_and_onednn_fused_equal_imperative(built):
    name, net, x, reference = built
    net.hybridize()
    hybrid = net(x).asnumpy()
    net.hybridize(static_alloc=True, static_shape=True, backend="MKLDNN")
    fused = net(x).asnumpy()
    net.hybridize(active=False)
    np.testing.assert_allclose(hybrid, reference, atol=1e-4, rtol=0)
    np.testing.assert_allclose(fused, reference, atol=1e-4, rtol=0)


def test_every_parameter_receives_a_gradient(built):
    name, net, x, _ = built
    params = {k: p for k, p in net.collect_params().items() if p.grad_req != "null"}
    for p in params.values():
        p.zero_grad()
    with mx.autograd.record():
        loss = (net(x) ** 2).sum()
    loss.backward()
    dead = [k for k, p in params.items() if float(p.grad().abs().sum().asscalar()) == 0.0]
    assert not dead, f"{name}: parameters with no gradient: {dead[:5]}"
    aux = [k for k, p in net.collect_params().items() if p.grad_req == "null"]
    assert all("running" in k for k in aux)


def test_export_reimports_with_symbolblock_and_load_checkpoint(built, tmp_path):
    name, net, x, _ = built
    reference = net(x).asnumpy()  # the gradient test ran in training mode and moved the BatchNorm statistics
    net.hybridize()
    net(x)
    prefix = str(tmp_path / name)
    net.export(prefix, 3)
    net.hybridize(active=False)
    block = mx.gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data"], f"{prefix}-0003.params")
    np.testing.assert_allclose(block(x).asnumpy(), reference, atol=1e-5, rtol=0)
    sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, 3)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", x.shape)], for_training=False)
    mod.set_params(arg_params, aux_params)
    mod.forward(mx.io.DataBatch([x]), is_train=False)
    np.testing.assert_allclose(mod.get_outputs()[0].asnumpy(), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_batch_sizes(batch):
    net = _build("seesaw_share", emb_size=128)
    net.hybridize()
    out = net(mx.nd.ones((batch, 3, 112, 112)))
    assert out.shape == (batch, 128)


def test_emb_size_configurable_and_mobilefacenet_activations():
    assert _build("seesaw_shuffle", emb_size=256)(mx.nd.ones((1, 3, 112, 112))).shape == (1, 256)
    prelu = symbols.get_model("mobilefacenet")
    swish = symbols.get_model("mobilefacenet", act="swish")
    n_prelu = [k for k in prelu.collect_params() if k.endswith("alpha")]
    n_swish = [k for k in swish.collect_params() if k.endswith("alpha")]
    assert n_prelu and not n_swish


def test_channel_shuffle_order():
    c = 8
    x = mx.nd.arange(c).reshape((1, c, 1, 1))
    out = channel_shuffle(mx.nd, x, 2).asnumpy().ravel()
    # two groups [0..3], [4..7] interleaved
    assert out.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    y = mx.nd.array(np.random.rand(2, 12, 3, 3))
    shuffled = channel_shuffle(mx.nd, y, 2).asnumpy()
    for i in range(6):
        for j in range(2):
            np.testing.assert_array_equal(shuffled[:, i * 2 + j], y.asnumpy()[:, j * 6 + i])


@pytest.mark.parametrize("block_cls,extra", [(SeesawBlock, {"variant": "shuffle"}), (SeesawBlock, {"variant": "share"}),
                                             (Bottleneck, {})])
def test_residual_only_when_shapes_match(block_cls, extra):
    cases = [((16, 16, 1), True), ((16, 16, 2), False), ((16, 32, 1), False)]
    for (in_c, out_c, stride), expect in cases:
        block = block_cls(in_c, out_c, 32, stride, **extra)
        assert block.residual is expect
        block.initialize()
        x = mx.nd.random.normal(shape=(1, in_c, 8, 8))
        y = block(x)
        assert y.shape == (1, out_c, 8 // stride, 8 // stride)
        if expect:
            # zero the projection BatchNorm scale and shift: the block must then return its input
            for name, p in block.collect_params().items():
                if "project" in name and (name.endswith("gamma") or name.endswith("beta")):
                    p.set_data(mx.nd.zeros(p.shape))
            np.testing.assert_allclose(block(x).asnumpy(), x.asnumpy(), atol=1e-6)


def test_every_network_stride2_blocks_are_not_residual():
    for name in NAMES:
        net = symbols.get_model(name)
        for stage in net.stages:
            blocks = list(stage)
            assert not blocks[0].residual
            assert all(b.residual for b in blocks[1:])


PAPER_COUNTS = [(n, p, m) for n, (p, m) in flops.PAPER.items() if p is not None]


@pytest.mark.parametrize("name,paper_params,paper_madds", PAPER_COUNTS)
def test_counts_match_the_paper(name, paper_params, paper_madds):
    counts = flops.count_model(name, act="swish") if name == "mobilefacenet" else flops.count_model(name)
    assert abs(counts["madds"] / 1e6 - paper_madds) / paper_madds < 0.01
    assert abs(counts["params"] / 1e6 - paper_params) / paper_params < 0.02


def test_seesaw_mobi_follows_its_layer_table():
    counts = flops.count_model("seesaw_shuffle_mobi")
    net = symbols.get_model("seesaw_shuffle_mobi")
    assert [len(stage) - 1 for stage in net.stages] == [2, 3, 6]
    assert 100e6 < counts["madds"] < 120e6  # the layer table gives ~111M, not the printed 154M


def test_flops_counts_an_exported_graph_like_the_live_network(tmp_path):
    net = _build("seesaw_share")
    net.hybridize()
    net(mx.nd.ones((1, 3, 112, 112)))
    net.export(str(tmp_path / "m"), 0)
    from_file = flops.count_file(str(tmp_path / "m-symbol.json"))
    live = flops.count_model("seesaw_share")
    assert from_file["madds"] == live["madds"] and from_file["params"] == live["params"]
    with pytest.raises(FileNotFoundError):
        flops.count_file(str(tmp_path / "missing-symbol.json"))
    assert os.path.exists(tmp_path / "m-0000.params")
