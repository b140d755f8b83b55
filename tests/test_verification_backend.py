"""The training callback's verification backends: ONNX Runtime on the folded deploy graph vs MXNet."""
import logging
import types

import cv2
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import datasets
import symbols
from deploy import onnx_runtime
from deploy.embedders import compare_embeddings, resolve_backend
from deploy.onnx_runtime import OnnxEmbedder
from eval import sets as eval_sets
from eval.embeddings import extract_embeddings
from recipes import config
from recipes.loop import evaluate
from recipes.setup import build_backbone
from recipes.verifier import Verifier


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _logger(name):
    logger = logging.getLogger(f"test_verification_backend.{name}")
    logger.propagate = False
    logger.handlers[:] = []
    handler = ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, handler


def _cfg(network, backend, **extra):
    cli = {"network": network, "emb_size": 128, "eval_batch_size": 16, "eval_backend": backend}
    if network == "mobilefacenet":
        cli["act"] = "prelu"
    cli.update(extra)
    return config.resolve(cli)


def _trained_like(cfg, ctx=(mx.cpu(),), seed=0):
    """The configured network with BatchNorm parameters and statistics nothing like the initial ones.

    One inference pass over face-sized smooth images sets, layer by layer, each BatchNorm's running mean and
    variance from the statistics of its actual input, randomly off by up to ±0.3 std and ×0.5–2 (so every
    term of the folding matters and the activations stay of order 1), its scale and shift at random, and the
    PReLU slopes between 0 and 1.2 (some above 1). Returned hybridized, as trained.
    """
    net = build_backbone(cfg)
    symbols.init_model(net, list(ctx))
    rng = np.random.RandomState(seed)
    for name, param in net.collect_params().items():
        if name.endswith("alpha"):
            param.set_data(mx.nd.array(rng.uniform(0.0, 1.2, param.shape)))

    def calibrate(block, inputs):
        x = inputs[0].asnumpy().astype(np.float64)
        channels = x.shape[1]
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        gamma = (0.05, 0.15) if block is net.head.bn else (0.5, 1.5)  # embedding values of order 1
        values = {"running_mean": mean + 0.3 * np.sqrt(var) * rng.normal(size=channels),
                  "running_var": var * rng.uniform(0.5, 2.0, channels),
                  "gamma": rng.uniform(*gamma, channels), "beta": rng.uniform(-0.2, 0.2, channels)}
        for name, value in values.items():
            getattr(block, name).set_data(mx.nd.array(value))

    hooks = [b.register_forward_pre_hook(calibrate) for b in _blocks(net) if isinstance(b, nn.BatchNorm)]
    with mx.autograd.predict_mode():
        net(mx.nd.array(datasets.to_input(_smooth_images(rng, 16)), ctx=ctx[0]))
    for hook in hooks:
        hook.detach()
    net.hybridize()
    return net


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


