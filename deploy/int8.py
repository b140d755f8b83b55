"""INT8 inference graph with MXNet's oneDNN quantization, calibrated on face images and checked per image.

The first convolution, the SE blocks' 1×1 layers and the GDC head stay in fp32 (:data:`INT8_KEEP_FP32`), and
each SE output's channels are rescaled before quantizing (:func:`equalize_se_outputs`); docs/performance.md
has what each of these choices measured.
"""
import json
import os

import mxnet as mx
import numpy as np

from .export import ExportMismatch, compare
from .mxnet_runtime import quiet, run_block, symbol_block, traced_symbol

INT8_MIN_COSINE = 0.99
# Layers kept in fp32 (name suffixes in the traced symbol): the first convolution and the GDC head lose the
# most accuracy in INT8, the SE blocks' 1×1 layers on pooled vectors gain no speed; < 6% of the multiply-adds.
INT8_KEEP_FP32 = ("stem_conv_conv_fwd", "_se_fc1_fwd", "_se_fc2_fwd", "head_conv_sep_conv_fwd",
                  "head_conv_dw_conv_fwd", "head_linear_fwd")
# Operators never quantized: the swish product in INT8 needs its sigmoid re-quantized (slower and less exact).
INT8_KEEP_FP32_OPS = ("elemwise_mul",)
CALIB_MODES = ("naive", "entropy")


def quantize_int8(net, calib_images, calib_mode="naive", keep_fp32=INT8_KEEP_FP32, keep_fp32_ops=INT8_KEEP_FP32_OPS,
                  equalize=True, granularity="channel-wise"):
    """oneDNN INT8 quantization of the network (signed int8 activations, per-channel weights by default)
    calibrated on ``calib_images`` (N, 3, 112, 112). Returns ``(qsym, qarg_params, qaux_params)``.

    ``keep_fp32``: layers (suffixes of the traced symbol's node names) left in fp32; ``keep_fp32_ops``:
    operator types never quantized. ``calib_mode``: ``naive`` quantizes each tensor over the min/max seen on
    the calibration images (no clipping: clipping, as ``entropy`` or a least-squares threshold does, lowers
    the average error but ruins the images whose activations are clipped); ``entropy`` is MXNet's
    KL-divergence calibration. ``equalize``: first rescale the SE outputs' channels
    (:func:`equalize_se_outputs`), which the per-tensor activation quantization otherwise serves badly.
    """
    from mxnet.contrib import quantization

    if calib_mode not in CALIB_MODES:
        raise ValueError(f"calib_mode {calib_mode!r}: valid modes are {', '.join(CALIB_MODES)}")
    calib_images = np.ascontiguousarray(calib_images, dtype=np.float32)
    sym, args, aux = traced_symbol(net)
    if equalize:
        sym, args, aux = equalize_se_outputs(sym, args, aux, calib_images)
    excluded = [n for n in _layer_names(sym) if n.endswith(tuple(keep_fp32))]
    calib = mx.io.NDArrayIter(data=mx.nd.array(calib_images), batch_size=min(32, len(calib_images)))
    qsym, qargs, qaux = quiet(lambda: quantization.quantize_model_mkldnn(
        sym, args, aux, ctx=mx.cpu(), excluded_sym_names=excluded, excluded_op_names=list(keep_fp32_ops),
        calib_mode=calib_mode, calib_data=calib, num_calib_examples=len(calib_images),
        quantized_dtype="int8", quantize_mode="smart", quantize_granularity=granularity, logger=None))
    return qsym.get_backend_symbol("MKLDNN_QUANTIZE"), qargs, qaux


