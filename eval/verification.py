"""Face verification on pair sets (SPEC §6): embedding extraction, metrics, and the command line.

Library use (the training callback and the command line share these functions)::

    sets = load_sets(data_dir, ['lfw', 'cfp_fp'])            # {name: (images uint8 NHWC, issame)}
    results = verify_sets(net, sets, ctx=[mx.cpu()])         # {name: evaluate(...) dict + images_per_sec}
    fast = OnnxEmbedder.from_network(net, threads=2)         # same embeddings via ONNX Runtime (folded graph)
    results = verify_sets(fast, sets)

Command line::

    python eval/verification.py --model PREFIX,EPOCH --data-dir DIR --target lfw,cfp_fp,agedb_30 \
        [--gpus 0,1] [--batch-size 64] [--no-flip] [--out results.json] [--roc roc.png]

``--model`` also takes an exported model directory (one ``*-symbol.json`` and its params) or an
``.onnx`` file.
"""
import glob
import json
import os
import re
import sys
import time
import warnings

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tools._cli import use_all_cores

    use_all_cores()

import numpy as np

from eval.metrics import check_pairs, evaluate, pair_distances  # noqa: F401  (re-exported API)

IMAGE_SIZE = 112
DEFAULT_FAR_TARGETS = (1e-3, 1e-4)


# ---------------------------------------------------------------------------------------------
# devices and networks


def _mx():
    import mxnet as mx
    return mx


def as_ctx_list(ctx=None):
    """``None`` -> ``[mx.cpu()]``; a single Context -> ``[ctx]``; a list stays a list."""
    mx = _mx()
    if ctx is None:
        return [mx.cpu()]
    if isinstance(ctx, mx.Context):
        return [ctx]
    ctx = list(ctx)
    if not ctx:
        return [mx.cpu()]
    return ctx


def parse_gpus(text):
    """``''`` -> ``[mx.cpu()]``; ``'0,1'`` -> ``[mx.gpu(0), mx.gpu(1)]`` (checked against the GPU count)."""
    mx = _mx()
    text = (text or "").strip()
    if not text:
        return [mx.cpu()]
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--gpus expects comma-separated GPU ids such as '0,1', got {text!r}") from None
    available = mx.context.num_gpus()
    missing = [i for i in ids if i < 0 or i >= available]
    if missing:
        raise ValueError(f"GPU id(s) {missing} requested but {available} GPU(s) are visible; "
                         "omit --gpus to run on the CPU")
    return [mx.gpu(i) for i in ids]


def _mkldnn_available():
    try:
        return bool(_mx().runtime.Features().is_enabled("MKLDNN"))
    except RuntimeError:
        return False


def prepare_for_inference(net, ctx=None, fuse=True):
    """Hybridize ``net`` for fast repeated inference and return it.

    ``static_alloc``/``static_shape`` everywhere; on CPU-only contexts also ``backend='MKLDNN'``
    (oneDNN operator fusion, several times faster) when ``fuse`` and MXNet has oneDNN. The fused graph
    is for inference only: do not train a network after this (hand the training callback the plain
    network). Works for ``gluon.SymbolBlock``; an ONNX model is returned unchanged.
    """
    if isinstance(net, OnnxEmbedder):
        return net
    ctxs = as_ctx_list(ctx)
    kwargs = {"static_alloc": True, "static_shape": True}
    if fuse and all(c.device_type == "cpu" for c in ctxs) and _mkldnn_available():
        kwargs["backend"] = "MKLDNN"
    net.hybridize(**kwargs)
    return net


_SHARED_ONNX_THREADS = None  # intra-op threads of the process-wide ONNX Runtime pool, once share_onnx_threads ran


