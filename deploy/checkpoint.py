"""Embedding checkpoints: MXNet's ``prefix-symbol.json`` + ``prefix-%04d.params`` pair, written atomically and read
back, either as the saved graph (:func:`load_model`) or as the registered network it holds (:func:`load_source`).

Checkpoints are written in InsightFace's convention: input ``data`` (N, 3, 112, 112) raw RGB 0–255, normalised
inside the graph, and the embedding output named ``fc1`` (``sym.get_internals()['fc1_output']``). Reading accepts
that convention from any network (InsightFace's own checkpoints included, whole training symbols too) and this
repository's checkpoints written before it (input normalised outside the graph), telling which it found.
``--model`` arguments everywhere are resolved here (:func:`resolve_checkpoint`): ``PREFIX,EPOCH``, a folder
holding one ``*-symbol.json`` with its ``-NNNN.params`` (the highest epoch), or an ``.onnx`` file.
"""
import glob
import json
import os
import re
import tempfile
import warnings

import mxnet as mx
import numpy as np

import symbols
from symbols.common import INPUT_MEAN, INPUT_SCALE

from .devices import as_ctx_list

IMAGE_SIZE = 112
EMBEDDING = "fc1"  # the embedding layer's name in InsightFace's convention


# ---------------------------------------------------------------------------------------------- atomic files
def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_path(path):
    """A new temporary file beside ``path`` (to be renamed onto it), with the permissions a plain ``open`` would
    give (``mkstemp`` makes it readable by its owner only)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return tmp


def atomic_write(path, write):
    """Call ``write(f)`` on a temporary file beside ``path``, fsync, then ``os.replace`` it onto ``path``.

    A failure or a kill at any moment leaves ``path`` as it was (the temporary file is removed on errors).
    """
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_save_ndarrays(path, arrays):
    """``mx.nd.save(path, arrays)`` through a temporary file and ``os.replace``."""
    tmp = temporary_path(path)
    try:
        mx.nd.save(tmp, arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---------------------------------------------------------------------------------------------- writing
def save_embedding(net, prefix, epoch, ctx=None):
    """Write ``prefix-symbol.json`` and ``prefix-%04d.params`` of an embedding network (no fc7), atomically, in
    InsightFace's convention: the symbol traced from ``net`` (which normalises its own input; trace a standard
    network, without training-only operators) with its output named ``fc1``, parameters taken from ``ctx``.
    Returns ``(symbol_path, params_path)``.
    """
    sym = mx.sym.identity(net(mx.sym.var("data")), name=EMBEDDING)
    arg_names, aux_names = set(sym.list_arguments()), set(sym.list_auxiliary_states())
    arrays = {}
    for name, param in net.collect_params().items():
        if name in arg_names:
            arrays["arg:" + name] = param.data(ctx).copyto(mx.cpu())
        elif name in aux_names:
            arrays["aux:" + name] = param.data(ctx).copyto(mx.cpu())
    missing = (arg_names - {"data"}) - {k[4:] for k in arrays if k.startswith("arg:")}
    if missing:
        raise RuntimeError(f"export: parameters {sorted(missing)[:3]} of the symbol are not in the network")
    sym_path, params_path = f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params"
    atomic_write_bytes(sym_path, sym.tojson().encode())
    atomic_save_ndarrays(params_path, arrays)
    return sym_path, params_path


# ---------------------------------------------------------------------------------------------- resolving
def _epoch_of(params_path, prefix):
    match = re.fullmatch(re.escape(prefix) + r"-(\d+)\.params", params_path)
    return int(match.group(1)) if match else None


def resolve_checkpoint(spec):
    """``'PREFIX,EPOCH'`` or a model folder → ``(symbol_file, params_file)``; errors say what was expected."""
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        found = sorted(glob.glob(os.path.join(spec, "*-symbol.json")))
        if len(found) != 1:
            names = ", ".join(os.path.basename(s) for s in found) or "none"
            raise ValueError(f"{spec}: a model folder must hold exactly one *-symbol.json (found: {names}); "
                             "pass PREFIX,EPOCH instead")
        prefix = found[0][:-len("-symbol.json")]
        epochs = sorted(e for e in (_epoch_of(p, prefix) for p in glob.glob(prefix + "-*.params")) if e is not None)
        if not epochs:
            raise ValueError(f"{spec}: no {os.path.basename(prefix)}-NNNN.params next to {os.path.basename(found[0])}")
        return found[0], f"{prefix}-{epochs[-1]:04d}.params"
    if "," not in spec:
        raise ValueError(f"--model {spec!r}: expected PREFIX,EPOCH (e.g. outputs/seesaw_shuffle/model,3), a model "
                         "folder, or an .onnx file")
    prefix, epoch_text = spec.rsplit(",", 1)
    try:
        epoch = int(epoch_text)
    except ValueError:
        raise ValueError(f"--model {spec!r}: epoch {epoch_text!r} is not an integer") from None
    paths = (f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params")
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: checkpoint file not found (--model {spec})")
    return paths


def check_embedding_output(out, batch, source):
    """Raise ValueError unless ``out`` is an (N, D) embedding batch with D > 1."""
    shape = tuple(out.shape)
    if len(shape) != 2 or shape[0] != batch or shape[1] < 2:
        raise ValueError(f"{source}: output has shape {shape} for a batch of {batch} images; expected an "
                         "embedding (N, D) with D > 1 (is this an embedding-only model?)")


# ---------------------------------------------------------------------------------------------- reading
FIRST_NORMALIZING_OPS = ("_minus_scalar", "_plus_scalar", "_mul_scalar", "_div_scalar", "BatchNorm")
PASS_THROUGH_OPS = ("identity", "_copy")


def normalises_input(symbol):
    """Whether the graph's first operator on ``data`` (after identities) normalises it, as InsightFace's networks
    and this repository's do: scalar arithmetic (``data - 127.5``, ``* 0.0078125``) or a BatchNorm."""
    nodes = json.loads(symbol.tojson())["nodes"]
    frontier = {i for i, node in enumerate(nodes) if node["op"] == "null" and node["name"] == "data"}
    while frontier:
        readers = [i for i, node in enumerate(nodes) if any(src in frontier for src, _, _ in node["inputs"])]
        if not readers:
            return False
        if any(nodes[i]["op"] in FIRST_NORMALIZING_OPS for i in readers):
            return True
        frontier = {i for i in readers if nodes[i]["op"] in PASS_THROUGH_OPS}
    return False


