"""Fused training operators (recipes/fused): same values and gradients as the standard MXNet operators they
replace, per operator and through whole networks; exported graphs stay standard."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import symbols
from recipes import fused
from recipes.fused.layers import FusedBatchNormSwish
from recipes.setup import use_fused_ops

pytestmark = pytest.mark.skipif(not fused.available(), reason=f"fused operators unavailable: "
                                                                  f"{fused.unavailable_reason()}")


def _grads(fn, inputs, head_grad):
    """Output and input gradients of ``fn(*inputs)`` for the given output gradient."""
    arrays = [mx.nd.array(a) for a in inputs]
    for a in arrays:
        a.attach_grad()
    with autograd.record():
        out = fn(*arrays)
    out.backward(mx.nd.array(head_grad))
    return [out.asnumpy()] + [a.grad.asnumpy() for a in arrays]


def _check(fused_fn, standard_fn, inputs, out_shape, rtol=1e-5, atol=1e-5):
    rng = np.random.RandomState(3)
    head = rng.normal(size=out_shape).astype(np.float32)
    got = _grads(fused_fn, inputs, head)
    want = _grads(standard_fn, inputs, head)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def test_swish_matches_sigmoid_times_x():
    x = np.random.RandomState(0).normal(scale=4, size=(3, 5, 7, 6)).astype(np.float32)
    _check(lambda a: mx.nd.seesaw_swish(a), lambda a: a * mx.nd.Activation(a, act_type="sigmoid"), [x], x.shape)


def test_swish_stays_finite_far_below_zero():
    """Built with -ffast-math, exp(-x) overflowing below x = -88.7 gave NaN (a BatchNorm gamma grown large by ArcFace
    at s=64 reached it in training); the sigmoid's argument is clamped instead."""
    x = np.linspace(-300, 20, 4 * 16 * 64, dtype=np.float32).reshape(4, 16, 8, 8)
    out, dx = _grads(lambda a: mx.nd.seesaw_swish(a), [x], np.ones_like(x))
    assert np.isfinite(out).all() and np.isfinite(dx).all()
    far = x < -80
    assert np.abs(out[far]).max() < 1e-30 and np.abs(dx[far]).max() < 1e-30
    gamma, beta = mx.nd.full((16,), 500.0), mx.nd.zeros((16,))
    y = mx.nd.seesaw_bn_swish(mx.nd.array(x), gamma, beta, mx.nd.zeros((16,)), mx.nd.ones((16,)), mx.nd.ones((1,)),
                              eps=1e-5, momentum=0.9)[0].asnumpy()
    assert np.isfinite(y).all()


@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (4, 6, 1, 1), (3, 5)])
def test_prelu_matches_leakyrelu_including_slope_gradient(shape):
    rng = np.random.RandomState(1)
    x = rng.normal(size=shape).astype(np.float32)
    alpha = rng.uniform(0.05, 0.5, size=(shape[1],)).astype(np.float32)
    _check(lambda a, g: mx.nd.seesaw_prelu(a, g), lambda a, g: mx.nd.LeakyReLU(a, gamma=g, act_type="prelu"),
           [x, alpha], shape, rtol=1e-4)


def test_scale_matches_broadcast_mul_including_gate_gradient():
    rng = np.random.RandomState(2)
    x = rng.normal(size=(4, 6, 9, 8)).astype(np.float32)
    w = rng.uniform(size=(4, 6, 1, 1)).astype(np.float32)
    _check(lambda a, g: mx.nd.seesaw_scale(a, g), lambda a, g: mx.nd.broadcast_mul(a, g), [x, w], x.shape,
           rtol=1e-4)


def test_spatial_mean_matches_adaptive_average_pooling():
    x = np.random.RandomState(12).normal(size=(3, 5, 7, 6)).astype(np.float32)
    _check(lambda a: mx.nd.seesaw_spatial_mean(a), lambda a: mx.nd.contrib.AdaptiveAvgPooling2D(a, output_size=1),
           [x], (3, 5, 1, 1))


