"""ncnn models of the folded graph: converted by pnnx (ncnn's own converter), run by ncnn's Python binding.

:func:`convert_to_ncnn` turns the folded graph's ONNX (PReLU in its native form, :data:`deploy.graph.RUNTIME_FORMS`)
into ``.param`` + ``.bin`` with the ``pnnx`` executable of the ``pnnx`` wheel (installed with ``--no-deps``: its
Python package imports torch, the executable needs nothing). :class:`NcnnEmbedder` runs a model behind the call
interface of :class:`deploy.onnx_runtime.OnnxEmbedder`.
"""
import importlib.util
import os
import shutil
import subprocess
import tempfile

import numpy as np

PNNX_INSTALL = "pip install --no-deps pnnx==20261020"
INPUT_BLOB, OUTPUT_BLOB = "in0", "out0"  # the blob names pnnx gives the graph's input and output
# Batch of the shape pnnx traces with (and a batch-1 second shape): with a batch above 1 it writes batch-agnostic
# reshapes, so one batched ncnn.Mat runs any batch.
TRACE_BATCH = 4


def ncnn_available():
    """True when the ncnn Python binding imports."""
    return importlib.util.find_spec("ncnn") is not None


def pnnx_executable():
    """Path of the ``pnnx`` converter executable shipped in the pnnx wheel (found without importing the package)."""
    spec = importlib.util.find_spec("pnnx")
    path = os.path.join(spec.submodule_search_locations[0], "pnnx") if spec and spec.submodule_search_locations \
        else None
    if not path or not os.path.isfile(path):
        raise RuntimeError(f"ncnn export needs pnnx's converter, which is not installed: {PNNX_INSTALL}")
    return path


def convert_to_ncnn(onnx_model, param_path, bin_path, fp16=False, input_size=(112, 112)):
    """Convert an ONNX model (``onnx.ModelProto`` or bytes) into ncnn's ``param_path`` + ``bin_path`` with pnnx.
    ``fp16``: weights stored as float16 in the ``.bin`` (half the size, rounded to nearest). Raises RuntimeError
    with pnnx's last output lines when the conversion fails."""
    data = onnx_model.SerializeToString() if hasattr(onnx_model, "SerializeToString") else bytes(onnx_model)
    h, w = input_size
    with tempfile.TemporaryDirectory() as work:  # pnnx writes side files next to its input
        src = os.path.join(work, "model.onnx")
        with open(src, "wb") as f:
            f.write(data)
        out = {key: os.path.join(work, f"model.{key}") for key in ("ncnn.param", "ncnn.bin")}
        command = [pnnx_executable(), src, f"inputshape=[{TRACE_BATCH},3,{h},{w}]", f"inputshape2=[1,3,{h},{w}]",
                   f"fp16={int(bool(fp16))}", f"ncnnparam={out['ncnn.param']}", f"ncnnbin={out['ncnn.bin']}"]
        for key in ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnpy"):
            command.append(f"{key}={os.path.join(work, 'side.' + key)}")
        done = subprocess.run(command, cwd=work, capture_output=True, text=True)
        if done.returncode != 0 or not all(os.path.isfile(p) for p in out.values()):
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
            raise RuntimeError(f"pnnx could not convert the model to ncnn (exit code {done.returncode}): {tail}")
        for key, dst in (("ncnn.param", param_path), ("ncnn.bin", bin_path)):
            os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
            shutil.copyfile(out[key], dst)
    return param_path, bin_path


def read_param(path):
    """Layers of an ncnn ``.param`` text file: ``[{'type', 'name', 'bottoms', 'tops', 'params'}]``; ValueError
    naming the file when it is not one."""
    try:
        with open(path) as f:
            lines = [line for line in f.read().split("\n") if line.strip()]
        if not lines or lines[0].strip() != "7767517":
            raise ValueError("no ncnn magic number 7767517 on its first line")
        layer_count = int(lines[1].split()[0])
        layers = []
        for line in lines[2:]:
            t = line.split()
            nin, nout = int(t[2]), int(t[3])
            params = dict(kv.split("=", 1) for kv in t[4 + nin + nout:])
            layers.append(dict(type=t[0], name=t[1], bottoms=t[4:4 + nin], tops=t[4 + nin:4 + nin + nout],
                               params=params))
        if len(layers) != layer_count:
            raise ValueError(f"{len(layers)} layers where its header says {layer_count}")
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as err:
        raise ValueError(f"{path}: not a readable ncnn .param file ({err})") from None
    return layers


