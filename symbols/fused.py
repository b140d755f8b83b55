"""Fused CPU training operators (``symbols/csrc/seesaw_ops.cc``), compiled on first use and switched on per network.

MXNet 1.9.1 on CPU spends most of a Seesaw/MobileFaceNet training step outside the convolutions: swish as
``sigmoid`` + ``mul`` (five passes over the feature map with its backward), the SE gate's global average pooling
and ``broadcast_mul`` (whose backward passes are slow generic kernels), ``LeakyReLU(prelu)`` (its backward alone was 75% of a
MobileFaceNet step), the concat + reshape/``SwapAxis``/reshape of the channel shuffle, and the uneven channel
splits (``slice_axis`` pairs; ``split_v2`` is slower still), and BatchNorm followed by swish (whose BatchNorm output
is kept for the swish backward). The library replaces each with one forward and one backward pass
(``seesaw_swish``, ``seesaw_spatial_mean``, ``seesaw_scale``, ``seesaw_prelu``, ``seesaw_concat_shuffle``,
``seesaw_split``, ``seesaw_bn_swish``) computing the same values, BatchNorm running statistics included (tests/test_fused.py
compares outputs, gradients and statistics). A library operator keeps all its inputs and outputs until its backward
has run (``lib_api`` hands them all to the backward), so a Seesaw block also fuses along its data flow
(``seesaw_bn_swish_concat``: both expansions' BatchNorm + swish into the shuffled map; ``seesaw_scale_split``: the SE
scale into the two projection inputs) and a shuffle block passes its output on as the next block's two pieces.

Usage (``recipes/train.py`` does this for CPU training)::

    if symbols.fused.available():
        symbols.fused.enable(net)      # before net.hybridize()

Networks are built with standard operators; :func:`enable` marks one network's blocks. Graphs traced inside
:func:`standard_ops` (checkpoint export, deploy lowering) always use standard operators, so a saved
``-symbol.json`` never needs this library. The library is compiled with the machine's C++ compiler (g++ with
OpenMP) into ``$SEESAWFACE_CACHE/ops`` (default ``.cache/ops`` in the repository), keyed by the source, MXNet's
version and the CPU; when that fails the networks keep the standard operators and :func:`available` says why.
"""
import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "seesaw_ops.cc")
OPS = ("seesaw_swish", "seesaw_prelu", "seesaw_scale", "seesaw_concat_shuffle", "seesaw_split", "seesaw_scale_split",
       "seesaw_bn_swish", "seesaw_bn_swish_concat", "seesaw_spatial_mean")
FLAGS = ["-shared", "-fPIC", "-std=c++17", "-O3", "-march=native", "-fopenmp", "-ffast-math"]

_lock = threading.Lock()
_state = {"loaded": None, "reason": None}
_local = threading.local()


def cache_dir():
    """Folder of the compiled library: ``$SEESAWFACE_CACHE/ops`` or ``<repository>/.cache/ops``."""
    repository = os.path.dirname(os.path.dirname(os.path.dirname(SOURCE)))
    return os.path.join(os.environ.get("SEESAWFACE_CACHE") or os.path.join(repository, ".cache"), "ops")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _mxnet_dir():
    import mxnet
    return os.path.dirname(mxnet.__file__)


def library_path():
    """Where the library for this source, MXNet build, compiler flags and CPU lives (it may not exist yet)."""
    import mxnet
    digest = hashlib.sha256()
    for part in (open(SOURCE, "rb").read(), mxnet.__version__.encode(), " ".join(FLAGS).encode(),
                 _cpu_model().encode(), platform.machine().encode()):
        digest.update(part)
    return os.path.join(cache_dir(), digest.hexdigest()[:16], "libseesaw_ops.so")


