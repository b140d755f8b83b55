"""Inference speed of the networks in every way of running them, as ratios to MobileFaceNet in the same run.

    python tools/bench/inference.py                                   # defaults below, about 3-5 minutes on 2 cores
    python tools/bench/inference.py --networks mobilefacenet,seesaw_shuffle --modes fused,onnxruntime --json b.json
    python tools/bench/inference.py --model-dir seesaw_shuffle=export/ss/model   # weights of a checkpoint
    python tools/bench/inference.py --networks seesaw_shuffle,seesaw_shuffle:no_se,seesaw_shuffle:relu --modes onnxruntime
                                     # what the SE blocks and swish cost (rows that are not the network)
    python tools/bench/inference.py --networks mobilefacenet,seesaw_shuffle --modes ncnn,mnn,onnxruntime,onnxruntime_int8 \
        --threads 1,2 --no-memory    # the mobile runtimes with one and two threads (one child process per count)

Modes: ``imperative`` (Gluon, not hybridized), ``hybrid`` (hybridized, static memory), ``fused``
(hybridized with the oneDNN backend: conv+BN+activation fusion), ``deploy`` (the folded inference graph of
:mod:`deploy.lower` run by MXNet with oneDNN), ``int8`` (oneDNN INT8 quantization, calibrated on random
inputs — speed only), ``onnxruntime`` (the folded graph exported to ONNX, run by ONNX Runtime on the CPU),
``onnxruntime_int8`` (its static INT8 quantization, calibrated on random inputs — speed only), ``ncnn`` and ``mnn``
(the folded graph converted by pnnx / MNN's converter in the form each fuses, run by their Python bindings).

For every network × mode: parameters and MAdds (``tools.flops``; for the folded graphs the MAdds the graph
really performs), batch-1 latency (median over ``--runs`` calls after warm-up), batch-32 throughput
(median), the process's resident-memory growth while building and running at batch 32 (peak, sampled),
and achieved GFLOP/s (2 × MAdds × images/s). Each figure is also given as a ratio to the baseline
(``mobilefacenet``) in the same mode. Modes are measured one after the other; within a mode the runners of
every network are built first, then timed round-robin — one call of each per round — so drift of the
machine's load affects every network alike (and memory holds one mode's graphs). The machine's matrix-multiply
GFLOP/s (the best of ``mx.nd.dot``, ``numpy.dot`` and ONNX Runtime's MatMul on 2048² matrices) is measured
in the same run, before and after; the best is the denominator of the "% matmul" column. From the command
line, the ONNX Runtime sessions share one thread pool (``deploy.onnx_runtime.share_onnx_threads``): with a pool
per session, the threads of the session timed last spin on the cores while the next one runs.
``--threads 1,2`` runs the whole benchmark once per thread count, each in a child process (MXNet's OpenMP and
ONNX Runtime's shared pool are sized once per process); ratios are always within one run.
Prints a table, writes JSON (``--json``).
"""
import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root

if __name__ == "__main__" and "--threads" in sys.argv[:-1]:  # OpenMP reads this when MXNet loads
    if sys.argv[sys.argv.index("--threads") + 1].isdigit():  # one count; a list runs one child per count
        os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

import symbols  # noqa: E402
from deploy.checkpoint import load_source  # noqa: E402
from deploy.int8 import int8_block, quantize_int8  # noqa: E402
from deploy.export import random_images  # noqa: E402
from deploy.lower import LAYOUTS  # noqa: E402
from deploy.onnx_runtime import onnx_session_options, share_onnx_threads  # noqa: E402
from deploy.runners import GRAPH_MODES, MODES, make_runner  # noqa: E402
from tools.bench.common import PeakMemory, machine_info, matmul_gflops, timed  # noqa: E402
from tools.flops import count_symbol  # noqa: E402
DEFAULT_NETWORKS = "mobilefacenet,seesaw_shuffle,seesaw_share"
DEFAULT_MODES = "hybrid,fused,deploy,int8,onnxruntime"
BASELINE = "mobilefacenet"


