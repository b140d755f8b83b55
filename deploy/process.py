"""How a command runs in this process: CPU threads, glibc's malloc for CPU training, and errors as one line.

Commands call :func:`use_all_cores` before ``import mxnet`` and hand their ``main`` to :func:`run_cli`;
importing this module changes nothing.
"""
import os
import sys

USER_ERRORS = (ValueError, OSError, KeyError, RuntimeError)


def run_cli(main, argv=None):
    """Run ``main(argv)``; print ``error: <message>`` (no traceback) and exit 2 on a user-facing error.

    Set ``SEESAW_DEBUG=1`` to see the full traceback instead.
    """
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as err:
        if os.environ.get("SEESAW_DEBUG"):
            raise
        message = str(err) or err.__class__.__name__
        if isinstance(err, KeyError):
            message = f"missing key {message}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def use_all_cores():
    """Let MXNet's CPU kernels and engine use every core (call before ``import mxnet``; values already set win).

    Without ``OMP_NUM_THREADS`` and ``MXNET_CPU_WORKER_NTHREADS`` MXNet 1.9.1 computes on one core.
    """
    cores = str(os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", cores)
    os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", cores)
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
MALLOC_SETTINGS = {"mmap_max": 0, "trim_threshold": 2 ** 31 - 1}


def tune_malloc():
    """Keep large buffers in glibc's heap for the rest of the process (CPU training, after its first step).

    MXNet 1.9.1 mallocs a fresh plain-layout copy of oneDNN's blocked tensors for every call of a non-oneDNN
    operator; glibc maps each large copy afresh and unmaps it at ``free``, so its pages fault again on every
    call. With no ``mmap`` for allocations and no heap trimming, freed copies are reused in place
    (docs/performance.md has the measurements). Returns the settings applied, or None where glibc's
    ``mallopt`` is not available.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    codes = {"mmap_max": _M_MMAP_MAX, "trim_threshold": _M_TRIM_THRESHOLD}
    if not all(mallopt(codes[key], value) == 1 for key, value in MALLOC_SETTINGS.items()):
        return None
    return dict(MALLOC_SETTINGS)
