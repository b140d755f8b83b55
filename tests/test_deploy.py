"""The folded inference graph (deploy.lower, deploy.graph) computes the source network's embedding exactly."""
import json

import mxnet as mx
import numpy as np
import pytest

import symbols
from deploy.lower import LAYOUTS, build_deploy_graph, fold_batchnorm, shuffle_permutation
from symbols.common import channel_shuffle


def _trained_like(name, seed=0, **kwargs):
    """A network whose embedding depends on its input, with non-trivial BatchNorm scales, shifts and
    statistics, PReLU slopes (some negative, some > 1) and biases, so that folding mistakes show.

    BatchNorm statistics are those of a batch of random images (one training-mode pass with momentum 0),
    so activations keep their scale through the depth as in a trained network.
    """
    mx.random.seed(seed)
    rng = np.random.RandomState(seed)
    net = symbols.get_model(name, **kwargs)
    symbols.init_model(net)
    x = mx.nd.array(rng.normal(127.5, 76.8, (6, 3, 112, 112)).clip(0, 255))  # RGB 0-255 images
    net(x[:1])
    for pname, p in net.collect_params().items():
        if pname.endswith(("beta", "bias")):
            p.set_data(mx.nd.array(rng.normal(0, 0.1, p.shape)))
        elif pname.endswith("gamma"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif pname.endswith("alpha"):
            p.set_data(mx.nd.array(rng.uniform(-0.2, 1.3, p.shape)))
    batchnorms = [b for b in _blocks(net) if isinstance(b, mx.gluon.nn.BatchNorm)]
    for bn in batchnorms:
        bn._kwargs["momentum"] = 0.0
    with mx.autograd.record(train_mode=True):
        out = net(x)
    out.backward()  # the oneDNN BatchNorm updates its running statistics in the backward pass
    for bn in batchnorms:
        bn._kwargs["momentum"] = 0.9
    return net


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


def _run_graph(graph, x):
    sym, args, _ = graph.to_symbol()
    exe = sym.bind(mx.cpu(), dict(args, data=x), grad_req="null")
    return exe.forward(is_train=False)[0].asnumpy()


@pytest.fixture(scope="module")
def probe():
    return mx.nd.array(np.random.RandomState(1).normal(127.5, 76.8, (2, 3, 112, 112)).clip(0, 255).astype(np.float32))


@pytest.mark.parametrize("name", ["mobilefacenet", "seesaw_shuffle", "seesaw_share", "dw_seesaw_v2"])
def test_folded_graph_reproduces_network(name, probe):
    net = _trained_like(name)
    graph = build_deploy_graph(net)
    reference = net(probe).asnumpy()
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    assert (unit[0] * unit[1]).sum() < 0.99, "the test network must not map every input to one embedding"
    assert np.abs(_run_graph(graph, probe) - reference).max() <= 1e-4
    assert "batchnorm" not in {n["op"] for n in graph.nodes}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_is_exact_and_has_no_transpose(layout, probe):
    net = _trained_like("seesaw_shuffle", seed=3)
    graph = build_deploy_graph(net, layout)
    assert np.abs(_run_graph(graph, probe) - net(probe).asnumpy()).max() <= 1e-4
    sym, _, _ = graph.to_symbol()
    ops = {node["op"] for node in json.loads(sym.tojson())["nodes"]}
    assert not ops & {"transpose", "SwapAxis", "swapaxes", "Reshape", "reshape", "BatchNorm"}, ops


def test_cells_layout_keeps_the_seesaw_multiply_adds():
    """The uneven split stays split: no zero blocks, so the folded graph does the paper's MAdds."""
    from tools.flops import count_model

    for name in ("seesaw_shuffle", "seesaw_share"):
        net = _trained_like(name)
        assert build_deploy_graph(net, "cells").madds() == count_model(name)["madds"]


@pytest.mark.parametrize("layout", ["cells", "expand", "dense"])
def test_every_add_takes_a_fresh_convolution_output(layout):
    """Sums of partial convolutions and residuals are chained so that each add has one convolution output
    used only by it (ONNX Runtime fuses such an add into the convolution); an add of two sums is not."""
    for name in ("seesaw_shuffle", "seesaw_share", "mobilefacenet", "dw_seesaw_v2"):
        graph = build_deploy_graph(_trained_like(name), layout)
        op = {n["name"]: n["op"] for n in graph.nodes}
        uses = {}
        for n in graph.nodes:
            for i in n["inputs"]:
                uses[i] = uses.get(i, 0) + 1
        adds = [n for n in graph.nodes if n["op"] == "add"]
        assert adds, name
        for n in adds:
            assert any(op[i] == "conv" and uses[i] == 1 for i in n["inputs"]), (name, layout, n)


def test_graph_without_se_blocks_for_measuring_their_cost(probe):
    net = _trained_like("seesaw_shuffle", seed=2)
    full, bare = build_deploy_graph(net, "dense"), build_deploy_graph(net, "dense", se=False)
    ops = lambda g: [n["op"] for n in g.nodes]  # noqa: E731
    assert ops(full).count("gap") == 15 and "gap" not in ops(bare)
    assert ops(full).count("conv") - ops(bare).count("conv") == 15 * 2  # the two fully connected layers
    assert ops(full).count("prelu") == 15 and "prelu" not in ops(bare)
    # not the network: its embedding differs
    assert np.abs(_run_graph(bare, probe) - _run_graph(full, probe)).max() > 1e-2


@pytest.mark.parametrize("act", ["swish", "prelu"])
def test_mobilefacenet_swish_and_prelu_fold(probe, act):
    net = _trained_like("mobilefacenet", seed=5, act=act)  # PReLU slopes in (-0.2, 1.3)
    graph = build_deploy_graph(net)
    assert np.abs(_run_graph(graph, probe) - net(probe).asnumpy()).max() <= 1e-4
    # PReLU as x + (1 - a)·relu(-x) with 1×1 depthwise convolutions (oneDNN-fused), not MXNet's slow LeakyReLU
    ops = {node["op"] for node in json.loads(graph.to_symbol()[0].tojson())["nodes"]}
    assert "LeakyReLU" not in ops


def test_shuffle_permutation_matches_channel_shuffle():
    x = mx.nd.arange(2 * 12 * 1 * 1).reshape((2, 12, 1, 1))
    shuffled = channel_shuffle(mx.nd, x, 2).asnumpy()
    perm = shuffle_permutation(12, 2)
    np.testing.assert_array_equal(shuffled, x.asnumpy()[:, perm])


def test_fold_batchnorm_matches_conv_then_batchnorm():
    rng = np.random.RandomState(0)
    w = rng.normal(size=(4, 3, 3, 3))
    gamma, beta, mean, var = rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)
    x = mx.nd.array(rng.normal(size=(1, 3, 5, 5)))
    conv = mx.nd.Convolution(x, mx.nd.array(w), kernel=(3, 3), num_filter=4, no_bias=True)
    bn = mx.nd.BatchNorm(conv, *[mx.nd.array(v) for v in (gamma, beta, mean, var)], eps=1e-5, fix_gamma=False,
                         use_global_stats=True)
    wf, bf = fold_batchnorm(w, (gamma, beta, mean, var), 1e-5)
    folded = mx.nd.Convolution(x, mx.nd.array(wf), mx.nd.array(bf), kernel=(3, 3), num_filter=4)
    np.testing.assert_allclose(folded.asnumpy(), bn.asnumpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["seesaw_share", "mobilefacenet"])
def test_onnx_graph_matches_and_batch_is_dynamic(name, probe):
    import onnxruntime as ort

    net = _trained_like(name, seed=5)  # PReLU slopes in (-0.2, 1.3): the ONNX form must hold for all of them
    model = build_deploy_graph(net).to_onnx()
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = probe.asnumpy()
    out = np.concatenate([session.run(None, {"data": x[:1]})[0], session.run(None, {"data": x[1:]})[0]])
    assert np.abs(out - net(probe).asnumpy()).max() <= 1e-4
    assert not {n.op_type for n in model.graph.node} & {"Transpose", "Reshape", "BatchNormalization"}


def test_rejects_non_facenet():
    with pytest.raises(ValueError, match="get_model"):
        build_deploy_graph(mx.gluon.nn.Dense(3))
