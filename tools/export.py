"""Export a trained embedding network to deployment artefacts (SPEC §7), each verified before it is written.

    python tools/export.py --model output/model,15 --output export/seesaw_shuffle
    python tools/export.py --model out/seesaw,0 --output export/s --formats deploy,onnx --layout cells
    python tools/export.py --model output/model,15 --output export/s --formats int8 \
        --calib-data .cache/synthetic/train.rec --verify-data .cache/synthetic

``--model``: ``PREFIX,EPOCH`` (a training checkpoint or a converted official one) or a directory holding one
``*-symbol.json`` with its ``-NNNN.params``. The network (and MobileFaceNet's activation) is recognised from
the parameter names; ``--network``/``--act`` override. Writes into ``--output``:

- ``symbol``: ``model-symbol.json`` + ``model-0000.params``, the embedding network as trained;
- ``deploy``: ``deploy/deploy-symbol.json`` + ``-0000.params``, the inference graph of
  :mod:`symbols.deploy` (BatchNorm folded into the convolutions, channel shuffle folded into the weights);
- ``onnx``: ``model.onnx`` (opset 13, dynamic batch), the same graph, checked with ONNX Runtime;
- ``int8``: ``int8/int8-symbol.json`` + ``-0000.params``, oneDNN INT8 quantization calibrated on
  ``--calib-data`` (a ``.rec`` or ``.bin``), with the verification accuracy before and after on the
  ``--verify-data`` sets;
- ``export.json``: what was written and every measured difference.

Every artefact is run against the source network on the same images before it is written; an export whose
embeddings differ by more than ``--tolerance`` (fp32) or whose per-image cosine similarity falls below
``--int8-min-cosine`` is refused with the measured figures and nothing of it is written.
"""
import argparse
import glob
import json
import os
import re
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools._cli import use_all_cores  # noqa: E402

use_all_cores()

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

import symbols  # noqa: E402
from symbols.deploy import LAYOUTS, build_deploy_graph  # noqa: E402

FORMATS = ("symbol", "deploy", "onnx", "int8")
TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.99
INT8_MAX_ACCURACY_DROP = 0.5  # points
PROBE_IMAGES = 16
# The folded-graph layout exported by default: the fastest at batch 1 (measured with ONNX Runtime on 2 cores,
# seesaw_shuffle: dense 3.3 ms, slice 3.7, cells 5.0). At batch 32 ``cells`` (the paper's MAdds) is fastest.
DEFAULT_LAYOUT = {"shuffle": "dense", "share": "dense", None: "cells"}


class ExportMismatch(ValueError):
    """An artefact does not reproduce the source network; the message holds the measured difference."""


# ---------------------------------------------------------------------------------------------- source
def infer_network(param_names):
    """``(name, kwargs)`` of the registered network whose parameter names these are.

    The registry name is the longest one that prefixes the names; MobileFaceNet's activation is PReLU when
    its convolution blocks have PReLU slopes (``..._act_alpha`` outside the SE blocks), swish otherwise.
    """
    names = [re.sub(r"^(arg|aux):", "", n) for n in param_names]
    candidates = [m for m in symbols.list_models() if names and all(n.startswith(m + "_") for n in names)]
    if not candidates:
        raise ValueError("cannot tell which network these parameters belong to (names start with "
                         f"{names[0] if names else 'nothing'!r}); pass --network, one of "
                         f"{', '.join(symbols.list_models())}")
    name = max(candidates, key=len)
    kwargs = {}
    if name == "mobilefacenet":
        kwargs["act"] = "prelu" if any(n.endswith("_act_alpha") for n in names) else "swish"
    return name, kwargs