def test_concat_shuffle_matches_concat_and_channel_shuffle():
    rng = np.random.RandomState(4)
    a = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    b = rng.normal(size=(3, 12, 5, 6)).astype(np.float32)

    def standard(u, v):
        return symbols.common.channel_shuffle(mx.nd, mx.nd.concat(u, v, dim=1), 2)

    _check(lambda u, v: mx.nd.seesaw_concat_shuffle(u, v, groups=2), standard, [a, b], (3, 16, 5, 6),
           rtol=0, atol=0)


@pytest.mark.parametrize("point", [1, 4, 15])
def test_split_matches_two_slices(point):
    x = np.random.RandomState(5).normal(size=(3, 16, 4, 5)).astype(np.float32)
    rng = np.random.RandomState(6)
    heads = [rng.normal(size=(3, point, 4, 5)), rng.normal(size=(3, 16 - point, 4, 5))]
    grads = []
    for split in (lambda a: mx.nd.seesaw_split(a, point=point),
                  lambda a: (mx.nd.slice_axis(a, axis=1, begin=0, end=point),
                             mx.nd.slice_axis(a, axis=1, begin=point, end=None))):
        arr = mx.nd.array(x)
        arr.attach_grad()
        with autograd.record():
            low, high = split(arr)
        autograd.backward([low, high], [mx.nd.array(h) for h in heads])
        grads.append((low.asnumpy(), high.asnumpy(), arr.grad.asnumpy()))
    for got, want in zip(*grads):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("point", [1, 9])
def test_scale_split_matches_broadcast_mul_then_two_slices(point):
    rng = np.random.RandomState(13)
    x = rng.normal(size=(3, 12, 5, 4)).astype(np.float32)
    w = rng.uniform(size=(3, 12, 1, 1)).astype(np.float32)
    heads = [mx.nd.array(rng.normal(size=(3, point, 5, 4))), mx.nd.array(rng.normal(size=(3, 12 - point, 5, 4)))]
    results = []
    for fn in (lambda a, g: mx.nd.seesaw_scale_split(a, g, point=point),
               lambda a, g: (mx.nd.slice_axis(mx.nd.broadcast_mul(a, g), axis=1, begin=0, end=point),
                             mx.nd.slice_axis(mx.nd.broadcast_mul(a, g), axis=1, begin=point, end=None))):
        arrays = [mx.nd.array(x), mx.nd.array(w)]
        for a in arrays:
            a.attach_grad()
        with autograd.record():
            low, high = fn(*arrays)
        autograd.backward([low, high], heads)
        results.append([low.asnumpy(), high.asnumpy()] + [a.grad.asnumpy() for a in arrays])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups,train_mode", [(2, True), (1, True), (2, False)])
def test_bn_swish_concat_matches_two_bn_swish_then_concat_shuffle(groups, train_mode):
    """One op for both expansions of a Seesaw block: values, every gradient and the running statistics."""
    rng = np.random.RandomState(14)
    sides = [(3, 4), (3, 12)]
    x = [rng.normal(1.0, 2.0, size=(n, c, 5, 4)).astype(np.float32) for n, c in sides]
    params = [[rng.uniform(0.5, 1.5, c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 2, c)]
              for _, c in sides]
    head = mx.nd.array(rng.normal(size=(3, 16, 5, 4)))
    results = []
    for fused_op in (True, False):
        xs = [mx.nd.array(v) for v in x]
        ps = [[mx.nd.array(v) for v in side] for side in params]
        for arr in xs + [p for side in ps for p in side[:2]]:
            arr.attach_grad()
        flag = mx.nd.array([2.0 if train_mode else 1.0])
        with autograd.record(train_mode=train_mode):
            if fused_op:
                out = mx.nd.seesaw_bn_swish_concat(*xs, *ps[0], *ps[1], flag, groups=groups, eps=1e-5,
                                                   momentum=0.9)[0]
            else:
                a, b = (mx.nd.seesaw_bn_swish(v, *p, flag, eps=1e-5, momentum=0.9)[0] for v, p in zip(xs, ps))
                out = mx.nd.seesaw_concat_shuffle(a, b, groups=groups) if groups == 2 else mx.nd.concat(a, b, dim=1)
        out.backward(head)
        results.append([out.asnumpy()] + [v.grad.asnumpy() for v in xs]
                       + [p.grad.asnumpy() for side in ps for p in side[:2]]
                       + [p.asnumpy() for side in ps for p in side[2:]])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if train_mode:  # the running statistics moved
        assert not np.allclose(results[0][-1], params[1][3])