def embedding_output(symbol):
    """The embedding of a saved graph: ``fc1_output`` when the graph has it (InsightFace's convention, whole
    training symbols included), else the graph's only output."""
    internals = symbol.get_internals()
    if f"{EMBEDDING}_output" in internals.list_outputs():
        return internals[f"{EMBEDDING}_output"]
    if len(symbol.list_outputs()) != 1:
        raise ValueError(f"the symbol has outputs {symbol.list_outputs()} and no {EMBEDDING}_output; an embedding "
                         "model has one output (or names its embedding layer fc1)")
    return symbol


def _normalized_input():
    with mx.name.NameManager():
        return (mx.sym.var("data") - INPUT_MEAN) * INPUT_SCALE


def read_symbol(symbol_file, param_names=()):
    """``(embedding symbol taking raw RGB 0–255 input, convention)`` of a saved graph.

    ``convention`` says what was found: ``insightface`` (the graph normalises its input; fc1 output or a single
    one), ``seesawface-legacy`` (a network of this repository saved before its graphs normalised their input:
    the normalisation is put in front of it here), or ``unknown`` (no normalisation found in a foreign graph;
    fed raw RGB 0–255, as InsightFace's tools do).
    """
    try:
        symbol = mx.sym.load(symbol_file)
    except mx.base.MXNetError as err:
        raise ValueError(f"{symbol_file}: not an MXNet symbol file ({str(err).splitlines()[0]})") from None
    if "data" not in symbol.list_inputs():
        raise ValueError(f"{symbol_file}: the network input must be a variable named 'data'")
    try:
        embedding = embedding_output(symbol)
    except ValueError as err:
        raise ValueError(f"{symbol_file}: {err}") from None
    if normalises_input(embedding):
        return embedding, "insightface"
    try:
        infer_network(param_names)
    except ValueError:
        return embedding, "unknown"
    return embedding(data=_normalized_input()), "seesawface-legacy"


