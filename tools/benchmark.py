"""Inference speed of the networks in every way of running them, as ratios to MobileFaceNet in the same run.

    python tools/benchmark.py                                   # defaults below, about 3-5 minutes on 2 cores
    python tools/benchmark.py --networks mobilefacenet,seesaw_shuffle --modes fused,onnxruntime --json b.json
    python tools/benchmark.py --model-dir seesaw_shuffle=export/ss/model   # weights of a checkpoint

Modes: ``imperative`` (Gluon, not hybridized), ``hybrid`` (hybridized, static memory), ``fused``
(hybridized with the oneDNN backend: conv+BN+activation fusion), ``deploy`` (the folded inference graph of
:mod:`symbols.deploy` run by MXNet with oneDNN), ``int8`` (oneDNN INT8 quantization, calibrated on random
inputs — speed only), ``onnxruntime`` (the folded graph exported to ONNX, run by ONNX Runtime on the CPU).

For every network × mode: parameters and MAdds (``tools.flops``; for the folded graphs the MAdds the graph
really performs), batch-1 latency (median over ``--runs`` calls after warm-up), batch-32 throughput
(median), the process's resident-memory growth while building and running at batch 32 (peak, sampled),
and achieved GFLOP/s (2 × MAdds × images/s). Each figure is also given as a ratio to the baseline
(``mobilefacenet``) in the same mode. Modes are measured one after the other; within a mode the runners of
every network are built first, then timed round-robin — one call of each per round — so drift of the
machine's load affects every network alike (and memory holds one mode's graphs). The machine's matrix-multiply
GFLOP/s (a large ``mx.nd.dot`` and ``numpy.dot``) is measured in the same run, before and after.
Prints a table, writes JSON (``--json``).
"""
import argparse
import gc
import json
import os
import platform
import sys
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

import symbols  # noqa: E402
from symbols.deploy import build_deploy_graph  # noqa: E402

MODES = ("imperative", "hybrid", "fused", "deploy", "int8", "onnxruntime")
DEFAULT_NETWORKS = "mobilefacenet,seesaw_shuffle,seesaw_share"
DEFAULT_MODES = "hybrid,fused,deploy,int8,onnxruntime"
BASELINE = "mobilefacenet"


# ---------------------------------------------------------------------------------------------- machine
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


def matmul_gflops(size=2048, repeats=5):
    """Measured single-precision matrix-multiply GFLOP/s: ``{'mxnet_dot': ..., 'numpy_dot': ...}`` (best of
    ``repeats`` products of two ``size``×``size`` matrices)."""
    flops = 2.0 * size ** 3
    a = mx.nd.random.uniform(shape=(size, size))
    b = mx.nd.random.uniform(shape=(size, size))
    mx.nd.dot(a, b).wait_to_read()
    best = min(_timed(lambda: mx.nd.dot(a, b).wait_to_read()) for _ in range(repeats))
    an, bn = a.asnumpy(), b.asnumpy()
    np.dot(an, bn)
    best_np = min(_timed(lambda: np.dot(an, bn)) for _ in range(repeats))
    return {"mxnet_dot": flops / best / 1e9, "numpy_dot": flops / best_np / 1e9}