def resolve_checkpoint(spec):
    """``'PREFIX,EPOCH'`` or an exported directory → ``(symbol_file, params_file)``."""
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        found = sorted(glob.glob(os.path.join(spec, "*-symbol.json")))
        if len(found) != 1:
            raise ValueError(f"{spec}: expected exactly one *-symbol.json in the directory, found {len(found)}; "
                             "pass PREFIX,EPOCH instead")
        prefix = found[0][:-len("-symbol.json")]
        params = sorted(glob.glob(prefix + "-[0-9][0-9][0-9][0-9].params"))
        if not params:
            raise ValueError(f"{spec}: no {os.path.basename(prefix)}-NNNN.params next to {found[0]}")
        return found[0], params[-1]
    if "," not in spec:
        raise ValueError(f"--model {spec!r}: expected PREFIX,EPOCH (e.g. output/model,15) or a model directory")
    prefix, epoch = spec.rsplit(",", 1)
    try:
        epoch = int(epoch)
    except ValueError:
        raise ValueError(f"--model {spec!r}: epoch {epoch!r} is not an integer") from None
    paths = (f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params")
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: checkpoint file not found (--model {spec})")
    return paths


def load_source(spec, network=None, act=None):
    """Rebuild the Gluon network of a checkpoint with its weights.

    Returns ``(net, info)``; ``net`` is a ``symbols.get_model`` block in inference mode, ``info`` holds
    ``network``, ``kwargs``, ``emb_size``, ``symbol_file``, ``params_file``.
    """
    symbol_file, params_file = resolve_checkpoint(spec)
    try:
        loaded = mx.nd.load(params_file)
    except mx.base.MXNetError as err:
        raise ValueError(f"{params_file}: not an MXNet parameter file ({str(err).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ValueError(f"{params_file}: holds no named parameters; not a checkpoint of a network of this "
                         "repository (SPEC §7)")
    params = {re.sub(r"^(arg|aux):", "", k): v for k, v in loaded.items()}
    name, kwargs = infer_network(params) if network is None else (network, {})
    if act is not None:
        kwargs["act"] = act
    bn = [k for k in params if k.endswith("head_bn_gamma")]
    if not bn:
        raise ValueError(f"{params_file}: no embedding BatchNorm (…head_bn_gamma) found; is this an "
                         "embedding network checkpoint (SPEC §7)?")
    emb_size = int(params[bn[0]].shape[0])
    net = symbols.get_model(name, emb_size=emb_size, **kwargs)
    own = net.collect_params()
    strip = {k[len(name) + 1:]: k for k in params if k.startswith(name + "_")}
    missing = [k for k in own if k[len(net.prefix):] not in strip]
    if missing:
        raise ValueError(f"{params_file}: {len(missing)} parameters of {name} are missing, e.g. {missing[0]} "
                         "(wrong --network/--act?)")
    for k, p in own.items():
        value = params[strip[k[len(net.prefix):]]]
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(f"{params_file}: {k} has shape {value.shape}, {name} needs {p.shape}")
        p.initialize(ctx=mx.cpu(), force_reinit=True)
        p.set_data(value)
    info = dict(network=name, kwargs=kwargs, emb_size=emb_size, symbol_file=symbol_file, params_file=params_file)
    return net, info


# ---------------------------------------------------------------------------------------------- data
def load_images(path, count, seed=0):
    """Up to ``count`` normalised face images (N, 3, 112, 112) from a ``.bin`` set or a ``.rec`` file."""
    import datasets

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


def compare_embeddings(reference, candidate):
    """``{'max_abs_diff', 'min_cosine', 'mean_cosine'}`` between two (N, D) embedding arrays."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise ExportMismatch(f"output shape {candidate.shape} differs from the source's {reference.shape}")
    cos = (reference * candidate).sum(1) / np.maximum(
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1), 1e-12)
    return {"max_abs_diff": float(np.abs(reference - candidate).max()), "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean())}


def _check_fp32(what, stats, tolerance):
    if not np.isfinite(stats["max_abs_diff"]) or stats["max_abs_diff"] > tolerance:
        raise ExportMismatch(f"{what} does not reproduce the source network: max abs difference "
                             f"{stats['max_abs_diff']:.3g} > {tolerance:g} (min cosine {stats['min_cosine']:.6f}); "
                             "not written")


# ---------------------------------------------------------------------------------------------- runners
def symbol_block(sym, arg_params, aux_params, backend="MKLDNN"):
    """A hybridized ``SymbolBlock`` over ``sym`` (input ``data``) with the given parameters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = mx.gluon.SymbolBlock(sym, [mx.sym.var("data")])
    for name, param in block.collect_params().items():
        value = arg_params[name] if name in arg_params else aux_params[name]
        param._load_init(value, mx.cpu())
    kwargs = {"static_alloc": True, "static_shape": True}
    if backend:
        kwargs["backend"] = backend
    block.hybridize(**kwargs)
    return block


def run_block(block, images, batch_size=32):
    """Embeddings (N, D) of normalised ``images`` through a Gluon block, in batches."""
    outs = [block(mx.nd.array(images[i:i + batch_size])).asnumpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(outs)


def onnx_session(model_or_path, threads=None):
    """An ONNX Runtime CPU session (all graph optimisations) for a ModelProto, bytes or path."""
    import onnxruntime as ort

    from eval.verification import onnx_session_options

    options = onnx_session_options(threads)
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else model_or_path
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def traced_symbol(net):
    """``(symbol, arg_params, aux_params)`` of the network as trained (BatchNorm kept), input ``data``."""
    sym = net(mx.sym.var("data"))
    params = {k: p.data() for k, p in net.collect_params().items()}
    aux_names = set(sym.list_auxiliary_states())
    return (sym, {k: v for k, v in params.items() if k not in aux_names},
            {k: v for k, v in params.items() if k in aux_names})


def default_layout(net):
    """The folded-graph layout used when none is given (see ``DEFAULT_LAYOUT``)."""
    from symbols.seesaw import SeesawBlock

    block = net.stages[0][0]
    return DEFAULT_LAYOUT[block.variant if isinstance(block, SeesawBlock) else None]


# ---------------------------------------------------------------------------------------------- exports
def export_symbol(net, prefix, probe, tolerance=TOLERANCE):
    """Write ``prefix-symbol.json`` + ``prefix-0000.params`` (embedding only) after checking a re-import
    reproduces ``net`` on ``probe``. Returns the comparison figures."""
    sym, args, aux = traced_symbol(net)
    reference = net(mx.nd.array(probe)).asnumpy()
    block = symbol_block(sym, {k: v.copy() for k, v in args.items()}, aux, backend=None)
    stats = compare_embeddings(reference, run_block(block, probe))
    _check_fp32("the exported symbol", stats, tolerance)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    mx.model.save_checkpoint(prefix, 0, sym, args, aux)
    return stats


def export_deploy(net, prefix, probe, layout=None, tolerance=TOLERANCE):
    """Write the folded inference graph (``symbols.deploy``) as ``prefix-symbol.json`` + ``-0000.params``,
    after checking it reproduces ``net`` (run with the oneDNN backend). Returns figures and op counts."""
    layout = layout or default_layout(net)
    graph = build_deploy_graph(net, layout)
    sym, args, aux = graph.to_symbol()
    reference = net(mx.nd.array(probe)).asnumpy()
    stats = compare_embeddings(reference, run_block(symbol_block(sym, args, aux), probe))
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
    stats = compare_embeddings(reference, outputs)
    _check_fp32("the ONNX model", stats, tolerance)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return dict(stats, layout=layout)


# Layers kept in fp32 by the INT8 export (name suffixes in the traced symbol). Measured on trained
# seesaw_shuffle checkpoints: quantizing the first convolution (3 input channels) or the GDC head (1×1 conv,
# 7×7 depthwise, linear) costs most of the cosine similarity lost to INT8, and the SE block's two 1×1
# convolutions on pooled (N, E, 1, 1) vectors gain no speed from INT8 (they only add quantize/dequantize
# pairs); together they are < 6% of the multiply-adds.
INT8_KEEP_FP32 = ("stem_conv_conv_fwd", "_se_fc1_fwd", "_se_fc2_fwd", "head_conv_sep_conv_fwd",
                  "head_conv_dw_conv_fwd", "head_linear_fwd")
# Operators never quantized: the swish product (x · sigmoid(x)) in INT8 needs its sigmoid re-quantized, which
# is slower and less exact than multiplying the dequantized values (seesaw_share: +5% throughput).
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qsym, qargs, qaux = quantization.quantize_model_mkldnn(
            sym, args, aux, ctx=mx.cpu(), excluded_sym_names=excluded, excluded_op_names=list(keep_fp32_ops),
            calib_mode=calib_mode, calib_data=calib, num_calib_examples=len(calib_images),
            quantized_dtype="int8", quantize_mode="smart", quantize_granularity=granularity, logger=None)
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


def export_int8(net, prefix, calib_images, probe, verify_sets=None, min_cosine=INT8_MIN_COSINE, calib_mode="naive"):
    """Quantize (``quantize_int8``), check every probe image's embedding keeps cosine ≥ ``min_cosine`` with
    the source, measure verification accuracy before/after on ``verify_sets`` ({name: (images, issame)}),
    then write ``prefix-symbol.json`` + ``-0000.params``. Returns the figures."""
    qsym, qargs, qaux = quantize_int8(net, calib_images, calib_mode=calib_mode)
    block = int8_block(qsym, qargs, qaux)
    stats = compare_embeddings(net(mx.nd.array(probe)).asnumpy(), run_block(block, probe))
    if not stats["min_cosine"] >= min_cosine:
        raise ExportMismatch(f"the INT8 model does not reproduce the source network: min cosine similarity "
                             f"{stats['min_cosine']:.4f} < {min_cosine} (mean {stats['mean_cosine']:.4f}); not written. "
                             f"INT8 needs trained weights; calibrate on training records (--calib-data train.rec) "
                             f"with more images (--calib-images, {len(calib_images)} now) or try --calib-mode "
                             f"{'entropy' if calib_mode == 'naive' else 'naive'}")
    result = dict(stats, calib_images=len(calib_images), calib_mode=calib_mode)
    if verify_sets:
        from eval.verification import verify_sets as run_sets

        before = run_sets(net, verify_sets)
        after = run_sets(block, verify_sets)
        result["accuracy"] = {name: {"fp32": 100 * before[name]["accuracy"], "int8": 100 * after[name]["accuracy"]}
                              for name in verify_sets}
        for name, acc in result["accuracy"].items():
            acc["drop"] = acc["fp32"] - acc["int8"]
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    mx.model.save_checkpoint(prefix, 0, qsym, qargs, qaux)
    return result


# ---------------------------------------------------------------------------------------------- CLI
def build_parser():
    parser = argparse.ArgumentParser(description="Export an embedding network: symbol/params, folded deploy "
                                                 "graph, ONNX, INT8 (SPEC §7); every export verified.")
    parser.add_argument("--model", required=True, help="PREFIX,EPOCH checkpoint or a model directory")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--formats", default="symbol,deploy,onnx",
                        help=f"comma-separated, from {','.join(FORMATS)} (int8 needs --calib-data)")
    parser.add_argument("--network", choices=symbols.list_models(), help="override the recognised network")
    parser.add_argument("--act", choices=("prelu", "swish"), help="MobileFaceNet's activation (override)")
    parser.add_argument("--layout", choices=LAYOUTS, help="folded-graph layout of the Seesaw blocks "
                        "(default: dense, fewest operators, fastest at batch 1; cells: the paper's "
                        "multiply-adds, fastest for batches)")
    parser.add_argument("--calib-data", help="a .rec or .bin file: INT8 calibration images (and probe images)")
    parser.add_argument("--calib-images", type=int, default=256, help="how many calibration images")
    parser.add_argument("--calib-mode", default="naive", choices=CALIB_MODES,
                        help="naive: each tensor's min/max on the calibration images; entropy: MXNet's "
                             "KL-divergence thresholds")
    parser.add_argument("--verify-data", help="a folder of .bin sets (or one .bin): INT8 accuracy before/after")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="max abs embedding difference (fp32)")
    parser.add_argument("--int8-min-cosine", type=float, default=INT8_MIN_COSINE)
    return parser


