"""What embeds images with a network: ONNX Runtime on its folded graph when that is allowed and matches, else MXNet.

One policy serves the training callback (the live network, at every evaluation) and the command lines (a
checkpoint): :class:`BackendPolicy` lowers a registered network to the folded ONNX graph, checks its embeddings
against the network run by MXNet on a few images whenever the graph's operators change, and falls back to
MXNet, saying why, when it cannot lower, run or match.
"""
import time

import numpy as np

from . import onnx_runtime
from .devices import all_cpu, as_ctx_list

EVAL_BACKENDS = ("auto", "onnxruntime", "mxnet")
PARITY_TOLERANCE = 1e-3


def compare_embeddings(reference, candidate):
    """How far ``candidate`` (N, D) is from ``reference``: ``max_abs_diff``, ``relative_diff`` (max abs difference
    over the reference's largest magnitude: an untrained network's embeddings can be 1e-8 small), ``min_cosine``
    and ``mean_cosine`` per image. Non-finite values give inf / nan; a shape mismatch raises ValueError."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"output shape {candidate.shape} differs from the source's {reference.shape}")
    diff = np.abs(reference - candidate).max()
    scale = float(np.abs(reference).max())
    relative = diff / (scale if scale > 0 else 1.0)
    cos = (reference * candidate).sum(1) / np.maximum(
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1), 1e-12)
    return {"max_abs_diff": float(diff) if np.isfinite(diff) else float("inf"),
            "relative_diff": float(relative) if np.isfinite(relative) else float("inf"),
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def resolve_backend(backend, ctx=None):
    """``'auto'`` → ``'onnxruntime'`` when every device of ``ctx`` is a CPU and onnxruntime imports, else
    ``'mxnet'``; ``'onnxruntime'`` / ``'mxnet'`` are returned as given (``'onnxruntime'`` raises ValueError
    when onnxruntime is not installed). Other values raise ValueError listing the choices."""
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"evaluation backend must be one of {', '.join(EVAL_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "onnxruntime" if all_cpu(as_ctx_list(ctx)) and onnx_runtime.onnxruntime_available() else "mxnet"
    if backend == "onnxruntime" and not onnx_runtime.onnxruntime_available():
        raise ValueError("evaluation backend onnxruntime: onnxruntime is not installed (pip install onnxruntime); "
                         "or choose mxnet or auto")
    return backend


class BackendPolicy:
    """Chooses, each time an embedder is needed, between ONNX Runtime on the folded graph and MXNet.

    ``backend``: ``auto``, ``onnxruntime`` or ``mxnet`` (:func:`resolve_backend` on ``ctx``). ``warn`` receives the
    one line said when ONNX Runtime cannot be used; the policy then stays with MXNet. ``last`` holds what the
    latest :meth:`embedder` call did (``backend``, ``prepare_seconds``; ONNX Runtime: ``lower_seconds``,
    ``session_seconds``, and after a parity check ``check_seconds``, ``check_difference``).
    """

    def __init__(self, backend="auto", ctx=None, warn=print, threads=None, spinning=True,
                 hint="--eval-backend mxnet avoids this attempt"):
        self.backend = resolve_backend(backend, ctx)
        self.context = as_ctx_list(ctx)[0]  # where a network's parameters are read for the lowering
        self.warn, self.hint = warn, hint
        self.threads = threads or onnx_runtime.default_threads()
        self.spinning = spinning
        self.checked_graph = None  # graph signature the last parity check passed with
        self.last = {}

    def embedder(self, network, reference, fallback, probe, what="the network"):
        """An embedder for ``network()``, a callable giving the registered Gluon network to lower (it may raise
        ValueError when there is none).

        ``reference(x)``: the network run by MXNet on normalised images ``x`` (numpy embeddings), for the parity
        check on ``probe``; ``fallback()``: the MXNet embedder to use instead. A failure of the ONNX path
        (lowering, conversion, session, parity) calls ``warn`` once and switches this policy to MXNet.
        """
        tic = time.perf_counter()
        self.last = {}
        chosen = None
        if self.backend == "onnxruntime":
            try:
                chosen = self._onnx(network(), reference, probe)
            except Exception as err:  # any failure of the lowering or of ONNX Runtime: fall back, loudly
                reason = (str(err).strip().splitlines() or [""])[0]
                self.warn(f"warning: cannot use onnxruntime for {what} ({type(err).__name__}: {reason}); using the "
                          f"mxnet backend from now on ({self.hint})")
                self.backend = "mxnet"
                self.last = {}
        if chosen is None:
            chosen = fallback()
        self.last.update(backend=self.backend, prepare_seconds=time.perf_counter() - tic)
        return chosen

    def _onnx(self, network, reference, probe):
        with self.context:
            embedder = onnx_runtime.OnnxEmbedder.from_network(network, threads=self.threads, spinning=self.spinning)
        self.last.update(lower_seconds=embedder.lower_seconds, session_seconds=embedder.session_seconds)
        if embedder.graph_signature == self.checked_graph:
            return embedder
        tic = time.perf_counter()
        try:
            difference = compare_embeddings(reference(probe), embedder(probe))["relative_diff"]
        except ValueError as err:
            raise ValueError(f"its embeddings differ from the network's: {err}") from None
        if not difference <= PARITY_TOLERANCE:
            raise ValueError(f"its embeddings differ from the network's by {difference:.3g} (relative, "
                             f"tolerance {PARITY_TOLERANCE:g})")
        self.checked_graph = embedder.graph_signature
        self.last.update(check_seconds=time.perf_counter() - tic, check_difference=difference)
        return embedder


def load_embedder(spec, ctx=None, backend="auto", fuse=True, warn=print):
    """The command lines' model: ``(embedder, description)`` for a checkpoint, a model folder or an ``.onnx``; the
    description names the runtime and the checkpoint's convention (:data:`deploy.checkpoint.CONVENTIONS`).

    A checkpoint of a registered network runs on ONNX Runtime through :class:`BackendPolicy` (rebuilt from its
    parameter names, lowered, checked against the checkpoint run by MXNet on random images); anything else,
    or any mismatch, runs the checkpoint with MXNet (oneDNN-fused on CPU when ``fuse``). ``.onnx`` files
    always run on ONNX Runtime.
    """
    from . import checkpoint
    from .mxnet_runtime import prepare_for_inference, run_block

    ctxs = as_ctx_list(ctx)
    model = checkpoint.load_model(spec, ctxs)
    if isinstance(model, onnx_runtime.OnnxEmbedder):
        return model, "onnxruntime"
    policy = BackendPolicy(backend, ctxs, warn=warn, hint="--backend mxnet avoids this attempt")
    info = {}

    def network():
        net, found = checkpoint.load_source(spec)
        info.update(found)
        return net

    probe = np.random.RandomState(0).uniform(0, 255, (4, 3, 112, 112)).astype(np.float32)
    chosen = policy.embedder(network, lambda x: run_block(model, x), lambda: prepare_for_inference(model, ctxs, fuse),
                             probe, what=spec)
    saved = checkpoint.CONVENTIONS[model.convention]
    if policy.backend == "onnxruntime":
        return chosen, f"onnxruntime ({info['network']}, folded deploy graph, {policy.threads} threads); {saved}"
    return chosen, f"{', '.join(str(c) for c in ctxs)}; {saved}"
