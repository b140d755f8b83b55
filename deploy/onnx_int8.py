"""ONNX Runtime static INT8 of the folded graph: ONNX Runtime's own quantization tool, calibrated on face images.

QDQ format, per-channel int8 weights, uint8 activations with min/max ranges from the calibration images. Every
layer is quantized except the first convolution (:data:`ONNX_INT8_KEEP_FP32`, the layer that reads the image, as in
the MXNet INT8 recipe); the SE and head layers are quantized too, which keeps the graph one INT8 region with no
layout conversion inside.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

ONNX_INT8_MIN_COSINE = 0.99
# Convolutions kept in float32, by position among the graph's Conv nodes: the stem (0).
ONNX_INT8_KEEP_FP32 = (0,)
CALIB_BATCH = 8


def _calibration_reader(images, batch=CALIB_BATCH):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """The calibration images, ``batch`` at a time, as the graph's input ``data``."""

        def __init__(self):
            self.batches = [np.ascontiguousarray(images[i:i + batch], dtype=np.float32)
                            for i in range(0, len(images), batch)]
            self.position = 0

        def get_next(self):
            if self.position >= len(self.batches):
                return None
            self.position += 1
            return {"data": self.batches[self.position - 1]}

        def rewind(self):
            self.position = 0

    return Reader()


def quantize_onnx_int8(model, calib_images, keep_fp32=ONNX_INT8_KEEP_FP32):
    """Static INT8 quantization of an ONNX model (``onnx.ModelProto`` or bytes) with input ``data``, calibrated on
    ``calib_images`` (N, 3, H, W) RGB 0–255. ``keep_fp32``: positions of the Conv nodes left in float32.
    Returns the quantized model as bytes.

    Runs in a child process: ONNX Runtime's quantization tool opens sessions with their own thread pools, which
    ONNX Runtime refuses in a process that shares one pool (:func:`deploy.onnx_runtime.share_onnx_threads`)."""
    if len(calib_images) == 0:
        raise ValueError("INT8 calibration needs images; none were given")
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else bytes(model)
    with tempfile.TemporaryDirectory() as work:
        src, images, dst = (os.path.join(work, name) for name in ("src.onnx", "calib.npy", "int8.onnx"))
        with open(src, "wb") as f:
            f.write(data)
        np.save(images, np.ascontiguousarray(calib_images, dtype=np.float32))
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (f"import sys; sys.path.insert(0, {root!r}); from deploy.onnx_int8 import _quantize_files; "
                "_quantize_files(*sys.argv[1:4], [int(i) for i in sys.argv[4:]])")
        done = subprocess.run([sys.executable, "-c", code, src, images, dst] + [str(i) for i in keep_fp32],
                              capture_output=True, text=True)
        if done.returncode != 0 or not os.path.isfile(dst):
            tail = " | ".join(done.stderr.strip().splitlines()[-2:])
            raise RuntimeError(f"ONNX Runtime's INT8 quantization failed (exit code {done.returncode}): {tail}")
        with open(dst, "rb") as f:
            return f.read()


def _quantize_files(src, images, dst, keep_fp32):
    """:func:`quantize_onnx_int8`'s work, on files: ``src`` ONNX, ``images`` a ``.npy`` of calibration images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst + ".pre.onnx"
    quant_pre_process(src, pre, skip_symbolic_shape=True)
    convs = [node.name for node in onnx.load(pre).graph.node if node.op_type == "Conv"]
    keep = [convs[i] for i in keep_fp32 if -len(convs) <= i < len(convs)]
    quantize_static(pre, dst, _calibration_reader(np.load(images)), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep)


def export_onnx_int8(net, path, calib_images, probe, layout=None, min_cosine=ONNX_INT8_MIN_COSINE, accuracy=None):
    """Quantize the folded graph of ``net`` (:func:`quantize_onnx_int8`), check that every probe image's embedding
    keeps cosine ≥ ``min_cosine`` with the source network's, then write ``path``. ``accuracy(embedder)``, if given,
    measures the quantized model before it is written (its result goes into the figures as ``accuracy``)."""
    import mxnet as mx

    from .embedders import compare_embeddings
    from .export import ExportMismatch, default_layout
    from .lower import build_deploy_graph
    from .onnx_runtime import OnnxEmbedder

    layout = layout or default_layout(net)
    model = quantize_onnx_int8(build_deploy_graph(net, layout).to_onnx(dynamic_batch=True), calib_images)
    embedder = OnnxEmbedder(model, name="the ONNX Runtime INT8 model")
    stats = compare_embeddings(net(mx.nd.array(probe)).asnumpy(), embedder(probe))
    if not stats["min_cosine"] >= min_cosine:
        raise ExportMismatch(f"the ONNX Runtime INT8 model does not reproduce the source network: min cosine "
                             f"similarity {stats['min_cosine']:.4f} < {min_cosine} (mean {stats['mean_cosine']:.4f}); "
                             f"not written. INT8 needs trained weights; calibrate on training records "
                             f"(--calib-data train.rec), {len(calib_images)} images now (--calib-images)")
    result = dict(stats, layout=layout, calib_images=len(calib_images), ops=quantized_op_counts(model))
    if accuracy is not None:
        result["accuracy"] = accuracy(embedder)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model)
    return result


def quantized_op_counts(model):
    """``{op type: count}`` of the graph ONNX Runtime runs for ``model`` (after its own fusions: a QDQ model's
    quantized convolutions show as ``QLinearConv``)."""
    import onnx
    import onnxruntime

    from .onnx_runtime import onnx_session_options

    with tempfile.TemporaryDirectory() as work:
        options = onnx_session_options(threads=1)
        options.optimized_model_filepath = os.path.join(work, "optimized.onnx")
        onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
    counts = {}
    for node in nodes:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
