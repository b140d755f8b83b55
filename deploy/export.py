"""Float32 deployment artefacts of a network, each run against the source network before it is written.

- :func:`export_symbol`: ``prefix-symbol.json`` + ``-0000.params``, the embedding network as trained;
- :func:`export_deploy`: the folded inference graph (:mod:`deploy.lower`) for MXNet;
- :func:`export_onnx`: the same graph as ONNX (opset 13, dynamic batch), checked with ONNX Runtime.

An artefact whose embeddings differ from the source's by more than the tolerance raises
:class:`ExportMismatch` with the measured difference, and nothing of it is written.
"""
import json
import os

import mxnet as mx
import numpy as np

import datasets
from symbols.seesaw import SeesawBlock

from .embedders import compare_embeddings
from .lower import build_deploy_graph
from .mxnet_runtime import run_block, symbol_block, traced_symbol
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
    """Up to ``count`` normalised face images (N, 3, 112, 112) from a ``.bin`` set or a ``.rec`` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: calibration/probe data not found (.rec or .bin)")
    rng = np.random.RandomState(seed)
    if path.endswith(".bin"):
        images, _ = datasets.load_bin(path)
        pick = np.sort(rng.choice(len(images), min(count, len(images)), replace=False))
        return datasets.normalize(images[pick])
    if path.endswith(".rec"):
        dataset = datasets.FaceRecordDataset(path)
        pick = np.sort(rng.choice(len(dataset), min(count, len(dataset)), replace=False))
        return np.stack([np.asarray(dataset[int(i)][0], dtype=np.float32) for i in pick])
    raise ValueError(f"{path}: calibration data must be a .rec (training records) or a .bin pair set")


def probe_batch(count=PROBE_IMAGES, seed=0, images=None):
    """Images to compare an export with its source: the first ``count`` of ``images`` if given, else
    normally distributed inputs of the normalised range."""
    if images is not None and len(images):
        return np.ascontiguousarray(images[:count], dtype=np.float32)
    return np.random.RandomState(seed).normal(0, 0.6, (count, 3, 112, 112)).astype(np.float32)


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
    """Write ``prefix-symbol.json`` + ``prefix-0000.params`` (embedding only) after checking a re-import
    reproduces ``net`` on ``probe``. Returns the comparison figures."""
    sym, args, aux = traced_symbol(net)
    reference = net(mx.nd.array(probe)).asnumpy()
    block = symbol_block(sym, {k: v.copy() for k, v in args.items()}, aux, backend=None)
    stats = compare(reference, run_block(block, probe))
    _check_fp32("the exported symbol", stats, tolerance)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    mx.model.save_checkpoint(prefix, 0, sym, args, aux)
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