def _bn_swish_step(on, train_mode, hybridize, x, head):
    """Output, gradients of x, gamma, beta and the running statistics after one recorded step of
    ``FusedBatchNormSwish`` (one seesaw_bn_swish) or ``nn.BatchNorm`` + x*sigmoid(x)."""
    channels = x.shape[1]
    if on:
        block = FusedBatchNormSwish(momentum=0.9, epsilon=1e-5, in_channels=channels, prefix="bn_")
    else:
        block = mx.gluon.nn.HybridSequential(prefix="")
        block.add(mx.gluon.nn.BatchNorm(momentum=0.9, epsilon=1e-5, in_channels=channels, prefix="bn_"),
                  symbols.common.Swish(prefix="act_"))
    block.initialize()
    rng = np.random.RandomState(9)
    params = {k: p for k, p in block.collect_params().items()}
    for name, value in (("gamma", rng.uniform(0.5, 1.5, channels)), ("beta", rng.normal(size=channels)),
                        ("running_mean", rng.normal(size=channels)), ("running_var", rng.uniform(0.5, 2, channels))):
        params[f"bn_{name}"].set_data(mx.nd.array(value))
    if hybridize:
        block.hybridize()
    data = mx.nd.array(x)
    data.attach_grad()
    with autograd.record(train_mode=train_mode):
        out = block(data)
    out.backward(mx.nd.array(head))
    return {"out": out.asnumpy(), "dx": data.grad.asnumpy(), "dgamma": params["bn_gamma"].grad().asnumpy(),
            "dbeta": params["bn_beta"].grad().asnumpy(), "running_mean": params["bn_running_mean"].data().asnumpy(),
            "running_var": params["bn_running_var"].data().asnumpy(),
            "predict": block(data).asnumpy()}  # plain inference call after the step


@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "inference"])
@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_bn_swish_matches_batchnorm_then_swish(train_mode, hybridize):
    rng = np.random.RandomState(10)
    # channel means far from zero and unequal scales: the variance must not lose precision
    x = (rng.normal(size=(5, 6, 7, 9)) * rng.uniform(0.1, 3, (1, 6, 1, 1)) + rng.normal(0, 20, (1, 6, 1, 1)))
    x = x.astype(np.float32)
    head = rng.normal(size=x.shape).astype(np.float32)
    got = _bn_swish_step(True, train_mode, hybridize, x, head)
    want = _bn_swish_step(False, train_mode, hybridize, x, head)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4 * np.abs(want[key]).max(), err_msg=key)
    if not train_mode:  # inference: running statistics used, not updated
        np.testing.assert_array_equal(got["running_mean"], _bn_swish_step(True, False, False, x, head)["running_mean"])


