"""ncnn and MNN exports of the folded graph, each run in its runtime against the source network before it is written.

Both start from the folded graph's ONNX in the form the runtime's converter fuses (:data:`deploy.graph.RUNTIME_FORMS`)
and convert it with the runtime's own converter (:mod:`deploy.ncnn_runtime`, :mod:`deploy.mnn_runtime`). float32
models must reproduce the source's embeddings within :data:`MOBILE_TOLERANCE` (max abs) and
:data:`FP32_MIN_COSINE` (every image); float16 models, whose rounded weights move embeddings by ~1e-3 of their
scale, within :data:`FP16_MIN_COSINE`. A model that does not is refused with the measured difference, and nothing
of it is written.
"""
import os
import shutil
import tempfile

import mxnet as mx
import numpy as np

from .embedders import compare_embeddings
from .export import ExportMismatch, default_layout
from .graph import RUNTIME_FORMS
from .lower import build_deploy_graph
from .onnx_runtime import default_threads

MOBILE_TOLERANCE = 1e-3
FP32_MIN_COSINE = 0.9999
FP16_MIN_COSINE = 0.9999
# The layout exported when none is given: ncnn and MNN run the exact-MAdds cells layout fastest at every batch size
# (docs/deployment.md); the Seesaw variants' default is for ONNX Runtime at batch 1.
MOBILE_LAYOUT = "cells"


def runtime_onnx(net, runtime, layout=None):
    """``(onnx.ModelProto, layout)``: the folded graph of ``net`` in ``runtime``'s form (``layout`` None:
    :data:`MOBILE_LAYOUT`)."""
    layout = layout or MOBILE_LAYOUT
    return build_deploy_graph(net, layout).to_onnx(dynamic_batch=True, **RUNTIME_FORMS[runtime]), layout


def check_export(what, reference, candidate, fp16=False, tolerance=MOBILE_TOLERANCE):
    """Compare ``candidate`` embeddings with ``reference``; ExportMismatch with the figures when they are off."""
    try:
        stats = compare_embeddings(reference, candidate)
    except ValueError as err:
        raise ExportMismatch(f"{what}: {err}") from None
    min_cosine = FP16_MIN_COSINE if fp16 else FP32_MIN_COSINE
    if not stats["min_cosine"] >= min_cosine or not (fp16 or stats["max_abs_diff"] <= tolerance):
        bound = f"min cosine {min_cosine}" + ("" if fp16 else f", max abs difference {tolerance:g}")
        raise ExportMismatch(f"{what} does not reproduce the source network: max abs difference "
                             f"{stats['max_abs_diff']:.3g}, min cosine {stats['min_cosine']:.6f} (needs {bound}); "
                             "not written")
    return stats


def export_onnx_form(net, path, probe, layout=None, prelu="native", tolerance=1e-4):
    """Write the folded graph as ONNX with PReLU in the form ``prelu`` (:data:`deploy.graph.PRELU_FORMS`; ``native``
    is what OpenVINO fuses) after an ONNX Runtime parity check on ``probe`` at two batch sizes; the ONNX form of
    :func:`deploy.export.export_onnx`, which writes the ``depthwise`` form. Returns the figures."""
    from .onnx_runtime import onnx_session

    layout = layout or default_layout(net)
    model = build_deploy_graph(net, layout).to_onnx(dynamic_batch=True, prelu=prelu)
    session = onnx_session(model)
    outputs = [session.run(None, {"data": part})[0] for part in (probe[:1], probe[1:])]
    stats = check_export("the ONNX model", net(mx.nd.array(probe)).asnumpy(), np.concatenate(outputs),
                         tolerance=tolerance)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return dict(stats, layout=layout, prelu=prelu)


def export_ncnn(net, folder, probe, layout=None, fp16=False, tolerance=MOBILE_TOLERANCE, accuracy=None,
                threads=None):
    """Write ``folder/model.param`` + ``model.bin`` (pnnx conversion; float16 weights and storage when ``fp16``)
    after running them with ncnn (``threads``, default every core) against ``net`` on ``probe``. ``accuracy(embedder)``, if given, measures the model
    before it is written. Returns the figures, the layout and the ncnn layer counts."""
    from .ncnn_runtime import NcnnEmbedder, convert_to_ncnn, layer_counts

    model, layout = runtime_onnx(net, "ncnn", layout)
    reference = net(mx.nd.array(probe)).asnumpy()
    with tempfile.TemporaryDirectory() as work:
        param, weights = os.path.join(work, "model.param"), os.path.join(work, "model.bin")
        convert_to_ncnn(model, param, weights, fp16=fp16)
        embedder = NcnnEmbedder(param, weights, threads=threads or default_threads(), fp16=fp16,
                                name="the ncnn model")
        stats = check_export(f"the ncnn{' fp16' if fp16 else ''} model", reference, embedder(probe), fp16, tolerance)
        result = dict(stats, layout=layout, layers=layer_counts(param), bytes=os.path.getsize(weights),
                      files=["model.param", "model.bin"], input="in0", output="out0",
                      runtime_options={"use_fp16_storage": bool(fp16)})
        if accuracy is not None:
            result["accuracy"] = accuracy(embedder)
        os.makedirs(folder, exist_ok=True)
        for path in (param, weights):
            shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))
    return result


def export_mnn(net, path, probe, layout=None, fp16=False, tolerance=MOBILE_TOLERANCE, accuracy=None, threads=None):
    """Write ``path`` (an ``.mnn`` file; float16 weights when ``fp16``) after running it with MNN against ``net`` on
    ``probe``. ``accuracy(embedder)``, if given, measures the model before it is written. Returns the figures, the
    layout and the MNN op counts."""
    from .mnn_runtime import MnnEmbedder, convert_to_mnn, op_counts

    model, layout = runtime_onnx(net, "mnn", layout)
    reference = net(mx.nd.array(probe)).asnumpy()
    with tempfile.TemporaryDirectory() as work:
        trial = os.path.join(work, "model.mnn")
        convert_to_mnn(model, trial, fp16=fp16)
        embedder = MnnEmbedder(trial, threads=threads or default_threads(), fp16=fp16, name="the MNN model")
        stats = check_export(f"the MNN{' fp16' if fp16 else ''} model", reference, embedder(probe), fp16, tolerance)
        result = dict(stats, layout=layout, ops=op_counts(trial), bytes=os.path.getsize(trial), input="data",
                      output="embedding")
        if accuracy is not None:
            result["accuracy"] = accuracy(embedder)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        shutil.copyfile(trial, path)
    return result