def equalize_se_outputs(sym, args, aux, images, alpha=0.5, max_scale=64.0):
    """Rescale the channels of every SE block's output before INT8 quantization; the function is unchanged.

    The SE output (the projection's input) has channels of very different ranges (the median channel's is
    ~5% of the tensor's maximum on a trained seesaw_shuffle), so one per-tensor INT8 scale leaves most
    channels a few levels. Channel ``c`` is multiplied by ``s_c = (R / r_c) ** alpha`` (``r_c`` its max |x|
    on ``images``, ``R`` the largest, ``s_c`` ≤ ``max_scale``) through the SE gate, ``x · (g · s)``, an extra
    (N, E, 1, 1) product, and the projection weights reading it are divided by ``s_c`` (``alpha`` 0.5
    shares the range between activations and per-channel-quantized weights). Blocks whose SE output feeds
    anything but (sliced) convolutions are left alone. Returns ``(sym, args, aux)`` (new dicts).
    """
    graph = json.loads(sym.tojson())
    nodes = graph["nodes"]
    consumers = {}
    for i, node in enumerate(nodes):
        for src, _, _ in node["inputs"]:
            consumers.setdefault(src, []).append(i)
    targets = {}
    for i, node in enumerate(nodes):
        if node["op"] == "broadcast_mul" and node["name"].endswith("_se_broadcast_mul0"):
            readers = _conv_readers(nodes, consumers, i)
            if readers is not None:
                targets[i] = readers
    if not targets:
        return sym, dict(args), dict(aux)
    internals = sym.get_internals()
    probe = symbol_block(mx.sym.Group([internals[nodes[i]["name"] + "_output"] for i in targets]), args, aux,
                         backend=None)
    ranges = [np.zeros(0)] * len(targets)
    for start in range(0, len(images), 32):
        outs = probe(mx.nd.array(images[start:start + 32]))
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for k, out in enumerate(outs):
            r = np.abs(out.asnumpy()).max(axis=(0, 2, 3))
            ranges[k] = r if not len(ranges[k]) else np.maximum(ranges[k], r)
    args = dict(args)
    scales = {}
    for (i, readers), r in zip(targets.items(), ranges):
        s = np.clip((r.max() / np.maximum(r, 1e-12)) ** alpha, 1.0, max_scale).astype(np.float32)
        scales[i] = s
        for begin, weight in readers:
            w = args[weight].asnumpy()
            args[weight] = mx.nd.array(w / s[begin:begin + w.shape[1]].reshape(1, -1, 1, 1))
    new_nodes, remap = [], {}
    for i, node in enumerate(nodes):
        node = dict(node, inputs=[[remap[src], out, ver] for src, out, ver in node["inputs"]])
        if i in scales:
            name = node["name"] + "_equalize"
            new_nodes.append({"op": "null", "name": name, "inputs": [],
                              "attrs": {"__shape__": str((1, len(scales[i]), 1, 1))}})
            args[name] = mx.nd.array(scales[i].reshape(1, -1, 1, 1))
            new_nodes.append({"op": "broadcast_mul", "name": name + "_gate",
                              "inputs": [node["inputs"][1], [len(new_nodes) - 1, 0, 0]]})
            node["inputs"][1] = [len(new_nodes) - 1, 0, 0]
        remap[i] = len(new_nodes)
        new_nodes.append(node)
    graph["nodes"] = new_nodes
    graph["arg_nodes"] = [i for i, node in enumerate(new_nodes) if node["op"] == "null"]
    graph["heads"] = [[remap[src], out, ver] for src, out, ver in graph["heads"]]
    graph.pop("node_row_ptr", None)
    return mx.sym.load_json(json.dumps(graph)), args, dict(aux)


def _conv_readers(nodes, consumers, index):
    """``[(first channel read, weight name)]`` of the convolutions reading node ``index`` directly or through
    a channel slice; None if anything else reads it."""
    readers = []
    for c in consumers.get(index, []):
        node = nodes[c]
        if node["op"] == "Convolution" and int(node["attrs"].get("num_group", 1)) == 1:
            readers.append((0, nodes[node["inputs"][1][0]]["name"]))
            continue
        if node["op"] != "slice_axis" or int(node["attrs"].get("axis", 0)) != 1 or int(node["attrs"]["begin"]) < 0:
            return None
        for cc in consumers.get(c, []):
            conv = nodes[cc]
            if conv["op"] != "Convolution" or conv["inputs"][0][0] != c or int(conv["attrs"].get("num_group", 1)) != 1:
                return None
            readers.append((int(node["attrs"]["begin"]), nodes[conv["inputs"][1][0]]["name"]))
    return readers or None


def _layer_names(sym):
    return [node["name"] for node in json.loads(sym.tojson())["nodes"] if node["op"] != "null"]


def int8_block(qsym, qargs, qaux):
    """Runnable block of a quantized graph."""
    return symbol_block(qsym, qargs, qaux, backend=None)


def export_int8(net, prefix, calib_images, probe, min_cosine=INT8_MIN_COSINE, calib_mode="naive", accuracy=None):
    """Quantize (:func:`quantize_int8`), check every probe image's embedding keeps cosine ≥ ``min_cosine`` with
    the source, then write ``prefix-symbol.json`` + ``-0000.params``. ``accuracy(block)``, if given, measures the
    quantized block before it is written (its result goes into the returned figures as ``accuracy``)."""
    qsym, qargs, qaux = quantize_int8(net, calib_images, calib_mode=calib_mode)
    block = int8_block(qsym, qargs, qaux)
    stats = compare(net(mx.nd.array(probe)).asnumpy(), run_block(block, probe))
    if not stats["min_cosine"] >= min_cosine:
        raise ExportMismatch(f"the INT8 model does not reproduce the source network: min cosine similarity "
                             f"{stats['min_cosine']:.4f} < {min_cosine} (mean {stats['mean_cosine']:.4f}); not written. "
                             f"INT8 needs trained weights; calibrate on training records (--calib-data train.rec) "
                             f"with more images (--calib-images, {len(calib_images)} now) or try --calib-mode "
                             f"{'entropy' if calib_mode == 'naive' else 'naive'}")
    result = dict(stats, calib_images=len(calib_images), calib_mode=calib_mode)
    if accuracy is not None:
        result["accuracy"] = accuracy(block)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    mx.model.save_checkpoint(prefix, 0, qsym, qargs, qaux)
    return result