def test_bn_swish_follows_the_mode_of_a_hybridized_network():
    """One cached graph serves training and inference calls: the operator must read the mode when it runs."""
    net = symbols.common.ConvBNAct(3, 8, 3, 1, 1, act="swish", prefix="block_")
    net.initialize()
    fused.enable(net)
    net.hybridize()
    x = mx.nd.array(np.random.RandomState(11).normal(3, 2, (4, 3, 9, 9)))
    before = net.bn.running_mean.data().asnumpy().copy()
    net(x)  # inference first: the graph is traced in predict mode and must not touch the statistics
    np.testing.assert_array_equal(net.bn.running_mean.data().asnumpy(), before)
    with autograd.record():
        net(x)
    moved = net.bn.running_mean.data().asnumpy()
    assert np.abs(moved - before).max() > 1e-3
    reference = symbols.common.ConvBNAct(3, 8, 3, 1, 1, act="swish", prefix="block_")  # standard operators
    reference.initialize()
    for name, param in net.collect_params().items():
        reference.collect_params()[name].set_data(param.data())
    np.testing.assert_allclose(net(x).asnumpy(), reference(x).asnumpy(), rtol=1e-5, atol=1e-5)


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(mx.base.MXNetError, match="alpha"):
        mx.nd.seesaw_prelu(mx.nd.ones((2, 3, 4, 4)), mx.nd.ones((4,))).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="point"):
        mx.nd.seesaw_split(mx.nd.ones((2, 3, 4, 4)), point=3)[0].wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="w must be"):
        mx.nd.seesaw_scale_split(mx.nd.ones((2, 3, 4, 4)), mx.nd.ones((2, 3, 2, 1)), point=1)[0].wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="each side's gamma"):
        ones = [mx.nd.ones((3,))] * 4
        mx.nd.seesaw_bn_swish_concat(mx.nd.ones((2, 3, 4, 4)), mx.nd.ones((2, 5, 4, 4)), *ones, *ones,
                                     mx.nd.ones((1,)), groups=2)[0].wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="running_var must be"):
        ones = mx.nd.ones((3,))
        mx.nd.seesaw_bn_swish(mx.nd.ones((2, 3, 4, 4)), ones, ones, ones, mx.nd.ones((4,)), mx.nd.ones((1,)))[0]\
            .wait_to_read()


def _net_step(name, on, mode, batch=4):
    mx.random.seed(7)
    net = symbols.get_model(name, emb_size=32)
    symbols.init_model(net, [mx.cpu()])
    if on:
        assert fused.enable(net) > 0
    if mode == "static":
        net.hybridize(static_alloc=True, static_shape=True)
    elif mode == "plain":
        net.hybridize()
    x = mx.nd.array(np.random.RandomState(8).uniform(0, 255, (batch, 3, 112, 112)))
    with autograd.record():
        out = net(x)
        loss = (out * mx.nd.arange(32).reshape((1, 32))).sum()
    loss.backward()
    params = net.collect_params()
    grads = {k[len(net.prefix):]: p.grad().asnumpy() for k, p in params.items() if p.grad_req != "null"}
    stats = {k[len(net.prefix):]: p.data().asnumpy() for k, p in params.items() if "running" in k}
    return out.asnumpy(), grads, stats


@pytest.mark.parametrize("name,mode", [("seesaw_shuffle", "static"), ("seesaw_share", "plain"),
                                       ("mobilefacenet", "none"), ("dw_seesaw_v2", "none")])
def test_fused_network_trains_like_the_standard_one(name, mode):
    out_std, grads_std, stats_std = _net_step(name, False, mode)
    out_fused, grads_fused, stats_fused = _net_step(name, True, mode)
    # training-mode BatchNorm over a batch of 4 amplifies float32 rounding: compare on the outputs' scale
    np.testing.assert_allclose(out_fused, out_std, rtol=0, atol=5e-4 * np.abs(out_std).max())
    assert set(grads_fused) == set(grads_std)
    # gradients through a stack of training-mode BatchNorms amplify float32 rounding: compare on the scale
    # of the largest gradient of the network
    scale = max(np.abs(g).max() for g in grads_std.values())
    for key in grads_std:
        np.testing.assert_allclose(grads_fused[key], grads_std[key], rtol=0, atol=1e-4 * scale, err_msg=key)
    for key in stats_std:
        np.testing.assert_allclose(stats_fused[key], stats_std[key], rtol=1e-4, atol=1e-5, err_msg=key)


