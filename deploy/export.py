"""Float32 deployment artefacts of a network, each run against the source network before it is written.

- :func:`export_symbol`: ``prefix-symbol.json`` + ``-0000.params``, the embedding network as trained;
- :func:`export_deploy`: the folded inference graph (:mod:`deploy.lower`) for MXNet;
- :func:`export_onnx`: the same graph as ONNX (opset 13, dynamic batch), checked with ONNX Runtime;
- :func:`export_saved_graph`: the symbol and ONNX of a checkpoint of another network (InsightFace's, say).

An artefact whose embeddings differ from the source's by more than the tolerance raises
:class:`ExportMismatch` with the measured difference, and nothing of it is written.
"""
import json
import os
import tempfile

import mxnet as mx
import numpy as np
import onnx

import datasets
from symbols.seesaw import SeesawBlock

from .checkpoint import load_model, read_symbol, resolve_checkpoint, save_embedding
from .embedders import compare_embeddings
from .lower import build_deploy_graph
from .mxnet_runtime import quiet, run_block, symbol_block
from .onnx_runtime import onnx_session

TOLERANCE = 1e-4
PROBE_IMAGES = 16
# The folded-graph layout exported by default: the fastest at batch 1 on ONNX Runtime (docs/performance.md);
# ``cells`` (the paper's multiply-adds) is the fastest for batches.
DEFAULT_LAYOUT = {"shuffle": "dense", "share": "dense", None: "cells"}


class ExportMismatch(ValueError):
    """An artefact does not reproduce the source network; the message holds the measured difference."""


def compare(reference, candidate):
    """:func:`deploy.embedders.compare_embeddings`, a shape mismatch raised as :class:`ExportMismatch`."""
    try:
        return compare_embeddings(reference, candidate)
    except ValueError as err:
        raise ExportMismatch(str(err)) from None


def load_images(path, count, seed=0):
    """Up to ``count`` face images (N, 3, 112, 112), RGB 0–255 floats, from a ``.bin`` set or a ``.rec`` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: calibration/probe data not found (.rec or .bin)")
    rng = np.random.RandomState(seed)
    if path.endswith(".bin"):
        images, _ = datasets.load_bin(path)
        pick = np.sort(rng.choice(len(images), min(count, len(images)), replace=False))
        return datasets.to_input(images[pick])
    if path.endswith(".rec"):
        dataset = datasets.FaceRecordDataset(path)
        pick = np.sort(rng.choice(len(dataset), min(count, len(dataset)), replace=False))
        return np.stack([np.asarray(dataset[int(i)][0], dtype=np.float32) for i in pick])
    raise ValueError(f"{path}: calibration data must be a .rec (training records) or a .bin pair set")


def probe_batch(count=PROBE_IMAGES, seed=0, images=None):
    """Images to compare an export with its source: the first ``count`` of ``images`` if given, else random RGB
    0–255 images (normal around mid-grey, clipped)."""
    if images is not None and len(images):
        return np.ascontiguousarray(images[:count], dtype=np.float32)
    return random_images(count, seed)


def random_images(count, seed=0):
    """``count`` random (3, 112, 112) RGB images, float32 0–255: N(127.5, 77²) clipped (after the networks' own
    normalisation, about N(0, 0.6²))."""
    rng = np.random.RandomState(seed)
    return np.clip(rng.normal(127.5, 76.8, (count, 3, 112, 112)), 0, 255).astype(np.float32)


def _check_fp32(what, stats, tolerance):
    if not np.isfinite(stats["max_abs_diff"]) or stats["max_abs_diff"] > tolerance:
        raise ExportMismatch(f"{what} does not reproduce the source network: max abs difference "
                             f"{stats['max_abs_diff']:.3g} > {tolerance:g} (min cosine {stats['min_cosine']:.6f}); "
                             "not written")


def default_layout(net):
    """The folded-graph layout used when none is given (see ``DEFAULT_LAYOUT``)."""
    block = net.stages[0][0]
    return DEFAULT_LAYOUT[block.variant if isinstance(block, SeesawBlock) else None]


def export_symbol(net, prefix, probe, tolerance=TOLERANCE):
    """Write ``prefix-symbol.json`` + ``prefix-0000.params`` (embedding only, InsightFace's convention:
    :func:`deploy.checkpoint.save_embedding`) after checking that the saved pair, loaded back, reproduces ``net``
    on ``probe``. Returns the comparison figures."""
    reference = net(mx.nd.array(probe)).asnumpy()
    with tempfile.TemporaryDirectory() as folder:
        trial = os.path.join(folder, "model")
        save_embedding(net, trial, 0)
        stats = compare(reference, run_block(load_model(trial + ",0"), probe))
    _check_fp32("the exported symbol", stats, tolerance)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    save_embedding(net, prefix, 0)
    return stats


def export_deploy(net, prefix, probe, layout=None, tolerance=TOLERANCE):
    """Write the folded inference graph (:mod:`deploy.lower`) as ``prefix-symbol.json`` + ``-0000.params``,
    after checking it reproduces ``net`` (run with the oneDNN backend). Returns figures and op counts."""
    layout = layout or default_layout(net)
    graph = build_deploy_graph(net, layout)
    sym, args, aux = graph.to_symbol()
    reference = net(mx.nd.array(probe)).asnumpy()
    stats = compare(reference, run_block(symbol_block(sym, args, aux), probe))
    _check_fp32("the folded deploy graph", stats, tolerance)
    _check_no_transpose(sym)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    mx.model.save_checkpoint(prefix, 0, sym, args, aux)
    return dict(stats, layout=layout, madds=graph.madds(), ops=graph.op_counts())


def _check_no_transpose(sym):
    ops = {node["op"] for node in json.loads(sym.tojson())["nodes"]}
    bad = ops & {"transpose", "SwapAxis", "swapaxes", "Reshape", "reshape"}
    if bad:
        raise ExportMismatch(f"the deploy graph still holds {sorted(bad)}; the shuffle was not folded")


def export_onnx(net, path, probe, layout=None, tolerance=TOLERANCE):
    """Write the folded graph as ONNX (dynamic batch) after an ONNX Runtime parity check on ``probe`` at two
    batch sizes. Returns the figures (max abs diff, cosine similarity)."""
    layout = layout or default_layout(net)
    model = build_deploy_graph(net, layout).to_onnx(dynamic_batch=True)
    session = onnx_session(model)
    reference = net(mx.nd.array(probe)).asnumpy()
    outputs = np.concatenate([session.run(None, {"data": probe[:1]})[0], session.run(None, {"data": probe[1:]})[0]])
    stats = compare(reference, outputs)
    _check_fp32("the ONNX model", stats, tolerance)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return dict(stats, layout=layout)


# ---------------------------------------------------------------------------------------------- any saved graph
def _fix_fully_connected(symbol):
    """MXNet's ONNX exporter reads a FullyConnected without a ``flatten`` attribute as ``flatten=False`` (MXNet's
    own default is True) and writes a Gemm ONNX Runtime cannot load: make the attribute explicit."""
    graph = json.loads(symbol.tojson())
    for node in graph["nodes"]:
        if node["op"] == "FullyConnected":
            node.setdefault("attrs", {}).setdefault("flatten", "True")
    return mx.sym.load_json(json.dumps(graph))


def _fixed_gammas(symbol, args):
    """A BatchNorm with ``fix_gamma`` (MXNet's default; InsightFace's ``fc1``) ignores its stored gamma and scales by
    1, which MXNet's ONNX exporter does not know: the gammas it will read, set to 1."""
    fixed = {}
    for node in json.loads(symbol.tojson())["nodes"]:
        if node["op"] == "BatchNorm" and node.get("attrs", {}).get("fix_gamma", "True").lower() in ("true", "1"):
            name = node["name"] + "_gamma"
            if name in args:
                fixed[name] = mx.nd.ones_like(args[name])
    return fixed


