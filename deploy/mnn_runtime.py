"""MNN models of the folded graph: converted by MNN's own converter, run by MNN's Python binding.

The converter is the compiled ``_tools`` module of the ``mnn`` wheel, called in a child process (it prints from C
and may abort on a bad model). The wheel's ``mnnconvert`` / ``mnnquant`` commands are never used: they install
packages with pip and send usage reports when they start. :class:`MnnEmbedder` runs a model behind the call
interface of :class:`deploy.onnx_runtime.OnnxEmbedder`.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

INPUT_NAME, OUTPUT_NAME = "data", "embedding"  # kept from the ONNX graph by MNN's converter
# MNN's flatbuffer holds no magic number; a converted model is at least this many bytes of header and tables.
_MIN_SIZE = 1024


def mnn_available():
    """True when MNN's Python binding imports."""
    return importlib.util.find_spec("MNN") is not None


def run_tool(tool, argv):
    """Run ``_tools.<tool>(argv)`` (``mnnconvert`` or ``mnnquant``, argv as a command line's) in a child process;
    returns its output. RuntimeError with the tool's last lines when it fails."""
    code = f"import sys, _tools; _tools.{tool}(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code] + [str(a) for a in argv], capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = " | ".join(output.strip().splitlines()[-3:])
        raise RuntimeError(f"MNN's {tool} failed (exit code {done.returncode}): {tail}")
    return output