def _library_ops(net):
    return [node["op"] for node in json.loads(net(mx.sym.var("data")).tojson())["nodes"]
            if node["op"].startswith("seesaw_")]


def test_standard_layers_context_traces_without_library_operators():
    net = symbols.get_model("seesaw_shuffle", emb_size=32)
    assert _library_ops(net) == []
    fused.enable(net)
    assert _library_ops(net)
    with fused.standard_layers(net):
        assert _library_ops(net) == []
        assert all(type(b).__module__.startswith("symbols") or type(b).__module__.startswith("mxnet")
                   for b in fused._walk(net))
    assert _library_ops(net)  # fused again after the context


@pytest.mark.parametrize("name,splits,concats", [("seesaw_shuffle", 1, 1), ("seesaw_share", 15, 15)])
def test_seesaw_graph_is_fused_along_its_data_flow(name, splits, concats):
    """Library operators keep their inputs and outputs for the backward, so nothing may sit between them that
    only copies: per block one seesaw_bn_swish_concat and one seesaw_scale_split; a shuffle network splits
    only the stem's output and concatenates once, for the head (its blocks pass channel pieces on); a share
    network splits every block's input and concatenates every block's projections."""
    net = symbols.get_model(name, emb_size=32)
    fused.enable(net)
    ops = [node["op"] for node in json.loads(net(mx.sym.var("data")).tojson())["nodes"]]
    assert ops.count("seesaw_bn_swish_concat") == 15 and ops.count("seesaw_scale_split") == 15
    assert ops.count("seesaw_split") == splits and ops.count("Concat") == concats
    assert "seesaw_concat_shuffle" not in ops and "seesaw_scale" not in ops


def test_build_reports_compiler_errors(tmp_path):
    with pytest.raises(RuntimeError, match="cannot run .*no-such-compiler"):
        fused.build(str(tmp_path / "lib.so"), compiler=str(tmp_path / "no-such-compiler"))
    broken = tmp_path / "cxx"
    broken.write_text("#!/bin/sh\necho 'fatal: broken compiler' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="broken compiler"):
        fused.build(str(tmp_path / "lib.so"), compiler=str(broken))
    assert not (tmp_path / "lib.so").exists()


def test_training_switch_auto_on_off():
    def marked(net):
        return sum(type(b).__module__ == "recipes.fused.layers" for b in net.stem.conv._children.values())

    net = symbols.get_model("mobilefacenet", emb_size=32)
    assert use_fused_ops(net, {"fused_ops": "off"}, [mx.cpu()]) is False and marked(net) == 0
    assert use_fused_ops(net, {"fused_ops": "auto"}, [mx.gpu(0)]) is False and marked(net) == 0
    with pytest.raises(ValueError, match="CPU only"):
        use_fused_ops(net, {"fused_ops": "on"}, [mx.gpu(0)])
    with pytest.raises(ValueError, match="auto, on or off"):
        use_fused_ops(net, {"fused_ops": "yes"}, [mx.cpu()])
    assert use_fused_ops(net, {"fused_ops": "auto"}, [mx.cpu()]) is True and marked(net) == 1


def test_disabled_library_leaves_standard_operators():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import mxnet as mx, symbols\n"
            "from recipes import fused\n"
            "from recipes.setup import use_fused_ops\n"
            "net = symbols.get_model('seesaw_shuffle', emb_size=32)\n"
            "print(fused.available(), use_fused_ops(net, {'fused_ops': 'auto'}, [mx.cpu()]))\n"
            "print(fused.unavailable_reason())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                          env=dict(os.environ, SEESAWFACE_FUSED="0", PYTHONPATH=root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["False False", "disabled by SEESAWFACE_FUSED=0"]