# ---------------------------------------------------------------------------------------------- machine
# ---------------------------------------------------------------------------------------------- runners
def parse_network(spec):
    """``name[:option...]`` → ``(name, constructor kwargs, folded-graph kwargs)``.

    An option is an activation for the network's constructor (``mobilefacenet:swish``, ``seesaw_shuffle:relu``)
    or ``no_se``: the folded graph without the SE blocks (``deploy`` and ``onnxruntime`` modes only). Both
    change what is computed; such rows measure what a part of the network costs, they are not the network.
    """
    name, *options = spec.split(":")
    kwargs, graph = {}, {}
    for option in options:
        if option == "no_se":
            graph["se"] = False
        elif option and "act" not in kwargs:
            kwargs["act"] = option
        else:
            raise ValueError(f"network {spec!r}: expected name[:activation][:no_se]")
    return name, kwargs, graph


def build_network(name, model_dir=None):
    """An inference-mode network with weights: from an exported checkpoint, or freshly initialised with
    BatchNorm statistics that keep activations in range (speed does not depend on the values). ``name`` may
    carry options (:func:`parse_network`); the folded-graph ones are for :func:`make_runner`."""
    if model_dir:
        net, _ = load_source(model_dir)
        return net
    name, kwargs, _ = parse_network(name)
    net = symbols.get_model(name, **kwargs)
    symbols.init_model(net)
    net(mx.nd.zeros((1, 3, 112, 112)))
    return net