def convert_to_mnn(onnx_model, path, fp16=False):
    """Convert an ONNX model (``onnx.ModelProto`` or bytes) into an ``.mnn`` file with MNN's converter.

    ``fp16``: weights stored as float16. MNN's converter truncates weights to float16 (rounds toward zero, about
    12× the error of rounding to nearest), so the convolution weights are first rounded to nearest float16 in the
    ONNX; the converter's truncation then keeps them exactly.
    """
    if fp16:
        onnx_model = round_weights_to_fp16(onnx_model)
    data = onnx_model.SerializeToString() if hasattr(onnx_model, "SerializeToString") else bytes(onnx_model)
    with tempfile.TemporaryDirectory() as work:
        src, dst = os.path.join(work, "model.onnx"), os.path.join(work, "model.mnn")
        with open(src, "wb") as f:
            f.write(data)
        argv = ["MNNConvert", "-f", "ONNX", "--modelFile", src, "--MNNModel", dst, "--bizCode", "seesawface"]
        output = run_tool("mnnconvert", argv + (["--fp16"] if fp16 else []))
        if "Converted Success" not in output or not os.path.isfile(dst):
            tail = " | ".join(output.strip().splitlines()[-3:])
            raise RuntimeError(f"MNN's converter did not convert the model: {tail}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        shutil.copyfile(dst, path)
    return path


def round_weights_to_fp16(onnx_model):
    """A copy of the ONNX model whose 4-D float weights are rounded to the nearest float16 (stored as float32)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(onnx_model if hasattr(onnx_model, "SerializeToString") else onnx.load_from_string(onnx_model))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 4:
            array = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    return model


def op_counts(path):
    """``{op type: count}`` of an ``.mnn`` file as MNN's converter dumps it to JSON; a UnaryOp / BinaryOp is
    named with its operation (``UnaryOp.SILU``), a convolution with a fused ReLU as ``Convolution+relu``."""
    with tempfile.TemporaryDirectory() as work:
        dump = os.path.join(work, "model.json")
        run_tool("mnnconvert", ["MNNConvert", "-f", "MNN", "--modelFile", os.fspath(path), "--JsonFile", dump])
        if not os.path.isfile(dump):
            raise ValueError(f"{path}: MNN's converter cannot read this .mnn file")
        with open(dump) as f:
            oplist = json.load(f)["oplists"]
    counts = {}
    for op in oplist:
        kind, main = op["type"], op.get("main") or {}
        if kind in ("Convolution", "ConvolutionDepthwise"):
            common = main.get("common", {})
            kind += "+relu6" if common.get("relu6") else "+relu" if common.get("relu") else ""
            kind += "[int8]" if main.get("symmetricQuan") else ""
        elif kind in ("UnaryOp", "BinaryOp"):
            kind += f".{main.get('opType', '?')}"
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def runtime_config(threads=None, fp16=False):
    """MNN CPU runtime settings: ``threads`` (None: 1, MNN's default), ``precision`` low when ``fp16`` (float16
    compute where the CPU has it; on CPUs without it MNN computes in float32), high otherwise."""
    return {"backend": "CPU", "precision": "low" if fp16 else "high", "numThread": int(threads or 1)}


class MnnEmbedder:
    """An MNN embedding model behind the call interface of :class:`deploy.onnx_runtime.OnnxEmbedder`.

    ``path``: the ``.mnn`` file; ``threads``: MNN CPU threads; ``fp16``: MNN's low precision.
    ``embedder(x)``, ``x`` float32 ``(N, 3, H, W)`` RGB 0–255 (numpy or NDArray), returns numpy ``(N, D)``;
    any batch size. A missing, damaged or truncated file raises ValueError naming it.
    """

    def __init__(self, path, threads=None, fp16=False, name=None):
        try:
            import MNN  # noqa: F401  (MNN.expr and MNN.nn need it loaded)
            import MNN.expr as expr
            import MNN.nn as nn
        except ImportError as err:
            raise RuntimeError(f"running an MNN model needs MNN ({err}); pip install mnn") from None
        self._expr = expr
        self.file = os.fspath(path)
        self.path = name or self.file
        if not os.path.isfile(self.file):
            raise ValueError(f"{self.file}: MNN model file not found")
        check_model_file(self.file)
        self.threads = int(threads or 1)
        manager = nn.create_runtime_manager((runtime_config(threads, fp16),))
        try:
            self.module = nn.load_module_from_file(self.file, [INPUT_NAME], [OUTPUT_NAME], runtime_manager=manager)
        except Exception as err:  # MNN raises its own types, or returns None
            raise ValueError(f"{self.file}: MNN cannot load this model ({err})") from None
        if self.module is None:
            raise ValueError(f"{self.file}: MNN cannot load this model (damaged, or no {INPUT_NAME} → "
                             f"{OUTPUT_NAME} graph)")

    def __call__(self, x):
        if hasattr(x, "asnumpy"):
            x = x.asnumpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        F = self._expr
        out = self.module.forward(F.const(x, list(x.shape), F.NCHW))
        if out.data_format == F.NC4HW4:
            out = F.convert(out, F.NCHW)
        return np.array(out.read(), dtype=np.float32).reshape(len(x), -1)

    def hybridize(self, *args, **kwargs):
        """No-op: MNN optimises the graph itself."""


def check_model_file(path):
    """Raise ValueError naming ``path`` when it is not a complete ``.mnn`` model: MNN's loader does not check a
    file's length before it reads its tables, so a truncated file is refused here first."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    root = int.from_bytes(head[:4], "little") if len(head) >= 4 else 0
    if size < _MIN_SIZE or not 8 <= root < size:
        raise ValueError(f"{path}: not an MNN model ({size} bytes, no flatbuffer root table)")
    try:
        import MNN

        interpreter = MNN.Interpreter(path)  # runs flatbuffers' verifier over the whole buffer
    except Exception as err:  # noqa: BLE001  (MNN raises its own types)
        raise ValueError(f"{path}: damaged or truncated MNN model ({err})") from None
    del interpreter


def profile_ops(path, image, threads=None, runs=10):
    """Time per op type of one image through an ``.mnn`` model, from MNN's own per-op callbacks (the ops the runtime
    really runs, after its lowering): ``{type: (count, seconds)}``, the mean over ``runs``."""
    import time

    import MNN

    check_model_file(path)
    interpreter = MNN.Interpreter(os.fspath(path))
    config = runtime_config(threads)
    session = interpreter.createSession({"backend": "CPU", "precision": 1, "numThread": config["numThread"]})
    x = np.ascontiguousarray(image, dtype=np.float32).reshape(1, *np.shape(image)[-3:])
    tensor = interpreter.getSessionInput(session)
    interpreter.resizeTensor(tensor, x.shape)
    interpreter.resizeSession(session)
    tensor.copyFrom(MNN.Tensor(x.shape, MNN.Halide_Type_Float, x, MNN.Tensor_DimensionType_Caffe))
    totals, counts, started = {}, {}, {}

    def begin(tensors, info):
        started[info.getName()] = time.perf_counter()
        return True

    def end(tensors, info):
        kind = info.getType()
        totals[kind] = totals.get(kind, 0.0) + time.perf_counter() - started.pop(info.getName())
        counts[kind] = counts.get(kind, 0) + 1
        return True

    interpreter.runSession(session)  # warm-up
    for _ in range(runs):
        interpreter.runSessionWithCallBackInfo(session, begin, end)
    return {kind: (counts[kind] // runs, totals[kind] / runs) for kind in sorted(totals, key=lambda k: -totals[k])}