def build(path=None, compiler=None):
    """Compile the library into ``path`` (atomically); returns the path. Raises RuntimeError with the
    compiler's message on failure."""
    path = path or library_path()
    compiler = compiler or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    mx_dir = _mxnet_dir()
    lib_api = os.path.join(mx_dir, "src", "lib_api.cc")
    if not os.path.exists(lib_api):
        raise RuntimeError(f"this MXNet install has no {lib_api} (needed to build operator libraries)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    cmd = [compiler, *FLAGS, "-I", os.path.join(mx_dir, "include"), "-o", tmp, SOURCE, lib_api, "-lmvec"]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as err:
            raise RuntimeError(f"cannot run {compiler}: {err}") from err
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load():
    """Build (once, cached) and load the library into MXNet; True when the fused operators are usable.

    Never raises: on failure returns False and :func:`unavailable_reason` tells why (set
    ``SEESAWFACE_FUSED=0`` to skip the library altogether).
    """
    with _lock:
        if _state["loaded"] is not None:
            return _state["loaded"]
        if os.environ.get("SEESAWFACE_FUSED", "1") == "0":
            _state.update(loaded=False, reason="disabled by SEESAWFACE_FUSED=0")
            return False
        try:
            import mxnet as mx
            if all(hasattr(mx.nd, op) for op in OPS):
                _state.update(loaded=True)
                return True
            path = library_path()
            if not os.path.exists(path):
                build(path)
            mx.library.load(path, verbose=False)
            missing = [op for op in OPS if not hasattr(mx.nd, op)]
            if missing:
                raise RuntimeError(f"{path} did not register {missing}")
            _state.update(loaded=True)
        except Exception as err:  # any failure leaves the standard operators in place
            _state.update(loaded=False, reason=str(err).strip().splitlines()[-1] if str(err).strip() else repr(err))
            warnings.warn(f"fused training operators unavailable, using standard MXNet operators: {_state['reason']}")
        return _state["loaded"]


def available():
    """True when the fused operators are loaded (builds and loads them on first call)."""
    return load()


def unavailable_reason():
    """Why :func:`available` is False (None when it is True or was not asked yet)."""
    return _state["reason"]


def active(block):
    """Whether ``block`` should emit fused operators in the graph being traced now."""
    return getattr(block, "_fused_ops", False) and not getattr(_local, "standard", False)


def is_train_flag(F):
    """A (1,) float input for operators that must know MXNet's mode: exactly 1 in inference, 0 or 2 in training.

    lib_api operators are not told whether the graph runs in training mode (``fcomp_t`` sees attributes, tensors
    and resources only), Dropout is: ``Dropout(ones(1), p=0.5)``. Symbolic traces share one such node (it has no
    inputs, so any graph may hold it), so a cached graph computes it once per forward; imperative calls make
    their own.
    """
    import mxnet as mx
    if F is not mx.sym:
        return F.Dropout(F.ones(shape=(1,)), p=0.5)
    with _lock:
        if _state.get("is_train") is None:
            _state["is_train"] = mx.sym.Dropout(mx.sym.ones(shape=(1,), name="seesaw_is_train_one"), p=0.5,
                                                name="seesaw_is_train")
        return _state["is_train"]


@contextlib.contextmanager
def standard_ops():
    """Within this context every network traces with standard MXNet operators (for exported graphs)."""
    previous = getattr(_local, "standard", False)
    _local.standard = True
    try:
        yield
    finally:
        _local.standard = previous


def enable(net, on=True):
    """Mark ``net``'s blocks to use the fused operators (``on=False`` unmarks); returns how many blocks.

    Call before ``net.hybridize()`` (a cached graph keeps the operators it was traced with). Raises
    RuntimeError when ``on`` and the library cannot be loaded.
    """
    if on and not load():
        raise RuntimeError(f"fused operators unavailable: {unavailable_reason()}")
    count = 0

    def visit(block):
        nonlocal count
        if getattr(block, "supports_fused_ops", False):
            block._fused_ops = bool(on)
            count += 1
        for child in block._children.values():
            visit(child)

    visit(net)
    return count