def memory_of(name, mode, batch_size, layout="auto", model_dir=None):
    """Peak resident-memory growth (MB) of building and running one runner, measured in a fresh process
    (MXNet pools freed memory, so in-process figures after the first runner would read as zero)."""
    import subprocess

    command = [sys.executable, os.path.abspath(__file__), "--_memory", f"{name}|{mode}|{batch_size}|{layout}|"
               f"{model_dir or ''}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("memory_mb ")]
    if done.returncode != 0 or not lines:
        return float("nan")
    return float(lines[-1].split()[1])


def _memory_child(spec):
    name, mode, batch_size, layout, model_dir = spec.split("|")
    net = build_network(name, model_dir or None)
    calib = random_images(32)
    if mode == "int8":  # calibration (on one image, so it leaves no batch-sized memory pooled) is not counted
        quantized = quantize_int8(net, calib[:1])
        with PeakMemory() as mem:
            block = int8_block(*quantized)
            x = mx.nd.zeros((int(batch_size), 3, 112, 112))
            for _ in range(2):
                block(x).wait_to_read()
    else:
        with PeakMemory() as mem:
            runner, _, _ = make_runner(net, mode, int(batch_size), calib, layout, **parse_network(name)[2])
            for _ in range(2):
                runner()
    print(f"memory_mb {mem.peak_growth / 2 ** 20:.1f}")
    return 0


# ---------------------------------------------------------------------------------------------- benchmark
def run_benchmark(networks, modes, runs1=100, runs32=5, batch=32, warmup=3, model_dirs=None, layout="auto",
                  threads=None, memory=True, progress=True):
    """Build every (network, mode) runner, time them interleaved, return the result dict (see module doc)."""
    model_dirs = model_dirs or {}
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    info = machine_info()
    info["threads"] = threads or os.cpu_count()
    info["onnx_thread_pool"] = "per session" if onnx_session_options().use_per_session_threads else "shared"
    matmul_before = matmul_gflops(threads=threads)
    say("matrix multiply GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in matmul_before.items()))
    calib = random_images(32)
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
            if parse_network(name)[2] and mode not in GRAPH_MODES:
                continue  # a folded-graph option (no_se): not measurable in this mode
            entry = {"network": name, "mode": mode, "threads": info["threads"], "params": counts[name]["params"],
                     "madds_source": counts[name]["madds"], "runners": {}, "layouts": {}, "t1": [], "tb": []}
            for batch_size in (1, batch):
                start = time.time()
                runner, madds, used_layout = make_runner(nets[name], mode, batch_size, calib, layout, threads,
                                                         **parse_network(name)[2])
                for _ in range(warmup):
                    runner()
                entry["runners"][batch_size] = runner
                entry["madds" if batch_size == 1 else "madds_batch"] = madds or counts[name]["madds"]
                if used_layout:
                    entry["layouts"][batch_size] = used_layout
                say(f"built {name:20s} {mode:12s} batch {batch_size:3d} in {time.time() - start:5.1f}s"
                    + (f" (layout {used_layout})" if used_layout else ""))
            group.append(entry)
        for _ in range(runs1):
            for e in group:
                e["t1"].append(timed(e["runners"][1]))
        for _ in range(runs32):
            for e in group:
                e["tb"].append(timed(e["runners"][batch]))
        for e in group:
            del e["runners"]
            say(f"  {e['network']:20s} {mode:12s} batch 1 {1e3 * np.median(e['t1']):7.2f} ms, "
                f"batch {batch} {batch / np.median(e['tb']):7.1f} img/s")
        entries.extend(group)
        gc.collect()
    matmul_after = matmul_gflops(threads=threads)
    if memory:
        say(f"memory: one fresh process per network and mode at batch {batch}")
    rows = []
    for e in entries:
        latency = float(np.median(e["t1"]))
        throughput = batch / float(np.median(e["tb"]))
        mem = memory_of(e["network"], e["mode"], batch, layout, model_dirs.get(e["network"])) if memory else float("nan")
        rows.append({"network": e["network"], "mode": e["mode"], "threads": e["threads"], "params": e["params"],
                     "madds": e["madds"],
                     "madds_batch": e["madds_batch"], "madds_source": e["madds_source"], "layouts": e["layouts"],
                     "latency_ms": 1e3 * latency,
                     "latency_p10_ms": 1e3 * float(np.percentile(e["t1"], 10)),
                     "latency_p90_ms": 1e3 * float(np.percentile(e["t1"], 90)),
                     "throughput": throughput, "memory_mb": mem,
                     "gflops_b1": 2 * e["madds"] / latency / 1e9, "gflops": 2 * e["madds_batch"] * throughput / 1e9})
    matmul = max(matmul_before["best"], matmul_after["best"])
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
    """Markdown table of a :func:`run_benchmark` result (or of :func:`merge_runs`'s, one run per thread count)."""
    batch = result["batch"]
    lines = [f"| network | mode | threads | params | MAdds run | b1 latency ms (×mfn) | b{batch} img/s (×mfn) | "
             f"GFLOP/s b{batch} (% matmul) | memory MB b{batch} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ratio = r.get("ratio", {})
        lat = f"{r['latency_ms']:.2f}" + (f" ({ratio['latency']:.2f})" if ratio else "")
        thr = f"{r['throughput']:.0f}" + (f" ({ratio['throughput']:.2f})" if ratio else "")
        lines.append(f"| {r['network']} | {r['mode']} | {r.get('threads', '')} | {r['params'] / 1e6:.2f}M | "
                     f"{_madds(r)} | {lat} | {thr} | {r['gflops']:.1f} ({100 * r['matmul_fraction']:.0f}%) | "
                     f"{r['memory_mb']:.0f} |")
    for (int8_mode, fp32_mode), label in INT8_PAIRS.items():
        speedups = int8_speedups(result, int8_mode, fp32_mode)
        if speedups:
            lines.append("")
            lines.append(f"{label} batch-{batch} throughput: "
                         + ", ".join(f"{name} {x:.2f}×" for name, x in speedups.items()))
    for m, matmul in zip(result.get("machines", [result["machine"]]), result.get("matmuls", [result["matmul_gflops"]])):
        lines.append("")
        lines.append(f"{m['cpu']}, {m['cores']} cores; matrix multiply {matmul['best']:.1f} GFLOP/s; "
                     f"{m['threads']} threads; load average {m['load_average'][0]:.2f} → "
                     f"{m['load_average_end'][0]:.2f}; MXNet {m['mxnet']}, ONNX Runtime {m['onnxruntime']}")
    return "\n".join(lines)


# (INT8 mode, its fp32 mode) → the label of their throughput ratio under the table
INT8_PAIRS = {("int8", "fused"): "INT8 / fused fp32", ("onnxruntime_int8", "onnxruntime"): "ONNX Runtime INT8 / fp32"}


def int8_speedups(result, int8_mode="int8", fp32_mode="fused"):
    """{network (with its thread count when the result holds several): INT8 batch throughput / fp32 throughput} for
    networks measured in both modes (default: MXNet's oneDNN INT8 against the fused fp32 graph)."""
    rows = {(r["network"], r["mode"], r.get("threads")): r for r in result["rows"]}
    several = len({key[2] for key in rows}) > 1
    return {(f"{name} ({threads} threads)" if several else name):
            rows[(name, int8_mode, threads)]["throughput"] / rows[(name, fp32_mode, threads)]["throughput"]
            for name, mode, threads in rows if mode == int8_mode and (name, fp32_mode, threads) in rows}


def merge_runs(results):
    """One result of several :func:`run_benchmark` runs (one per thread count): their rows one after the other,
    each with its run's ratios; the machine figures of every run."""
    merged = dict(results[0])
    merged["rows"] = [row for result in results for row in result["rows"]]
    merged["machines"] = [result["machine"] for result in results]
    merged["matmuls"] = [result["matmul_gflops"] for result in results]
    return merged


def _madds(row):
    text = f"{row['madds'] / 1e6:.0f}M"
    if row["madds_batch"] != row["madds"]:
        text += f" / {row['madds_batch'] / 1e6:.0f}M"
    return text


def build_parser():
    parser = argparse.ArgumentParser(description="Latency/throughput of the networks per way of running them, "
                                                 "as ratios to mobilefacenet in the same run.")
    parser.add_argument("--networks", default=DEFAULT_NETWORKS,
                        help="comma-separated names, each optionally with :ACTIVATION (mobilefacenet:swish, "
                             "seesaw_shuffle:relu) and/or :no_se (the folded graph without SE blocks; deploy and "
                             "onnxruntime modes only, skipped in the others) — such rows show what a part "
                             f"costs, they are not the network; the first row of each ratio is {BASELINE}, "
                             "which is added if missing")
    parser.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated, from {','.join(MODES)}")
    parser.add_argument("--runs", type=int, default=100, help="timed batch-1 calls per runner")
    parser.add_argument("--runs-batch", type=int, default=5, help="timed batch calls per runner")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput figure")
    parser.add_argument("--model-dir", action="append", default=[],
                        help="NAME=PREFIX,EPOCH (or a model directory): use a checkpoint's weights for NAME")
    parser.add_argument("--layout", default="auto", help="folded-graph layout for deploy/onnxruntime: auto "
                        "(per batch size) or one of " + ", ".join(LAYOUTS))
    parser.add_argument("--threads", default="0", help="CPU threads for MXNet (OMP), ONNX Runtime, ncnn and MNN "
                        "(default 0: all cores); a comma-separated list runs the benchmark once per count, each in a "
                        "child process, e.g. 1,2 "
                        "(default: all cores)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-runner memory measurement")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--_memory", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args._memory:
        return _memory_child(args._memory)
    if args.layout != "auto" and args.layout not in LAYOUTS:
        raise ValueError(f"--layout {args.layout!r}: valid layouts are auto, {', '.join(LAYOUTS)}")
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"--modes {args.modes!r}: valid modes are {', '.join(MODES)}")
    for name in networks:
        base, _, graph = parse_network(name)
        if base not in symbols.list_models():
            raise ValueError(f"unknown network {name!r}; valid: {', '.join(symbols.list_models())}")
        if graph and (not set(modes) & set(GRAPH_MODES) or "seesaw" not in base):
            raise ValueError(f"{name!r}: no_se applies to the Seesaw networks' folded graph, so to the modes "
                             f"{','.join(GRAPH_MODES)} (it is skipped in the others)")
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
    try:
        thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]
    except ValueError:
        thread_counts = []
    if not thread_counts or min(thread_counts) < 0:
        raise ValueError(f"--threads {args.threads!r}: expected a thread count or a comma-separated list (0: all cores)")
    if len(thread_counts) > 1:
        result = merge_runs([_child_run(args, networks, modes, t) for t in thread_counts])
    else:
        share_onnx_threads(thread_counts[0] or None)
        result = run_benchmark(networks, modes, args.runs, args.runs_batch, args.batch, model_dirs=model_dirs,
                               layout=args.layout, threads=thread_counts[0] or None, memory=not args.no_memory)
    print(format_table(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"results written to {args.json}")
    return 0


def _child_run(args, networks, modes, threads):
    """:func:`run_benchmark` with ``threads`` in a child process (its progress lines pass through): its result."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--networks", ",".join(networks), "--modes",
                   ",".join(modes), "--runs", str(args.runs), "--runs-batch", str(args.runs_batch), "--batch",
                   str(args.batch), "--layout", args.layout, "--threads", str(threads), "--json", out]
        command += [f"--model-dir={item}" for item in args.model_dir] + (["--no-memory"] if args.no_memory else [])
        print(f"== {threads or 'all'} threads", flush=True)
        done = subprocess.run(command)
        if done.returncode != 0 or not os.path.isfile(out):
            raise RuntimeError(f"the benchmark with --threads {threads} failed (exit code {done.returncode})")
        with open(out) as f:
            return json.load(f)


if __name__ == "__main__":
    from deploy.process import run_cli

    run_cli(main)
