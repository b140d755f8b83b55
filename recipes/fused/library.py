"""Build and load the fused CPU training operators (``seesaw_ops.cc``) into MXNet.

The library is compiled with the machine's C++ compiler (g++ with OpenMP) into ``$SEESAWFACE_CACHE/ops``
(default ``.cache/ops`` in the repository), keyed by the source, MXNet's version, the compiler flags and the
CPU, and loaded with ``mx.library.load``. When that fails the networks keep the standard operators and
:func:`available` says why.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seesaw_ops.cc")
OPS = ("seesaw_swish", "seesaw_prelu", "seesaw_scale", "seesaw_concat_shuffle", "seesaw_split", "seesaw_scale_split",
       "seesaw_bn_swish", "seesaw_bn_swish_concat", "seesaw_spatial_mean")
FLAGS = ["-shared", "-fPIC", "-std=c++17", "-O3", "-march=native", "-fopenmp", "-ffast-math"]

_lock = threading.Lock()
_state = {"loaded": None, "reason": None}


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