def _timed(fn):
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
    import onnxruntime

    return {"cpu": model, "cores": os.cpu_count(), "load_average": list(os.getloadavg()),
            "mxnet": mx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------- runners
def build_network(name, model_dir=None):
    """An inference-mode network with weights: from an exported checkpoint, or freshly initialised with
    BatchNorm statistics that keep activations in range (speed does not depend on the values)."""
    if model_dir:
        from tools.export import load_source

        net, _ = load_source(model_dir)
        return net
    kwargs = {}
    if ":" in name:
        name, act = name.split(":", 1)
        kwargs["act"] = act
    net = symbols.get_model(name, **kwargs)
    symbols.init_model(net)
    net(mx.nd.zeros((1, 3, 112, 112)))
    return net


def make_runner(net, mode, batch_sizes, calib=None):
    """``{batch: callable}`` running ``net`` in ``mode``; each callable runs one forward and waits for it.
    Returns ``(runners, madds)`` where ``madds`` is the per-image MAdds the mode executes (None: as source)."""
    from tools import export

    inputs = {b: np.random.RandomState(b).normal(0, 0.6, (b, 3, 112, 112)).astype(np.float32) for b in batch_sizes}
    nd_inputs = {b: mx.nd.array(x) for b, x in inputs.items()}
    madds = None
    if mode == "imperative":
        block = net
    elif mode in ("hybrid", "fused"):
        sym, args, aux = export.traced_symbol(net)
        blocks = {b: export.symbol_block(sym, args, aux, backend="MKLDNN" if mode == "fused" else None)
                  for b in batch_sizes}
        return {b: _mx_call(blocks[b], nd_inputs[b]) for b in batch_sizes}, madds
    elif mode == "deploy":
        graph = build_deploy_graph(net, export.default_layout(net))
        madds = graph.madds()
        sym, args, aux = graph.to_symbol()
        blocks = {b: export.symbol_block(sym, args, aux) for b in batch_sizes}
        return {b: _mx_call(blocks[b], nd_inputs[b]) for b in batch_sizes}, madds
    elif mode == "int8":
        qsym, qargs, qaux = _quiet(lambda: export.quantize_int8(net, calib))
        blocks = {b: export.int8_block(qsym, qargs, qaux) for b in batch_sizes}
        return {b: _mx_call(blocks[b], nd_inputs[b]) for b in batch_sizes}, madds
    elif mode == "onnxruntime":
        graph = build_deploy_graph(net, export.default_layout(net))
        madds = graph.madds()
        session = export.onnx_session(graph.to_onnx())
        return {b: (lambda s=session, x=inputs[b]: s.run(None, {"data": x})) for b in batch_sizes}, madds
    else:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    return {b: _mx_call(block, nd_inputs[b]) for b in batch_sizes}, madds


def _mx_call(block, x):
    return lambda: block(x).wait_to_read()


def _quiet(fn):
    """Run ``fn`` with the C++ library's stderr log lines (quantization pass chatter) silenced."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


# ---------------------------------------------------------------------------------------------- benchmark
def run_benchmark(networks, modes, runs1=100, runs32=8, batch=32, warmup=3, model_dirs=None, progress=True):
    """Build every (network, mode) runner, time them interleaved, return the result dict (see module doc)."""
    from tools.flops import count_symbol

    model_dirs = model_dirs or {}
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    info = machine_info()
    matmul_before = matmul_gflops()
    say(f"matrix multiply: mx.nd.dot {matmul_before['mxnet_dot']:.1f} GFLOP/s, numpy {matmul_before['numpy_dot']:.1f}")
    calib = np.random.RandomState(0).normal(0, 0.6, (32, 3, 112, 112)).astype(np.float32)
    nets, counts = {}, {}
    for name in networks:
        nets[name] = build_network(name, model_dirs.get(name))
        counts[name] = count_symbol(nets[name](mx.sym.var("data")))
    entries = []
    for mode in modes:
        # One mode at a time: its runners for every network are built, timed round-robin and freed, so
        # memory holds one mode's graphs (MXNet keeps every batch-32 activation of a static graph).
        group = []
        for name in networks:
            for batch_size in (1, batch):
                start = time.time()
                with PeakMemory() as mem:
                    runners, madds = make_runner(nets[name], mode, (batch_size,), calib)
                    for _ in range(warmup):
                        runners[batch_size]()
                entry = next((e for e in group if e["network"] == name), None)
                if entry is None:
                    entry = {"network": name, "mode": mode, "params": counts[name]["params"],
                             "madds_source": counts[name]["madds"], "madds": madds or counts[name]["madds"],
                             "memory_mb": 0.0, "runners": {}, "t1": [], "tb": []}
                    group.append(entry)
                entry["runners"][batch_size] = runners[batch_size]
                if batch_size == batch:
                    entry["memory_mb"] = mem.peak_growth / 2 ** 20
                say(f"built {name:16s} {mode:12s} batch {batch_size:3d} in {time.time() - start:5.1f}s, "
                    f"memory +{mem.peak_growth / 2 ** 20:.0f} MB")
        for _ in range(runs1):
            for e in group:
                e["t1"].append(_timed(e["runners"][1]))
        for _ in range(runs32):
            for e in group:
                e["tb"].append(_timed(e["runners"][batch]))
        for e in group:
            del e["runners"]
            say(f"  {e['network']:16s} {mode:12s} batch 1 {1e3 * np.median(e['t1']):7.2f} ms, "
                f"batch {batch} {batch / np.median(e['tb']):7.1f} img/s")
        entries.extend(group)
        gc.collect()
    matmul_after = matmul_gflops()
    rows = []
    for e in entries:
        latency = float(np.median(e["t1"]))
        throughput = batch / float(np.median(e["tb"]))
        rows.append({"network": e["network"], "mode": e["mode"], "params": e["params"], "madds": e["madds"],
                     "madds_source": e["madds_source"], "latency_ms": 1e3 * latency,
                     "latency_p10_ms": 1e3 * float(np.percentile(e["t1"], 10)),
                     "latency_p90_ms": 1e3 * float(np.percentile(e["t1"], 90)),
                     "throughput": throughput, "memory_mb": e["memory_mb"],
                     "gflops_b1": 2 * e["madds"] / latency / 1e9, "gflops": 2 * e["madds"] * throughput / 1e9})
    matmul = max(matmul_before["mxnet_dot"], matmul_after["mxnet_dot"], matmul_before["numpy_dot"],
                 matmul_after["numpy_dot"])
    base = {r["mode"]: r for r in rows if r["network"] == BASELINE}
    for r in rows:
        r["matmul_fraction"] = r["gflops"] / matmul
        b = base.get(r["mode"])
        if b is not None:
            r["ratio"] = {"params": r["params"] / b["params"], "madds": r["madds"] / b["madds"],
                          "latency": r["latency_ms"] / b["latency_ms"], "throughput": r["throughput"] / b["throughput"],
                          "memory": r["memory_mb"] / max(b["memory_mb"], 1e-9), "gflops": r["gflops"] / b["gflops"]}
    info["load_average_end"] = list(os.getloadavg())
    return {"machine": info, "matmul_gflops": {"before": matmul_before, "after": matmul_after, "best": matmul},
            "batch": batch, "runs_batch1": runs1, "runs_batch": runs32, "rows": rows}


def format_table(result):
    """Markdown table of a :func:`run_benchmark` result."""
    batch = result["batch"]
    lines = [f"| network | mode | params | MAdds | b1 latency ms (×mfn) | b{batch} img/s (×mfn) | GFLOP/s b{batch} "
             f"(% matmul) | memory MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ratio = r.get("ratio", {})
        lat = f"{r['latency_ms']:.2f}" + (f" ({ratio['latency']:.2f})" if ratio else "")
        thr = f"{r['throughput']:.0f}" + (f" ({ratio['throughput']:.2f})" if ratio else "")
        lines.append(f"| {r['network']} | {r['mode']} | {r['params'] / 1e6:.2f}M | {r['madds'] / 1e6:.0f}M | {lat} | "
                     f"{thr} | {r['gflops']:.1f} ({100 * r['matmul_fraction']:.0f}%) | {r['memory_mb']:.0f} |")
    m = result["machine"]
    lines.append("")
    lines.append(f"{m['cpu']}, {m['cores']} cores; matrix multiply {result['matmul_gflops']['best']:.1f} GFLOP/s; "
                 f"load average {m['load_average'][0]:.2f} → {m['load_average_end'][0]:.2f}; "
                 f"MXNet {m['mxnet']}, ONNX Runtime {m['onnxruntime']}")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(description="Latency/throughput of the networks per way of running them, "
                                                 "as ratios to mobilefacenet in the same run.")
    parser.add_argument("--networks", default=DEFAULT_NETWORKS,
                        help="comma-separated (name or name:act, e.g. mobilefacenet:swish); the first row of "
                             f"each ratio is {BASELINE}, which is added if missing")
    parser.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated, from {','.join(MODES)}")
    parser.add_argument("--runs", type=int, default=100, help="timed batch-1 calls per runner")
    parser.add_argument("--runs-batch", type=int, default=8, help="timed batch calls per runner")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput figure")
    parser.add_argument("--model-dir", action="append", default=[],
                        help="NAME=PREFIX,EPOCH (or a model directory): use a checkpoint's weights for NAME")
    parser.add_argument("--json", default="", help="write the results here")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"--modes {args.modes!r}: valid modes are {', '.join(MODES)}")
    for name in networks:
        if name.split(":")[0] not in symbols.list_models():
            raise ValueError(f"unknown network {name!r}; valid: {', '.join(symbols.list_models())}")
    if BASELINE not in networks:
        networks.insert(0, BASELINE)
    if args.runs < 5 or args.runs_batch < 2 or args.batch < 2:
        raise ValueError("--runs must be >= 5, --runs-batch >= 2 and --batch >= 2")
    model_dirs = {}
    for item in args.model_dir:
        if "=" not in item:
            raise ValueError(f"--model-dir {item!r}: expected NAME=PREFIX,EPOCH or NAME=DIRECTORY")
        key, value = item.split("=", 1)
        model_dirs[key] = value
    result = run_benchmark(networks, modes, args.runs, args.runs_batch, args.batch, model_dirs=model_dirs)
    print(format_table(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    from tools._cli import run_cli

    run_cli(main)