def _tidy_mxnet_onnx(model):
    """Two repairs to what MXNet 1.9.1's ONNX exporter writes: PReLU slopes of shape (C,), which ONNX broadcasts
    along the last axis instead of the channels, become (C, 1, 1); and the weights listed as graph inputs as well
    as initializers (ONNX Runtime warns per weight and cannot fold them) are taken out of the inputs."""
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        slope = inits.get(node.input[1]) if node.op_type == "PRelu" and len(node.input) > 1 else None
        if slope is not None and len(slope.dims) == 1:
            slope.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(slope).reshape(-1, 1, 1), slope.name))
    inputs = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return model


def export_saved_graph(spec, prefix=None, onnx_path=None, probe=None, tolerance=TOLERANCE):
    """Exports of a checkpoint that is not one of this repository's networks (an InsightFace model, say): its
    embedding graph (``fc1_output``, taking raw RGB 0–255) as ``prefix-symbol.json`` + ``-0000.params`` and/or
    ONNX through MXNet's exporter (dynamic batch), each checked against the graph run by MXNet.
    Returns ``{format: figures}``."""
    probe = probe_batch(images=probe)
    model = load_model(spec)
    reference = run_block(model, probe)
    symbol_file, params_file = resolve_checkpoint(spec)
    saved = {k.split(":", 1)[-1]: v for k, v in mx.nd.load(params_file).items()}
    symbol, convention = read_symbol(symbol_file, list(saved))
    symbol = _fix_fully_connected(symbol)
    args = {k: saved[k] for k in symbol.list_arguments() if k in saved}
    args.update(_fixed_gammas(symbol, args))
    aux = {k: saved[k] for k in symbol.list_auxiliary_states() if k in saved}
    results = {}
    if prefix:
        block = symbol_block(symbol, args, aux, backend=None)
        stats = compare(reference, run_block(block, probe))
        _check_fp32("the exported symbol", stats, tolerance)
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        mx.model.save_checkpoint(prefix, 0, symbol, args, aux)
        results["symbol"] = dict(stats, convention=convention)
    if onnx_path:
        with tempfile.TemporaryDirectory() as folder:
            tmp = os.path.join(folder, "model.onnx")
            quiet(lambda: mx.onnx.export_model(symbol, [args, aux], [(1, 3, 112, 112)], [np.float32], tmp,
                                                dynamic=True, dynamic_input_shapes=[(None, 3, 112, 112)]))
            data = _tidy_mxnet_onnx(onnx.load(tmp)).SerializeToString()
        session = onnx_session(data)
        name = session.get_inputs()[0].name
        outputs = np.concatenate([session.run(None, {name: probe[:1]})[0], session.run(None, {name: probe[1:]})[0]])
        stats = compare(reference, outputs)
        _check_fp32("the ONNX model", stats, tolerance)
        os.makedirs(os.path.dirname(os.path.abspath(onnx_path)), exist_ok=True)
        with open(onnx_path, "wb") as f:
            f.write(data)
        results["onnx"] = dict(stats, convention=convention)
    return results