def share_onnx_threads(threads=None):
    """Make every ONNX Runtime session this process creates from now on run on one process-wide thread pool
    (``threads`` intra-op threads; None: one per core). For timing several sessions in turn: with a pool
    per session, the idle threads of the session that ran last keep spinning on the cores while the next
    one runs (on 2 cores this doubled batch-1 latencies of interleaved sessions). Irreversible for the
    process; sessions must then be created with :func:`onnx_session_options` (ONNX Runtime refuses a
    per-session pool once the shared one exists)."""
    global _SHARED_ONNX_THREADS
    if _SHARED_ONNX_THREADS is None:
        from onnxruntime.capi import _pybind_state

        _SHARED_ONNX_THREADS = int(threads or 0)
        _pybind_state.set_global_thread_pool_sizes(_SHARED_ONNX_THREADS, 1)
    return _SHARED_ONNX_THREADS


def onnx_session_options(threads=None, spinning=True):
    """``onnxruntime.SessionOptions`` with every graph optimisation, ``threads`` intra-op threads (sequential
    execution, one inter-op thread; None: ONNX Runtime's default) and busy-waiting idle threads unless
    ``spinning=False``. After :func:`share_onnx_threads` the session uses the shared pool instead."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if _SHARED_ONNX_THREADS is not None:
        options.use_per_session_threads = False
        return options
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxEmbedder:
    """An ONNX embedding model behind the call interface of a Gluon block.

    ``model``: an ``.onnx`` path, serialized ONNX bytes or an ``onnx.ModelProto``. ``threads``: ONNX
    Runtime intra-op threads (sequential execution, one inter-op thread); None leaves ONNX Runtime's
    defaults. ``spinning=False`` makes idle intra-op threads sleep instead of busy-waiting: ~5% slower on a
    quiet machine, about twice as fast when another process competes for the cores (measured, 2 cores).
    ``name`` labels error messages (default: the path, or "in-memory ONNX model").
    ``embedder(x)`` with ``x`` float32 ``(N, 3, 112, 112)`` (numpy or NDArray) returns numpy ``(N, D)``.
    A model exported with a fixed batch size is run in chunks of that size (the last one padded).
    """

    def __init__(self, model, threads=None, name=None, spinning=True):
        try:
            import onnxruntime
        except ImportError as err:
            raise RuntimeError(f"running an ONNX model needs onnxruntime ({err}); pip install onnxruntime") from None
        if isinstance(model, (str, os.PathLike)):
            model = os.fspath(model)
            self.path = name or model
        else:
            self.path = name or "in-memory ONNX model"
            if hasattr(model, "SerializeToString"):
                model = model.SerializeToString()
        options = onnx_session_options(threads, spinning)
        try:
            self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: cannot load ONNX model: {err}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{self.path}: expected one 4-D image input (N, 3, 112, 112), got "
                             f"{[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        batch = inputs[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    @classmethod
    def from_network(cls, net, threads=None, layout="cells", spinning=True):
        """Embedder over the current parameters of a ``symbols.get_model`` network (see
        :func:`network_to_onnx`); ``threads`` and ``spinning`` as for the constructor.

        Sets on the embedder: ``lower_seconds`` (lowering and ONNX conversion), ``session_seconds`` (ONNX
        Runtime session creation) and ``graph_signature`` (the operator types in order: it changes when the
        lowering emits a different graph, e.g. another layout, and not when only weights change).
        """
        begin = time.perf_counter()
        model = network_to_onnx(net, layout)
        signature = tuple(node.op_type for node in model.graph.node)
        model = model.SerializeToString()
        lowered = time.perf_counter()
        embedder = cls(model, threads=threads, name=f"{getattr(net, 'name', 'network')} (folded deploy graph)",
                       spinning=spinning)
        embedder.lower_seconds = lowered - begin
        embedder.session_seconds = time.perf_counter() - lowered
        embedder.graph_signature = signature
        return embedder

    def __call__(self, x):
        if hasattr(x, "asnumpy"):
            x = x.asnumpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.fixed_batch is None or len(x) == self.fixed_batch:
            return self.session.run(None, {self.input_name: x})[0]
        outputs = []
        for start in range(0, len(x), self.fixed_batch):
            chunk = x[start:start + self.fixed_batch]
            count = len(chunk)
            if count < self.fixed_batch:
                pad = np.repeat(chunk[-1:], self.fixed_batch - count, axis=0)
                chunk = np.concatenate([chunk, pad])
            outputs.append(self.session.run(None, {self.input_name: chunk})[0][:count])
        return np.concatenate(outputs)

    def hybridize(self, *args, **kwargs):
        """No-op: onnxruntime optimises the graph itself."""


# ---------------------------------------------------------------------------------------------
# evaluation backends (the training callback's choice between MXNet and ONNX Runtime)

EVAL_BACKENDS = ("auto", "onnxruntime", "mxnet")
PARITY_TOLERANCE = 1e-3


def onnxruntime_available():
    """True when ``import onnxruntime`` works."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend, ctx=None):
    """``'auto'`` -> ``'onnxruntime'`` when every device of ``ctx`` is a CPU and onnxruntime imports, else
    ``'mxnet'``; ``'onnxruntime'`` / ``'mxnet'`` are returned as given (``'onnxruntime'`` raises
    ValueError when onnxruntime is not installed). Other values raise ValueError listing the choices."""
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"evaluation backend must be one of {', '.join(EVAL_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        cpu_only = all(c.device_type == "cpu" for c in as_ctx_list(ctx))
        return "onnxruntime" if cpu_only and onnxruntime_available() else "mxnet"
    if backend == "onnxruntime" and not onnxruntime_available():
        raise ValueError("evaluation backend onnxruntime: onnxruntime is not installed (pip install onnxruntime); "
                         "or choose mxnet or auto")
    return backend