def _load_verify_sets(path):
    import datasets

    if os.path.isdir(path):
        bins = datasets.find_bins(path)
        if not bins:
            raise ValueError(f"{path}: no .bin verification sets in this folder")
    elif path.endswith(".bin"):
        bins = {os.path.basename(path)[:-4]: path}
    else:
        raise ValueError(f"--verify-data {path}: expected a folder of .bin sets or a .bin file")
    return {name: datasets.load_bin(p) for name, p in bins.items()}


def main(argv=None):
    args = build_parser().parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--formats {args.formats!r}: valid formats are {', '.join(FORMATS)}")
    if "int8" in formats and not args.calib_data:
        raise ValueError("--formats int8 needs --calib-data (a .rec of training records or a .bin set)")
    net, info = load_source(args.model, args.network, args.act)
    print(f"source: {info['network']} {info['kwargs'] or ''} emb {info['emb_size']} from {info['params_file']}")
    calib = probe = None
    if args.calib_data:
        # The probe images that every export is checked on are kept out of the INT8 calibration.
        images = load_images(args.calib_data, args.calib_images + PROBE_IMAGES)
        if len(images) < 2 * PROBE_IMAGES:
            raise ValueError(f"{args.calib_data}: only {len(images)} images; need at least {2 * PROBE_IMAGES}")
        calib, probe = images[:-PROBE_IMAGES], images[-PROBE_IMAGES:]
    probe = probe_batch(images=probe)
    report = {"source": dict(info), "probe_images": len(probe),
              "probe": f"images of {args.calib_data} not used for calibration" if calib is not None
              else "random normal inputs", "exports": {}}
    os.makedirs(args.output, exist_ok=True)
    out = args.output
    steps = {
        "symbol": lambda: export_symbol(net, os.path.join(out, "model"), probe, args.tolerance),
        "deploy": lambda: export_deploy(net, os.path.join(out, "deploy", "deploy"), probe, args.layout,
                                        args.tolerance),
        "onnx": lambda: export_onnx(net, os.path.join(out, "model.onnx"), probe, args.layout, args.tolerance),
        "int8": lambda: export_int8(net, os.path.join(out, "int8", "int8"), calib, probe,
                                    _load_verify_sets(args.verify_data) if args.verify_data else None,
                                    args.int8_min_cosine, args.calib_mode),
    }
    for fmt in formats:
        start = time.time()
        result = steps[fmt]()
        report["exports"][fmt] = result
        line = f"{fmt:7s} ok in {time.time() - start:5.1f}s: max abs diff {result['max_abs_diff']:.2e}, " \
               f"cosine min {result['min_cosine']:.6f} mean {result['mean_cosine']:.6f}"
        if "layout" in result:
            line += f", layout {result['layout']}"
        print(line)
        for name, acc in result.get("accuracy", {}).items():
            flag = "" if acc["drop"] <= INT8_MAX_ACCURACY_DROP else f"  (drop > {INT8_MAX_ACCURACY_DROP} points!)"
            print(f"        {name}: fp32 {acc['fp32']:.2f}%  int8 {acc['int8']:.2f}%  drop {acc['drop']:+.2f}{flag}")
    with open(os.path.join(out, "export.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"written to {out} (export.json holds the figures)")
    return 0


if __name__ == "__main__":
    from tools._cli import run_cli

    run_cli(main)
