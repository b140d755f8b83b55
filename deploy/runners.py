"""One batch of a network run in each way the project can run it, as a callable: the benchmarks' unit of timing.

Modes: ``imperative`` (Gluon, not hybridized), ``hybrid`` (hybridized, static memory), ``fused`` (hybridized
with oneDNN operator fusion), ``deploy`` (the folded graph of :mod:`deploy.lower` run by MXNet), ``int8``
(oneDNN INT8, :mod:`deploy.int8`), ``onnxruntime`` (the folded graph run by ONNX Runtime), ``onnxruntime_int8``
(its static INT8 quantization, :mod:`deploy.onnx_int8`), ``ncnn`` and ``mnn`` (the folded graph converted by each
runtime's own converter, in the form it fuses, :mod:`deploy.ncnn_runtime`, :mod:`deploy.mnn_runtime`), ``ncnn_fp16``
(float16 weights and storage).
"""
import os
import tempfile

import mxnet as mx

from .export import default_layout, random_images
from .graph import RUNTIME_FORMS
from .int8 import int8_block, quantize_int8
from .lower import build_deploy_graph
from .mxnet_runtime import symbol_block, traced_symbol
from .onnx_runtime import default_threads, onnx_session

MODES = ("imperative", "hybrid", "fused", "deploy", "int8", "onnxruntime", "onnxruntime_int8", "ncnn", "ncnn_fp16",
         "mnn")
# the modes that run the folded graph
GRAPH_MODES = ("deploy", "onnxruntime", "onnxruntime_int8", "ncnn", "ncnn_fp16", "mnn")
MOBILE_MODES = ("ncnn", "ncnn_fp16", "mnn")
# Layout of the Seesaw networks at batch 1 per mode, where it is not the variant's default (measured fastest:
# ncnn and MNN run the exact-MAdds cells layout faster than the dense one at batch 1 too, docs/deployment.md).
LATENCY_LAYOUTS = {"ncnn": "cells", "ncnn_fp16": "cells", "mnn": "cells"}


def layout_for(net, batch_size, layout="auto", mode=None):
    """Folded-graph layout for a batch size: ``auto`` takes the variant's latency layout at batch 1 (or the mode's,
    :data:`LATENCY_LAYOUTS`) and the exact-MAdds ``cells`` layout for larger batches (measured fastest on 2 cores;
    all layouts are exact)."""
    if layout != "auto":
        return layout
    if batch_size == 1:
        return LATENCY_LAYOUTS.get(mode) or default_layout(net)
    return "cells"


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
    if mode in GRAPH_MODES:
        layout = layout_for(net, batch_size, layout, mode)
        graph = build_deploy_graph(net, layout, se=se)
        if mode == "deploy":
            sym, args, aux = graph.to_symbol()
            return _mx_call(symbol_block(sym, args, aux), mx.nd.array(x)), graph.madds(), layout
        if mode in MOBILE_MODES:
            embedder = mobile_embedder(graph, mode.split("_")[0], threads, fp16=mode.endswith("_fp16"))
            return (lambda: embedder(x)), graph.madds(), layout
        model = graph.to_onnx()
        if mode == "onnxruntime_int8":
            from .onnx_int8 import quantize_onnx_int8

            model = quantize_onnx_int8(model, calib if calib is not None else random_images(32))
        session = onnx_session(model, threads=threads)
        return (lambda: session.run(None, {"data": x})), graph.madds(), layout
    raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


def mobile_embedder(graph, runtime, threads=None, fp16=False):
    """An embedder (:class:`deploy.ncnn_runtime.NcnnEmbedder`, :class:`deploy.mnn_runtime.MnnEmbedder`) of a folded
    graph converted for ``runtime`` (``ncnn`` or ``mnn``), in the form it fuses, without parity check; ``threads``
    None: every core."""
    model = graph.to_onnx(**RUNTIME_FORMS[runtime])
    threads = threads or default_threads()
    with tempfile.TemporaryDirectory() as work:  # the runtimes read the whole model when they load it
        if runtime == "ncnn":
            from .ncnn_runtime import NcnnEmbedder, convert_to_ncnn

            param, weights = convert_to_ncnn(model, os.path.join(work, "m.param"), os.path.join(work, "m.bin"),
                                             fp16=fp16)
            return NcnnEmbedder(param, weights, threads=threads, fp16=fp16)
        from .mnn_runtime import MnnEmbedder, convert_to_mnn

        return MnnEmbedder(convert_to_mnn(model, os.path.join(work, "m.mnn"), fp16=fp16), threads=threads, fp16=fp16)


def _mx_call(block, x):
    return lambda: block(x).wait_to_read()
