"""How a command runs in this process: CPU threads (and how many other processes leave free), glibc's malloc for
CPU training, and errors as one line.

Commands call :func:`use_all_cores` before ``import mxnet`` and hand their ``main`` to :func:`run_cli`;
importing this module changes nothing.
"""
import os
import sys
import time

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


_USER_THREADS = []  # whether OMP_NUM_THREADS came from the user (recorded by use_all_cores)


def use_all_cores():
    """Let MXNet's CPU kernels and engine use every core (call before ``import mxnet``; values already set win).

    Without ``OMP_NUM_THREADS`` and ``MXNET_CPU_WORKER_NTHREADS`` MXNet 1.9.1 computes on one core.
    """
    if not _USER_THREADS:
        _USER_THREADS.append("OMP_NUM_THREADS" in os.environ)
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


def threads_chosen_by_user():
    """True when ``OMP_NUM_THREADS`` was set before :func:`use_all_cores` ran (the user fixed the thread count)."""
    return bool(_USER_THREADS and _USER_THREADS[0])


def cpu_sample():
    """``(seconds, busy ticks of every CPU excluding niced time, this process's ticks)``: two samples give the
    cores other, not niced, processes kept busy in between (:func:`cores_used_by_others`)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])  # utime + stime of every thread
    busy = user + system + irq + softirq + steal + (nice if os.getpriority(os.PRIO_PROCESS, 0) > 0 else 0)
    return time.monotonic(), busy, own


def cores_used_by_others(before, after):
    """Cores that processes other than this one (niced ones excepted: they yield) kept busy between two
    :func:`cpu_sample` readings."""
    seconds = after[0] - before[0]
    if seconds <= 0:
        return 0.0
    ticks = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, ticks / (seconds * os.sysconf("SC_CLK_TCK")))


def set_cpu_threads(count):
    """Compute on ``count`` threads from now on: MXNet's own kernels and the OpenMP regions this thread starts
    (oneDNN, the fused operators)."""
    import ctypes

    import mxnet as mx

    mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(int(count)))
    ctypes.CDLL("libgomp.so.1").omp_set_num_threads(ctypes.c_int(int(count)))