def _smooth_images(rng, count):
    """Random low-frequency colour images (8x8 upsampled), uint8 (count, 112, 112, 3)."""
    coarse = rng.uniform(0, 255, (count, 8, 8, 3)).astype(np.float32)
    images = np.stack([cv2.resize(c, (112, 112), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return images.clip(0, 255).astype(np.uint8)


def _bn_statistics_are_not_defaults(net):
    stats = [(name, param.data(param.list_ctx()[0]).asnumpy()) for name, param in net.collect_params().items()
             if name.endswith(("running_mean", "running_var"))]
    return stats and all(np.abs(value - (0.0 if name.endswith("mean") else 1.0)).max() > 0.01
                         for name, value in stats)


def _pair_set(pairs=20, seed=1):
    """``pairs`` interleaved pairs (10 folds need both kinds in each): a positive pair is an image and a blend
    of it with another image (weight 0.1 to 0.7), a negative pair two unrelated images, so the accuracy of a
    random network is neither 50% nor 100%."""
    rng = np.random.RandomState(seed)
    images = _smooth_images(rng, 2 * pairs).astype(np.float32)
    others = _smooth_images(rng, pairs).astype(np.float32)
    issame = np.arange(pairs) % 2 == 0
    for i in np.flatnonzero(issame):
        weight = 0.1 + 0.6 * i / pairs
        images[2 * i + 1] = (1 - weight) * images[2 * i] + weight * others[i]
    return images.clip(0, 255).astype(np.uint8), issame


@pytest.fixture(scope="module")
def pair_sets():
    return {"tiny": _pair_set()}


@pytest.mark.parametrize("network", ["seesaw_shuffle", "mobilefacenet"])
def test_onnxruntime_backend_matches_mxnet(monkeypatch, pair_sets, network):
    """Same flip-summed embeddings (1e-4 max abs) and the same protocol results from both backends, on a
    network with non-default BatchNorm statistics (so the BatchNorm folding is exercised). 40 images in
    batches of 16: ONNX Runtime gets an unpadded last batch of 8, the static-shape MXNet graph a padded one."""
    cfg = _cfg(network, "auto")
    net = _trained_like(cfg)
    assert _bn_statistics_are_not_defaults(net)
    captured = {}
    original = eval_sets.embed_views

    def recording(model, *args, **kwargs):
        views = original(model, *args, **kwargs)
        captured[type(model).__name__] = views[0] + views[1]
        return views

    monkeypatch.setattr(eval_sets, "embed_views", recording)
    results = {}
    for backend in ("onnxruntime", "mxnet"):
        logger, handler = _logger(backend)
        verifier = Verifier(dict(cfg, eval_backend=backend), pair_sets, mx.cpu(), logger=logger)
        results[backend] = verifier(net)["tiny"]
        assert verifier.last["backend"] == backend and handler.lines == []
    assert set(captured) == {"OnnxEmbedder", type(net).__name__}
    ort, ref = captured["OnnxEmbedder"], captured[type(net).__name__]
    assert ort.shape == ref.shape == (40, 128)
    assert np.abs(ort - ref).max() <= 1e-4
    a, b = results["onnxruntime"], results["mxnet"]
    assert a["accuracy"] == b["accuracy"] and 0.6 < a["accuracy"] < 1.0
    np.testing.assert_array_equal(a["fold_accuracies"], b["fold_accuracies"])
    np.testing.assert_array_equal(a["thresholds"], b["thresholds"])
    assert a["xnorm"] == pytest.approx(b["xnorm"], rel=1e-5)


def test_backend_setting_resolves_and_rejects_bad_values(monkeypatch):
    assert config.resolve({})["eval_backend"] == "auto"
    assert config.resolve({"eval_backend": "mxnet"})["eval_backend"] == "mxnet"
    with pytest.raises(ValueError, match="eval_backend must be one of auto, onnxruntime, mxnet"):
        config.resolve({"eval_backend": "tensorrt"})
    parser = config.build_parser(symbols.list_models())
    assert vars(parser.parse_args(["--eval-backend", "onnxruntime"]))["eval_backend"] == "onnxruntime"
    with pytest.raises(SystemExit):
        parser.parse_args(["--eval-backend", "tensorrt"])
    assert "--eval-backend" in parser.format_help()

    assert resolve_backend("auto", [mx.cpu()]) == "onnxruntime"
    assert resolve_backend("auto", [mx.gpu(0)]) == "mxnet"  # a Context object needs no GPU
    assert resolve_backend("mxnet", [mx.cpu()]) == "mxnet"
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend("ort", [mx.cpu()])
    monkeypatch.setattr(onnx_runtime, "onnxruntime_available", lambda: False)
    assert resolve_backend("auto", [mx.cpu()]) == "mxnet"
    with pytest.raises(ValueError, match="onnxruntime is not installed"):
        resolve_backend("onnxruntime", [mx.cpu()])


def test_lowering_failure_falls_back_to_mxnet_with_one_warning(monkeypatch, pair_sets):
    cfg = _cfg("seesaw_shuffle", "auto")
    net = _trained_like(cfg)

    def cannot_lower(net, layout="cells"):
        raise ValueError("cannot lower block NewBlock\nsecond line")

    monkeypatch.setattr(onnx_runtime, "network_to_onnx", cannot_lower)
    logger, handler = _logger("fallback")
    verifier = Verifier(cfg, pair_sets, mx.cpu(), logger=logger)
    assert verifier.backend == "onnxruntime"
    results = verifier(net)
    assert 0.0 <= results["tiny"]["accuracy"] <= 1.0
    assert verifier.backend == "mxnet" and verifier.last["backend"] == "mxnet"
    assert not isinstance(verifier.embedder(net), OnnxEmbedder)
    assert len(handler.lines) == 1, handler.lines
    line = handler.lines[0]
    assert "\n" not in line and "onnxruntime" in line and "cannot lower block NewBlock" in line
    assert "mxnet" in line and "seesaw_shuffle" in line


def test_onnx_model_that_differs_from_the_network_is_not_used(monkeypatch, pair_sets):
    """The parity check on a few set images catches a lowering that runs but computes something else."""
    cfg = _cfg("seesaw_shuffle", "onnxruntime")
    net = _trained_like(cfg, seed=0)
    other = _trained_like(cfg, seed=1)
    lower = onnx_runtime.network_to_onnx
    monkeypatch.setattr(onnx_runtime, "network_to_onnx", lambda n, layout="cells": lower(other, layout))
    logger, handler = _logger("parity")
    verifier = Verifier(cfg, pair_sets, mx.cpu(), logger=logger)
    assert not isinstance(verifier.embedder(net), OnnxEmbedder)
    assert verifier.backend == "mxnet"
    assert len(handler.lines) == 1 and "differ from the network's" in handler.lines[0]


def test_parameters_on_several_devices_are_lowered(pair_sets):
    """``--cpu-devices 2``: the backbone's parameters live on two contexts; the lowering reads one."""
    cfg = _cfg("mobilefacenet", "auto")
    net = _trained_like(cfg, ctx=(mx.cpu(0), mx.cpu(1)))
    logger, handler = _logger("devices")
    verifier = Verifier(cfg, pair_sets, mx.cpu(0), logger=logger)
    embedder = verifier.embedder(net)
    assert isinstance(embedder, OnnxEmbedder) and handler.lines == []
    assert {"lower_seconds", "session_seconds", "check_seconds", "prepare_seconds"} <= set(verifier.last)


def test_parity_check_runs_again_only_when_the_graph_changes(monkeypatch, pair_sets):
    """Weights change every evaluation, the graph rarely: the check runs on the first evaluation and when the
    lowering emits other operators (here: another layout of the Seesaw blocks), and passes for each."""
    cfg = _cfg("seesaw_shuffle", "onnxruntime")
    net = _trained_like(cfg)
    logger, handler = _logger("signature")
    verifier = Verifier(cfg, pair_sets, mx.cpu(), logger=logger)
    verifier.embedder(net)
    assert "check_seconds" in verifier.last and verifier.last["check_difference"] < 1e-5
    first = verifier.checked_graph
    slopes = [p for name, p in net.collect_params().items() if name.endswith("alpha")]
    for param in slopes:  # new weights, same operators: no new check
        param.set_data(mx.nd.array(np.random.RandomState(3).uniform(0.0, 1.5, param.shape)))
    verifier.embedder(net)
    assert "check_seconds" not in verifier.last and verifier.checked_graph == first
    lower = onnx_runtime.network_to_onnx
    for layout in ("slice", "dense"):
        monkeypatch.setattr(onnx_runtime, "network_to_onnx", lambda n, _layout="cells", chosen=layout: lower(n, chosen))
        embedder = verifier.embedder(net)
        assert isinstance(embedder, OnnxEmbedder) and "check_seconds" in verifier.last
        assert verifier.checked_graph != first and verifier.last["check_difference"] < 1e-5
        first = verifier.checked_graph
    assert handler.lines == []


def test_parity_difference_is_relative():
    reference = np.array([[1e-8, -2e-8]])
    relative = lambda candidate: compare_embeddings(reference, candidate)["relative_diff"]  # noqa: E731
    assert relative(reference * (1 + 1e-6)) < 1e-5
    assert relative(reference + 1e-8) == pytest.approx(0.5)
    assert relative(reference * np.nan) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        relative(reference[:, :1])


def test_evaluate_logs_the_backend_and_time(pair_sets):
    cfg = _cfg("mobilefacenet", "auto")
    net = _trained_like(cfg)
    logger, handler = _logger("evaluate")
    state = types.SimpleNamespace(is_main=True, backbone=net, step=3, iters_per_epoch=3, log=logger.info,
                                  verifier=Verifier(cfg, pair_sets, mx.cpu(), logger=logger))
    metrics = evaluate(state)
    assert set(metrics["sets"]) == {"tiny"}
    assert "onnxruntime" in handler.lines[-1] and handler.lines[-1].startswith("verification mean accuracy")


def test_in_memory_onnx_embedder_uses_the_given_threads():
    cfg = _cfg("seesaw_shuffle", "auto")
    net = _trained_like(cfg)
    embedder = OnnxEmbedder.from_network(net, threads=2, spinning=False)
    options = embedder.session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert embedder.fixed_batch is None and embedder.lower_seconds > 0 and embedder.session_seconds > 0
    images = _pair_set(pairs=3)[0]
    one_batch = extract_embeddings(embedder, images, batch_size=6)
    np.testing.assert_allclose(extract_embeddings(embedder, images, batch_size=4), one_batch, atol=1e-5)