def default_threads():
    """Cores the process computes on: ``OMP_NUM_THREADS`` when set (the command lines set it to every core,
    ``tools._cli.use_all_cores``), else the CPUs this process may run on."""
    try:
        threads = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        threads = 0
    if threads > 0:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def network_to_onnx(net, layout="cells"):
    """ONNX model (``onnx.ModelProto``) of a ``symbols.get_model`` network's current parameters.

    Lowered with ``symbols.deploy.build_deploy_graph`` (BatchNorm folded into the convolutions, channel
    shuffle absorbed; ``layout`` as there, ``cells`` is the fastest at batch sizes above 1), converted with
    ``DeployGraph.to_onnx`` (opset 13, dynamic batch), in memory. Parameters held on several devices are read
    from the current default context (use ``with ctx:``). Raises what the lowering raises (ValueError for a
    block it does not know).
    """
    from symbols.deploy import build_deploy_graph
    return build_deploy_graph(net, layout).to_onnx(dynamic_batch=True)


def parity_difference(reference, candidate):
    """Max abs difference of two ``(N, D)`` embedding arrays relative to the reference's largest value
    (``max|ref - cand| / max|ref|``: an untrained network's embeddings can be 1e-8 small); inf when the
    shapes differ or a value is not finite, the plain max abs difference when the reference is all zero."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        return float("inf")
    scale = float(np.abs(reference).max())
    diff = np.abs(reference - candidate).max() / (scale if scale > 0 else 1.0)
    return float(diff) if np.isfinite(diff) else float("inf")


def _check_embedding_output(out, batch, source):
    shape = tuple(out.shape)
    if len(shape) != 2 or shape[0] != batch or shape[1] < 2:
        raise ValueError(f"{source}: output has shape {shape} for a batch of {batch} images; expected an "
                         f"embedding (N, D) with D > 1 (is this an embedding-only model? SPEC §7)")


def _epoch_of(params_path, prefix):
    match = re.fullmatch(re.escape(prefix) + r"-(\d+)\.params", params_path)
    return int(match.group(1)) if match else None


def _resolve_checkpoint(spec):
    """``spec`` -> ``(symbol_file, params_file)`` for 'PREFIX,EPOCH' or an exported model directory."""
    if os.path.isdir(spec):
        symbols = sorted(glob.glob(os.path.join(spec, "*-symbol.json")))
        if len(symbols) != 1:
            found = ", ".join(os.path.basename(s) for s in symbols) or "none"
            raise ValueError(f"{spec}: an exported model directory must hold exactly one *-symbol.json "
                             f"(found: {found}); pass PREFIX,EPOCH instead")
        prefix = symbols[0][:-len("-symbol.json")]
        epochs = sorted(e for e in (_epoch_of(p, prefix) for p in glob.glob(prefix + "-*.params"))
                        if e is not None)
        if not epochs:
            raise ValueError(f"{spec}: no {os.path.basename(prefix)}-NNNN.params next to "
                             f"{os.path.basename(symbols[0])}")
        return symbols[0], f"{prefix}-{epochs[-1]:04d}.params"
    if "," not in spec:
        raise ValueError(f"--model {spec!r}: expected PREFIX,EPOCH (e.g. output/model,15), an exported "
                         "model directory, or an .onnx file")
    prefix, epoch_text = spec.rsplit(",", 1)
    try:
        epoch = int(epoch_text)
    except ValueError:
        raise ValueError(f"--model {spec!r}: epoch {epoch_text!r} is not an integer") from None
    symbol_file, params_file = f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params"
    for path in (symbol_file, params_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: checkpoint file not found (--model {spec})")
    return symbol_file, params_file


def load_model(spec, ctx=None):
    """Load an embedding network for evaluation.

    ``spec``: ``'PREFIX,EPOCH'`` (``PREFIX-symbol.json`` + ``PREFIX-%04d.params``, SPEC §7), an exported
    model directory (one ``*-symbol.json`` with its ``-NNNN.params``; the highest epoch is used), or an
    ``.onnx`` file (returns an :class:`OnnxEmbedder`, CPU only). ``ctx``: Context or list.
    The model is probed with one zero image; an output that is not ``(N, D)``, D > 1, raises ValueError.
    """
    mx = _mx()
    ctxs = as_ctx_list(ctx)
    probe = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    spec = os.fspath(spec)
    if spec.lower().endswith(".onnx"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"{spec}: ONNX file not found")
        net = OnnxEmbedder(spec)
        _check_embedding_output(net(probe), 1, spec)
        return net
    symbol_file, params_file = _resolve_checkpoint(spec)
    try:
        symbol = mx.sym.load(symbol_file)
    except mx.base.MXNetError as err:
        raise ValueError(f"{symbol_file}: not an MXNet symbol file ({str(err).splitlines()[0]})") from None
    inputs = symbol.list_inputs()
    if "data" not in inputs:
        raise ValueError(f"{symbol_file}: the network input must be a variable named 'data' (SPEC §7)")
    if len(symbol.list_outputs()) != 1:
        raise ValueError(f"{symbol_file}: the symbol has outputs {symbol.list_outputs()}; an embedding "
                         "model has exactly one (export the embedding network only, SPEC §7)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Cannot decide type")
            net = mx.gluon.SymbolBlock.imports(symbol_file, ["data"], params_file, ctx=ctxs)
    except (mx.base.MXNetError, AssertionError, ValueError) as err:
        raise ValueError(f"{params_file}: cannot load parameters for {os.path.basename(symbol_file)} "
                         f"({str(err).splitlines()[0]})") from None
    _check_embedding_output(net(mx.nd.array(probe, ctx=ctxs[0])), 1, symbol_file)
    return net


# ---------------------------------------------------------------------------------------------
# embedding extraction


def _check_param_contexts(net, ctxs):
    """Gluon needs the parameters on every device the batch is split over; say so before MXNet does."""
    if not hasattr(net, "collect_params"):
        return
    for param in net.collect_params().values():
        try:
            have = param.list_ctx()
        except RuntimeError:
            return
        missing = [c for c in ctxs if c not in have]
        if missing:
            raise ValueError(f"the network's parameters live on {have} but embedding was asked on {ctxs}; "
                             "load the model with that ctx or call net.collect_params().reset_ctx(ctx)")
        return


def _forward(net, x, ctxs):
    """Run ``net`` on float32 NCHW ``x``, split over ``ctxs``; returns an NDArray or numpy ``(N, D)``."""
    mx = _mx()
    if isinstance(net, OnnxEmbedder):
        return net(x)
    if len(ctxs) == 1:
        return net(mx.nd.array(x, ctx=ctxs[0]))
    parts = mx.gluon.utils.split_and_load(x, ctxs, even_split=False)
    return mx.nd.concat(*[net(part).as_in_context(ctxs[0]) for part in parts], dim=0)


def extract_embeddings(net, images, ctx=None, batch_size=64, flip=True, progress=False):
    """Raw embedding of every image, plus that of its horizontal flip when ``flip`` (SPEC §6).

    ``images``: uint8 ``(M, 112, 112, 3)`` RGB. Batches of ``batch_size`` over the devices ``ctx``
    (list; default CPU); the last batch is padded to full size (so hybridized static-shape networks
    keep one shape) and trimmed, except for an :class:`OnnxEmbedder` with a dynamic batch. Returns float32 ``(M, D)``: ``net(x) + net(flip(x))``, not normalised
    (:func:`evaluate` normalises after the sum). ``progress`` shows a tqdm bar.
    """
    mx = _mx()
    from datasets import normalize
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (M, H, W, 3) RGB, got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ValueError("no images to embed")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    ctxs = as_ctx_list(ctx)
    if len(ctxs) > batch_size:
        raise ValueError(f"batch size {batch_size} is smaller than the number of devices ({len(ctxs)})")
    _check_param_contexts(net, ctxs)
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="embedding", unit="batch", leave=False, dynamic_ncols=True)
    pad = not (isinstance(net, OnnxEmbedder) and net.fixed_batch is None)
    embeddings = None
    with mx.autograd.predict_mode():
        for start in starts:
            chunk = images[start:start + batch_size]
            count = len(chunk)
            if count < batch_size and pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - count, axis=0)])
            x = normalize(chunk)
            out = _forward(net, x, ctxs)
            _check_embedding_output(out, len(chunk), "network")
            if flip:
                out = out + _forward(net, np.ascontiguousarray(x[:, :, :, ::-1]), ctxs)
            out = out.asnumpy() if hasattr(out, "asnumpy") else np.asarray(out)
            if embeddings is None:
                embeddings = np.empty((len(images), out.shape[1]), dtype=np.float32)
            embeddings[start:start + count] = out[:count]
    return embeddings


# ---------------------------------------------------------------------------------------------
# sets


def load_sets(data_dir, targets=None):
    """Load verification sets: ``{name: (images uint8 (2N,112,112,3), issame bool (N,))}``.

    ``targets``: names (``'lfw'`` -> ``DATA_DIR/lfw.bin``), a comma-separated string, or None for every
    ``*.bin`` in ``data_dir``. Raises ValueError naming the available sets when one is missing.
    """
    import datasets
    available = datasets.find_bins(data_dir)
    if targets is None:
        names = list(available)
    elif isinstance(targets, str):
        names = [t.strip() for t in targets.split(",") if t.strip()]
    else:
        names = list(targets)
    names = [n[:-len(".bin")] if n.endswith(".bin") else n for n in names]
    if not names:
        raise ValueError(f"{data_dir}: no verification sets (*.bin) to evaluate")
    missing = [n for n in names if n not in available]
    if missing:
        listing = ", ".join(available) or "none"
        raise ValueError(f"{data_dir}: no verification set {', '.join(missing)} "
                         f"(expected {missing[0]}.bin; available: {listing})")
    return {name: datasets.load_bin(available[name]) for name in names}


def verify_sets(net, sets, ctx=None, batch_size=64, flip=True, nfolds=10, far_targets=DEFAULT_FAR_TARGETS,
                progress=False):
    """Embed and evaluate every set: ``{name: result}``.

    ``sets``: ``{name: (images uint8 (2N,112,112,3), issame (N,))}`` as from :func:`load_sets`.
    Each result is :func:`evaluate`'s dict plus ``images_per_sec`` (embedding throughput, flips
    included in the cost) and ``embed_seconds``. ``net`` is used as given (no hybridization here).
    """
    results = {}
    for name, (images, issame) in sets.items():
        check_pairs(issame, nfolds)
        begin = time.perf_counter()
        embeddings = extract_embeddings(net, images, ctx=ctx, batch_size=batch_size, flip=flip,
                                        progress=progress)
        seconds = time.perf_counter() - begin
        try:
            result = evaluate(embeddings, issame, nfolds=nfolds, far_targets=far_targets)
        except ValueError as err:
            raise ValueError(f"set {name}: {err}") from None
        result["images_per_sec"] = len(images) / max(seconds, 1e-9)
        result["embed_seconds"] = seconds
        results[name] = result
    return results


# ---------------------------------------------------------------------------------------------
# reporting


def _far_label(target):
    return f"{target:.0e}".replace("e-0", "e-")


def format_table(results):
    """One row per set: pairs, accuracy ± std (%), TAR@FAR (achieved FAR), XNorm, images/s."""
    if not results:
        return "(no results)"
    targets = sorted({t for r in results.values() for t in r["tar_at_far"]}, reverse=True)
    header = ["set", "pairs", "accuracy (%)"] + [f"TAR@FAR={_far_label(t)} (FAR)" for t in targets]
    header += ["XNorm", "images/s"]
    rows = []
    for name, r in results.items():
        row = [name, str(r["num_pairs"]), f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}"]
        for t in targets:
            entry = r["tar_at_far"].get(t)
            row.append("-" if entry is None else f"{100 * entry['tar']:.2f} ({entry['far']:.1e})")
        row.append(f"{r['xnorm']:.4g}")
        row.append(f"{r['images_per_sec']:.1f}" if "images_per_sec" in r else "-")
        rows.append(row)
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def results_to_json(results):
    """JSON-ready copy of :func:`verify_sets` results (arrays to lists, FAR keys to strings)."""
    def convert(value):
        if isinstance(value, dict):
            return {(_far_label(k) if isinstance(k, float) else str(k)): convert(v) for k, v in value.items()}
        if isinstance(value, (np.ndarray, list, tuple)):
            return [convert(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
        if isinstance(value, np.generic):
            return value.item()
        return value
    return convert(results)


def plot_roc(results, path):
    """Draw the ROC curve (TPR vs FPR, log FPR) of every set into one PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, r in results.items():
        fpr, tpr = np.asarray(r["roc"]["fpr"]), np.asarray(r["roc"]["tpr"])
        keep = fpr > 0
        ax.plot(fpr[keep], tpr[keep], label=f"{name} (acc {100 * r['accuracy']:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FPR)")
    ax.set_ylabel("true accept rate (TPR)")
    ax.set_title("Verification ROC (SPEC §6, mean over folds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# command line


def load_for_evaluation(spec, ctx, backend="auto", fuse=True):
    """The command line's model: ``(embedder, description)``.

    ``backend`` as :func:`resolve_backend`. With ONNX Runtime, a checkpoint of a registered network is
    rebuilt as its Gluon network (``tools.export.load_source`` reads which one from the parameter names),
    lowered to the folded ONNX graph (:meth:`OnnxEmbedder.from_network`) and checked against the checkpoint
    run by MXNet on random images (:func:`parity_difference` ≤ ``PARITY_TOLERANCE``); a checkpoint that cannot
    be rebuilt or lowered, or that differs, is evaluated with MXNet, and the reason is printed. ``.onnx``
    files always run on ONNX Runtime.
    """
    mx = _mx()
    ctxs = as_ctx_list(ctx)
    net = load_model(spec, ctxs)
    if isinstance(net, OnnxEmbedder):
        return net, "onnxruntime"
    if resolve_backend(backend, ctxs) == "onnxruntime":
        try:
            from tools.export import load_source

            source, info = load_source(spec)
            embedder = OnnxEmbedder.from_network(source, threads=default_threads())
            probe = np.random.RandomState(0).uniform(-1, 1, (4, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
            diff = parity_difference(net(mx.nd.array(probe, ctx=ctxs[0])).asnumpy(), embedder(probe))
            if diff <= PARITY_TOLERANCE:
                return embedder, f"onnxruntime ({info['network']}, folded deploy graph, {default_threads()} threads)"
            reason = f"the ONNX graph differs from the checkpoint (relative difference {diff:.1e})"
        except (ValueError, KeyError, RuntimeError, ImportError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"note: evaluating with MXNet: {reason}", flush=True)
    return prepare_for_inference(net, ctxs, fuse=fuse), ", ".join(str(c) for c in ctxs)


def build_parser():
    import argparse
    parser = argparse.ArgumentParser(
        description="Face verification accuracy on .bin pair sets with the standard protocol (SPEC §6).")
    parser.add_argument("--model", required=True,
                        help="PREFIX,EPOCH checkpoint, an exported model directory, or an .onnx file")
    parser.add_argument("--data-dir", required=True, help="folder holding the <name>.bin sets")
    parser.add_argument("--target", default="",
                        help="comma-separated set names, e.g. lfw,cfp_fp,agedb_30 (default: every .bin)")
    parser.add_argument("--gpus", default="", help="GPU ids, e.g. 0,1 (default: CPU)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-flip", action="store_true", help="embed the images only, not their flips")
    parser.add_argument("--backend", default="auto", choices=EVAL_BACKENDS,
                        help="auto: ONNX Runtime on CPU for checkpoints of this repository's networks (checked "
                             "against MXNet first), else MXNet")
    parser.add_argument("--no-fuse", action="store_true",
                        help="on CPU, do not fuse operators with oneDNN (MKLDNN backend)")
    parser.add_argument("--nfolds", type=int, default=10)
    parser.add_argument("--far", default="1e-3,1e-4", help="comma-separated FAR targets for TAR@FAR")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument("--roc", default="", help="draw the ROC curves of all sets into this PNG")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        far_targets = tuple(float(t) for t in args.far.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--far expects comma-separated numbers such as 1e-3,1e-4, got {args.far!r}") from None
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    ctx = parse_gpus(args.gpus)
    sets = load_sets(args.data_dir, args.target or None)
    for name, (_, issame) in sets.items():
        try:
            check_pairs(issame, args.nfolds)
        except ValueError as err:
            raise ValueError(f"set {name}: {err}") from None
    net, runs_on = load_for_evaluation(args.model, ctx, args.backend, fuse=not args.no_fuse)
    print(f"model {args.model} on {runs_on}; sets: "
          + ", ".join(f"{name} ({len(issame)} pairs)" for name, (_, issame) in sets.items())
          + "; warming up", flush=True)
    first_images = next(iter(sets.values()))[0]
    extract_embeddings(net, first_images[:args.batch_size], ctx=ctx, batch_size=args.batch_size, flip=False)
    results = verify_sets(net, sets, ctx=ctx, batch_size=args.batch_size, flip=not args.no_flip,
                          nfolds=args.nfolds, far_targets=far_targets, progress=True)
    print(format_table(results))
    if args.out:
        payload = {"model": args.model, "flip": not args.no_flip, "nfolds": args.nfolds,
                   "results": results_to_json(results)}
        directory = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(directory, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"results written to {args.out}")
    if args.roc:
        plot_roc(results, args.roc)
        print(f"ROC curves drawn in {args.roc}")
    return 0


if __name__ == "__main__":
    from tools._cli import run_cli
    run_cli(main)
