"""One batch of a network run in each way the project can run it, as a callable: the benchmarks' unit of timing.

Modes: ``imperative`` (Gluon, not hybridized), ``hybrid`` (hybridized, static memory), ``fused`` (hybridized
with oneDNN operator fusion), ``deploy`` (the folded graph of :mod:`deploy.lower` run by MXNet), ``int8``
(oneDNN INT8, :mod:`deploy.int8`), ``onnxruntime`` (the folded graph run by ONNX Runtime).
"""
import mxnet as mx

from .export import default_layout, random_images
from .int8 import int8_block, quantize_int8
from .lower import build_deploy_graph
from .mxnet_runtime import symbol_block, traced_symbol
from .onnx_runtime import onnx_session

MODES = ("imperative", "hybrid", "fused", "deploy", "int8", "onnxruntime")
GRAPH_MODES = ("deploy", "onnxruntime")  # the modes that run the folded graph


def layout_for(net, batch_size, layout="auto"):
    """Folded-graph layout for a batch size: ``auto`` takes the variant's latency layout at batch 1 and the
    exact-MAdds ``cells`` layout for larger batches (measured fastest on 2 cores; all layouts are exact)."""
    if layout != "auto":
        return layout
    return default_layout(net) if batch_size == 1 else "cells"


def make_runner(net, mode, batch_size, calib=None, layout="auto", threads=None, se=True):
    """A callable running ``net`` in ``mode`` on one batch of ``batch_size`` and waiting for the result.

    Returns ``(runner, madds, layout)``: ``madds`` is the per-image MAdds the mode executes (None: as the
    source network), ``layout`` the folded-graph layout used (None for the other modes). ``se=False``: the
    folded graph without SE blocks (``deploy`` and ``onnxruntime`` only)."""
    if not se and mode not in GRAPH_MODES:
        raise ValueError(f"no_se exists only for the folded graph (modes {', '.join(GRAPH_MODES)}), not {mode!r}")
    x = random_images(batch_size, seed=batch_size)
    if mode == "imperative":
        return _mx_call(net, mx.nd.array(x)), None, None
    if mode in ("hybrid", "fused"):
        sym, args, aux = traced_symbol(net)
        block = symbol_block(sym, args, aux, backend="MKLDNN" if mode == "fused" else None)
        return _mx_call(block, mx.nd.array(x)), None, None
    if mode == "int8":
        qsym, qargs, qaux = quantize_int8(net, calib)
        return _mx_call(int8_block(qsym, qargs, qaux), mx.nd.array(x)), None, None
    if mode in ("deploy", "onnxruntime"):
        layout = layout_for(net, batch_size, layout)
        graph = build_deploy_graph(net, layout, se=se)
        if mode == "deploy":
            sym, args, aux = graph.to_symbol()
            return _mx_call(symbol_block(sym, args, aux), mx.nd.array(x)), graph.madds(), layout
        session = onnx_session(graph.to_onnx(), threads=threads)
        return (lambda: session.run(None, {"data": x})), graph.madds(), layout
    raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


def _mx_call(block, x):
    return lambda: block(x).wait_to_read()