def layer_counts(param_path):
    """``{layer type: count}`` of an ncnn model, most frequent first (the Input layer excluded)."""
    counts = {}
    for layer in read_param(param_path):
        if layer["type"] != "Input":
            counts[layer["type"]] = counts.get(layer["type"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def make_options(net, threads=None, fp16=False, int8=False):
    """Set ``net.opt`` for CPU inference: ``threads`` (None: ncnn's default, the big cores), fp16 storage and
    packing when ``fp16`` (activations stored as float16 where the CPU has a kernel for it), INT8 kernels when
    ``int8``; no Vulkan, no bf16."""
    opt = net.opt
    if threads:
        opt.num_threads = int(threads)
    opt.use_vulkan_compute = False
    opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = bool(fp16)
    opt.use_bf16_storage = False
    opt.use_int8_inference = bool(int8)
    return opt


class NcnnEmbedder:
    """An ncnn embedding model behind the call interface of :class:`deploy.onnx_runtime.OnnxEmbedder`.

    ``param``: the ``.param`` file (``bin`` defaults to the same name ending ``.bin``); ``threads``: ncnn threads;
    ``fp16``: float16 storage; ``int8``: run the layers a ``.param`` marks as INT8 with INT8 kernels.
    ``embedder(x)``, ``x`` float32 ``(N, 3, H, W)`` RGB 0–255 (numpy or NDArray), returns numpy ``(N, D)``.
    A missing, damaged or truncated file raises ValueError naming it.
    """

    def __init__(self, param, bin=None, threads=None, fp16=False, int8=False, name=None):
        try:
            import ncnn
        except ImportError as err:
            raise RuntimeError(f"running an ncnn model needs ncnn ({err}); pip install ncnn") from None
        self._ncnn = ncnn
        self.param = os.fspath(param)
        self.bin = os.fspath(bin) if bin else os.path.splitext(self.param)[0] + ".bin"
        self.path = name or self.param
        self.layers = read_param(self.param)  # a clear error before ncnn's own parser sees a damaged file
        for path in (self.param, self.bin):
            if not os.path.isfile(path):
                raise ValueError(f"{path}: ncnn model file not found")
        self.net = ncnn.Net()
        make_options(self.net, threads, fp16, int8)
        if self.net.load_param(self.param) != 0:
            raise ValueError(f"{self.param}: ncnn cannot load this .param file (damaged or from a newer ncnn)")
        expected = _weight_bytes(self.layers)
        size = os.path.getsize(self.bin)
        if expected is not None and size < expected:
            raise ValueError(f"{self.bin}: truncated ncnn weights file ({size} bytes, its .param needs {expected})")
        if self.net.load_model(self.bin) != 0:
            raise ValueError(f"{self.bin}: ncnn cannot load this .bin file (damaged, truncated or not the weights "
                             f"of {os.path.basename(self.param)})")
        names = self.net.input_names(), self.net.output_names()
        if list(names[0]) != [INPUT_BLOB] or list(names[1]) != [OUTPUT_BLOB]:
            raise ValueError(f"{self.param}: expected one input {INPUT_BLOB} and one output {OUTPUT_BLOB} (a pnnx "
                             f"conversion of an embedding network), got {list(names[0])} → {list(names[1])}")

    def __call__(self, x):
        if hasattr(x, "asnumpy"):
            x = x.asnumpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self.net.create_extractor() as ex:
            ex.input(INPUT_BLOB, self._ncnn.Mat(x, batch_index=0))
            ret, out = ex.extract(OUTPUT_BLOB)
            if ret != 0:
                raise RuntimeError(f"{self.path}: ncnn failed on a batch of shape {x.shape} (error {ret})")
            return np.array(out.numpy(batch_index=0), dtype=np.float32).reshape(len(x), -1)

    def hybridize(self, *args, **kwargs):
        """No-op: ncnn optimises the graph itself."""


def _weight_bytes(layers):
    """Least size of the ``.bin`` an fp32 or fp16 conversion of these layers needs (fp16 weights counted at two
    bytes; None when a layer type with weights is not known here)."""
    total = 0
    for layer in layers:
        p, kind = layer["params"], layer["type"]
        if kind in ("Convolution", "ConvolutionDepthWise", "InnerProduct"):
            bias_key, size_key = ("1", "2") if kind == "InnerProduct" else ("5", "6")
            total += 4 + 2 * int(p.get(size_key, 0))
            total += 4 * int(p.get("0", 0)) if p.get(bias_key, "0") == "1" else 0
        elif kind == "PReLU":
            total += 4 * int(p.get("0", 1))
        elif kind == "MemoryData":
            total += 2 * int(np.prod([max(int(p.get(k, 0)), 1) for k in ("0", "1", "11", "2")]))
        elif kind in ("BatchNorm", "Scale", "Bias", "LayerNorm", "Embed", "Deconvolution", "MultiHeadAttention"):
            return None
    return total


def profile_layers(embedder, image, runs=10):
    """Time per layer type of one image through an :class:`NcnnEmbedder`'s net: ``{type: (count, seconds)}``, the
    mean over ``runs``. The ncnn wheel has no per-layer benchmark build, so each layer's output blob is extracted
    in turn from one extractor that keeps every blob (each extract runs exactly one more layer); the cost of one
    extract call that computes nothing is measured and taken off each layer's time."""
    import time

    x = embedder._ncnn.Mat(np.ascontiguousarray(image, dtype=np.float32).reshape(1, *np.shape(image)[-3:]),
                           batch_index=0)
    layers = [layer for layer in embedder.layers if layer["type"] != "Input"]
    totals, counts, overhead = {}, {}, []
    for _ in range(runs):
        with embedder.net.create_extractor() as ex:
            ex.set_light_mode(False)
            ex.input(INPUT_BLOB, x)
            for _ in range(20):  # an extract of a blob that is already there: the per-call cost
                begin = time.perf_counter()
                ex.extract(INPUT_BLOB)
                overhead.append(time.perf_counter() - begin)
            for layer in layers:
                begin = time.perf_counter()
                for top in layer["tops"]:
                    ex.extract(top)
                totals[layer["type"]] = totals.get(layer["type"], 0.0) + time.perf_counter() - begin
    call = float(np.median(overhead))
    for layer in layers:
        counts[layer["type"]] = counts.get(layer["type"], 0) + 1
    return {kind: (counts[kind], max(totals[kind] / runs - call * counts[kind], 0.0))
            for kind in sorted(totals, key=lambda k: -totals[k])}