CONVENTIONS = {
    "insightface": "InsightFace's convention: raw RGB 0-255 input normalised in the graph, embedding fc1",
    "seesawface-legacy": "saved before this repository's graphs normalised their input: (x-127.5)/128 is applied "
                         "in front of it",
    "unknown": "no input normalisation in the graph: fed raw RGB 0-255, as InsightFace's tools do",
}


def load_model(spec, ctx=None):
    """The saved graph of ``spec`` as a runnable model taking raw RGB 0–255 images: a ``SymbolBlock`` on ``ctx``
    (Context or list) or, for an ``.onnx`` file, a :class:`deploy.onnx_runtime.OnnxEmbedder` (CPU). The block's
    ``convention`` attribute is what :func:`read_symbol` found.

    The model is probed with one zero image; an output that is not ``(N, D)``, D > 1, raises ValueError.
    """
    ctxs = as_ctx_list(ctx)
    probe = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    spec = os.fspath(spec)
    if spec.lower().endswith(".onnx"):
        from .onnx_runtime import OnnxEmbedder

        if not os.path.isfile(spec):
            raise FileNotFoundError(f"{spec}: ONNX file not found")
        net = OnnxEmbedder(spec)
        check_embedding_output(net(probe), 1, spec)
        return net
    symbol_file, params_file = resolve_checkpoint(spec)
    try:
        params = mx.nd.load(params_file)
    except mx.base.MXNetError as err:
        raise ValueError(f"{params_file}: not an MXNet parameter file ({str(err).splitlines()[0]})") from None
    symbol, convention = read_symbol(symbol_file, list(params) if isinstance(params, dict) else [])
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Cannot decide type")
            net = mx.gluon.SymbolBlock(symbol, [mx.sym.var("data")])
        net.collect_params().load(params_file, ctxs, ignore_extra=True, cast_dtype=True, dtype_source="saved")
    except (mx.base.MXNetError, AssertionError, ValueError) as err:
        raise ValueError(f"{params_file}: cannot load parameters for {os.path.basename(symbol_file)} "
                         f"({str(err).splitlines()[0]})") from None
    check_embedding_output(net(mx.nd.array(probe, ctx=ctxs[0])), 1, symbol_file)
    net.convention = convention
    return net


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


def load_source(spec, network=None, act=None):
    """Rebuild the registered Gluon network of a checkpoint with its weights (CPU, inference mode).

    Returns ``(net, info)``: ``net`` a ``symbols.get_model`` block, ``info`` its ``network``, ``kwargs``,
    ``emb_size``, ``symbol_file`` and ``params_file``. ``network``/``act`` override what the parameter names say.
    """
    symbol_file, params_file = resolve_checkpoint(spec)
    try:
        loaded = mx.nd.load(params_file)
    except mx.base.MXNetError as err:
        raise ValueError(f"{params_file}: not an MXNet parameter file ({str(err).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ValueError(f"{params_file}: holds no named parameters; not a checkpoint of a network of this "
                         "repository")
    params = {re.sub(r"^(arg|aux):", "", k): v for k, v in loaded.items()}
    name, kwargs = infer_network(params) if network is None else (network, {})
    if act is not None:
        kwargs["act"] = act
    bn = [k for k in params if k.endswith("head_bn_gamma")]
    if not bn:
        raise ValueError(f"{params_file}: no embedding BatchNorm (…head_bn_gamma) found; is this an "
                         "embedding network checkpoint?")
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
