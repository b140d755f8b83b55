"""Running ONNX embedding models with ONNX Runtime on the CPU: session options, one shared thread pool for
timing several sessions in turn, and :class:`OnnxEmbedder`, an ONNX model behind a Gluon block's call."""
import os
import time

import numpy as np


def onnxruntime_available():
    """True when ``import onnxruntime`` works."""
    try:
        import onnxruntime  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return True


def default_threads():
    """Cores the process computes on: ``OMP_NUM_THREADS`` when set (the commands set it to every core,
    :func:`deploy.process.use_all_cores`), else the CPUs this process may run on."""
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

    Lowered with :func:`deploy.lower.build_deploy_graph` (BatchNorm folded into the convolutions, channel
    shuffle absorbed; ``layout`` as there, ``cells`` is the fastest at batch sizes above 1), converted with
    ``DeployGraph.to_onnx`` (opset 13, dynamic batch), in memory. Parameters held on several devices are read
    from the current default context (use ``with ctx:``). Raises what the lowering raises (ValueError for a
    block it does not know).
    """
    from .lower import build_deploy_graph
    return build_deploy_graph(net, layout).to_onnx(dynamic_batch=True)


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


def onnx_session(model, threads=None, spinning=True):
    """An ONNX Runtime CPU session (every graph optimisation) for an ``onnx.ModelProto``, bytes or a path."""
    import onnxruntime

    data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return onnxruntime.InferenceSession(data, onnx_session_options(threads, spinning),
                                        providers=["CPUExecutionProvider"])


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
