"""Measuring helpers shared by the benchmark commands: resident memory, matrix-multiply speed, machine info."""
import os
import platform
import threading
import time

import numpy as np


def rss_bytes():
    """Resident memory of this process (bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Context manager sampling the process RSS every millisecond; ``.peak_growth`` = max − start (bytes)."""

    def __enter__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.peak_growth = self.peak - self.start


def matmul_gflops(size=2048, repeats=5, threads=None):
    """Measured single-precision matrix-multiply GFLOP/s of this machine, best of ``repeats`` products of two
    ``size``×``size`` matrices, by three libraries: ``mx.nd.dot`` (MXNet's BLAS), ``numpy.dot`` and ONNX
    Runtime's MatMul (MLAS, the best-tuned GEMM here). ``best`` is the largest."""
    import mxnet as mx
    from onnx import TensorProto, helper

    from deploy.onnx_runtime import onnx_session

    flops = 2.0 * size ** 3
    a = mx.nd.random.uniform(shape=(size, size))
    b = mx.nd.random.uniform(shape=(size, size))
    mx.nd.dot(a, b).wait_to_read()
    result = {"mxnet_dot": flops / min(timed(lambda: mx.nd.dot(a, b).wait_to_read()) for _ in range(repeats)) / 1e9}
    an, bn = a.asnumpy(), b.asnumpy()
    np.dot(an, bn)
    result["numpy_dot"] = flops / min(timed(lambda: np.dot(an, bn)) for _ in range(repeats)) / 1e9
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = onnx_session(model, threads=threads)
    session.run(None, {"a": an, "b": bn})
    result["onnxruntime_matmul"] = flops / min(timed(lambda: session.run(None, {"a": an, "b": bn}))
                                               for _ in range(repeats)) / 1e9
    result["best"] = max(result.values())
    return result


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine_info():
    """CPU model, core count, load average and library versions."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import mxnet as mx
    import onnxruntime

    return {"cpu": model, "cores": os.cpu_count(), "load_average": list(os.getloadavg()),
            "mxnet": mx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": platform.python_version()}
