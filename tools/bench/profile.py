"""Where inference time goes, per layer type, from each runtime's own profiler: ncnn, MNN and ONNX Runtime.

    python tools/bench/profile.py                                 # mobilefacenet and seesaw_shuffle, 1 thread, batch 1
    python tools/bench/profile.py --runtimes onnxruntime --batch 32 --threads 2 --json p.json

Each network's folded graph is converted for each runtime in the form it fuses (the ``ncnn``/``mnn`` modes of
``tools/bench/inference.py``) and run ``--runs`` times: ncnn layer by layer (its wheel has no per-layer timer:
:func:`deploy.ncnn_runtime.profile_layers`), MNN with its per-op callbacks (:func:`deploy.mnn_runtime.profile_ops`),
ONNX Runtime with its profiler (kernel time per node of the graph it optimised). ncnn and MNN profile batch 1. The
table gives, per runtime, network and layer type, the layer count and the milliseconds per run, and the
end-to-end latency of the same runner measured without the profiler.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root

import numpy as np  # noqa: E402

from deploy.export import random_images  # noqa: E402
from deploy.lower import LAYOUTS, build_deploy_graph  # noqa: E402
from deploy.runners import layout_for, mobile_embedder  # noqa: E402
from tools.bench.inference import build_network  # noqa: E402

RUNTIMES = ("ncnn", "mnn", "onnxruntime")


def profile_onnxruntime(graph, x, threads, runs, warmup=2):
    """``{op type: (count, seconds per run)}`` from ONNX Runtime's profiler: the kernel time of every node of the
    graph it optimised, over the ``runs`` runs after ``warmup`` ones."""
    import onnxruntime

    from deploy.onnx_runtime import onnx_session_options

    with tempfile.TemporaryDirectory() as work:
        options = onnx_session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(work, "ort")
        session = onnxruntime.InferenceSession(graph.to_onnx().SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run(None, {"data": x})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    first = starts[warmup] if len(starts) > warmup else 0
    totals, nodes = {}, {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first:
            kind = event["args"]["op_name"]
            totals[kind] = totals.get(kind, 0.0) + event["dur"] * 1e-6
            nodes.setdefault(kind, set()).add(event["name"])
    return {kind: (len(nodes[kind]), totals[kind] / runs) for kind in sorted(totals, key=lambda k: -totals[k])}


def end_to_end(call, runs):
    """Median seconds of ``call()`` over ``runs`` calls after two warm-up calls."""
    call()
    call()
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def profile(network, runtime, batch=1, threads=1, runs=20, layout="auto"):
    """One profile: ``{'network', 'runtime', 'layout', 'batch', 'threads', 'latency_ms', 'layers': {type: {'count',
    'ms'}}}``."""
    net = build_network(network)
    layout = layout_for(net, batch, layout, runtime)
    graph = build_deploy_graph(net, layout)
    x = random_images(batch, seed=1)
    if runtime == "onnxruntime":
        from deploy.onnx_runtime import onnx_session

        layers = profile_onnxruntime(graph, x, threads, runs)
        session = onnx_session(graph.to_onnx(), threads=threads)
        latency = end_to_end(lambda: session.run(None, {"data": x}), runs)
    elif runtime in ("ncnn", "mnn"):
        if batch != 1:
            raise ValueError(f"the {runtime} profile is of batch 1 (got --batch {batch})")
        embedder = mobile_embedder(graph, runtime, threads)
        latency = end_to_end(lambda: embedder(x), runs)
        if runtime == "ncnn":
            from deploy.ncnn_runtime import profile_layers

            layers = profile_layers(embedder, x[0], runs)
        else:
            from deploy.mnn_runtime import convert_to_mnn, profile_ops
            from deploy.graph import RUNTIME_FORMS

            with tempfile.TemporaryDirectory() as work:
                path = convert_to_mnn(graph.to_onnx(**RUNTIME_FORMS["mnn"]), os.path.join(work, "m.mnn"))
                layers = profile_ops(path, x[0], threads, runs)
    else:
        raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    return {"network": network, "runtime": runtime, "layout": layout, "batch": batch, "threads": threads,
            "latency_ms": 1e3 * latency,
            "layers": {kind: {"count": count, "ms": 1e3 * seconds} for kind, (count, seconds) in layers.items()}}


def format_profiles(profiles):
    """Markdown: one table per runtime, a row per layer type, a column pair per network."""
    lines = []
    for runtime in dict.fromkeys(p["runtime"] for p in profiles):
        group = [p for p in profiles if p["runtime"] == runtime]
        kinds = list(dict.fromkeys(k for p in group for k in p["layers"]))
        lines += ["", f"{runtime}, batch {group[0]['batch']}, {group[0]['threads']} thread(s): ms per run "
                  "(layer count); end-to-end latency without the profiler last", "",
                  "| layer type | " + " | ".join(p["network"] + (f" ({p['layout']})" if "seesaw" in p["network"] else "")
                                                for p in group) + " |",
                  "|---|" + "---|" * len(group)]
        for kind in kinds:
            cells = [f"{p['layers'][kind]['ms']:.3f} ({p['layers'][kind]['count']})" if kind in p["layers"] else ""
                     for p in group]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines.append("| sum of layers | " + " | ".join(f"{sum(v['ms'] for v in p['layers'].values()):.3f}"
                                                      for p in group) + " |")
        lines.append("| end to end | " + " | ".join(f"{p['latency_ms']:.3f}" for p in group) + " |")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(description="Per-layer-type profiles of the networks in ncnn, MNN and ONNX "
                                                 "Runtime, from each runtime's own profiler.")
    parser.add_argument("--networks", default="mobilefacenet,seesaw_shuffle", help="comma-separated names")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated, from {','.join(RUNTIMES)}")
    parser.add_argument("--batch", type=int, default=1, help="batch size (ncnn and MNN: 1 only)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every runtime")
    parser.add_argument("--runs", type=int, default=20, help="profiled runs per network and runtime")
    parser.add_argument("--layout", default="auto", help="folded-graph layout: auto (per batch size) or one of "
                        + ", ".join(LAYOUTS))
    parser.add_argument("--json", default="", help="write the profiles here")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if not runtimes or any(r not in RUNTIMES for r in runtimes):
        raise ValueError(f"--runtimes {args.runtimes!r}: valid runtimes are {', '.join(RUNTIMES)}")
    if args.layout != "auto" and args.layout not in LAYOUTS:
        raise ValueError(f"--layout {args.layout!r}: valid layouts are auto, {', '.join(LAYOUTS)}")
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    profiles = [profile(network, runtime, args.batch, args.threads, args.runs, args.layout)
                for runtime in runtimes for network in networks]
    print(format_profiles(profiles))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(profiles, f, indent=1)
        print(f"profiles written to {args.json}")
    return 0


if __name__ == "__main__":
    from deploy.process import run_cli

    run_cli(main)
