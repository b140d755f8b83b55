"""Embedding-extraction speed: images/s of eval.embeddings.extract_embeddings per network and mode.

    python tools/bench/embedding.py --network seesaw_shuffle,mobilefacenet --batch-size 64

Modes: ``imperative`` (no hybridize), ``plain`` (hybridized, static_alloc/static_shape), ``fused``
(plain + oneDNN operator fusion, backend='MKLDNN'; CPU only). Images/s counts each image once with its
horizontal flip included in the cost (as in verification), unless ``--no-flip``; images/cpu-s divides by
the process's CPU time instead of wall time. Each mode's embeddings are checked against the first
mode's (largest difference relative to the largest embedding value).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from deploy.process import use_all_cores  # noqa: E402

use_all_cores()

import numpy as np

MODES = ("imperative", "plain", "fused")


def build_parser():
    import argparse
    parser = argparse.ArgumentParser(description="Measure embedding extraction speed (images/s).")
    parser.add_argument("--network", default="seesaw_shuffle,mobilefacenet",
                        help="comma-separated names from symbols.list_models()")
    parser.add_argument("--modes", default="plain,fused", help=f"comma-separated from {', '.join(MODES)}")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=256, help="images embedded per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per mode; the best is reported")
    parser.add_argument("--emb-size", type=int, default=512)
    parser.add_argument("--gpus", default="", help="GPU ids, e.g. 0 (default: CPU; 'fused' is CPU only)")
    parser.add_argument("--no-flip", action="store_true")
    return parser


def benchmark(name, modes, batch_size=64, num_images=256, repeat=3, emb_size=512, ctx=None, flip=True):
    """``[{'network', 'mode', 'images_per_sec', 'images_per_cpu_sec', 'ms_per_batch', 'max_rel_diff'}]``.

    ``images_per_cpu_sec`` divides by the process's CPU time (all threads): less sensitive than wall
    time to other processes sharing the cores, but it counts the threads' spin-waits too.
    """
    import mxnet as mx

    import symbols
    from deploy.devices import as_ctx_list
    from deploy.mxnet_runtime import prepare_for_inference
    from eval.embeddings import extract_embeddings

    ctxs = as_ctx_list(ctx)
    images = np.random.RandomState(0).randint(0, 256, (num_images, 112, 112, 3)).astype(np.uint8)
    rows, reference = [], None
    for mode in modes:
        mx.random.seed(0)
        net = symbols.get_model(name, emb_size=emb_size)
        net.initialize(mx.init.Xavier(), ctx=ctxs)
        if mode == "plain":
            prepare_for_inference(net, ctxs, fuse=False)
        elif mode == "fused":
            if any(c.device_type != "cpu" for c in ctxs):
                raise ValueError("mode 'fused' (oneDNN) is for CPU contexts only")
            prepare_for_inference(net, ctxs, fuse=True)
        extract_embeddings(net, images[:batch_size], ctx=ctxs, batch_size=batch_size, flip=flip)
        best, best_cpu, embeddings = None, None, None
        for _ in range(max(1, repeat)):
            begin, begin_cpu = time.perf_counter(), time.process_time()
            embeddings = extract_embeddings(net, images, ctx=ctxs, batch_size=batch_size, flip=flip)
            seconds, cpu_seconds = time.perf_counter() - begin, time.process_time() - begin_cpu
            best = seconds if best is None else min(best, seconds)
            best_cpu = cpu_seconds if best_cpu is None else min(best_cpu, cpu_seconds)
        if reference is None:
            reference = embeddings
        batches = -(-num_images // batch_size)
        rows.append({"network": name, "mode": mode, "images_per_sec": num_images / best,
                     "images_per_cpu_sec": num_images / max(best_cpu, 1e-9),
                     "ms_per_batch": 1000 * best / batches,
                     "max_rel_diff": float(np.abs(embeddings - reference).max()
                                           / max(float(np.abs(reference).max()), 1e-30))})
    return rows


def main(argv=None):
    args = build_parser().parse_args(argv)
    from deploy.devices import parse_gpus

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if args.batch_size < 1 or args.num_images < 1:
        raise ValueError("--batch-size and --num-images must be >= 1")
    ctx = parse_gpus(args.gpus)
    names = [n.strip() for n in args.network.split(",") if n.strip()]
    import symbols
    missing = [n for n in names if n not in symbols.list_models()]
    if missing:
        raise ValueError(f"unknown network(s) {missing}; choose from {', '.join(symbols.list_models())}")
    print(f"device {', '.join(str(c) for c in ctx)}, batch {args.batch_size}, {args.num_images} images, "
          f"flip {'off' if args.no_flip else 'on'}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    header = f"{'network':<22}{'mode':<12}{'images/s':>10}{'images/cpu-s':>14}{'ms/batch':>10}{'rel. diff':>12}"
    print(header)
    print("-" * len(header))
    for name in names:
        for row in benchmark(name, modes, args.batch_size, args.num_images, args.repeat, args.emb_size, ctx,
                             flip=not args.no_flip):
            print(f"{row['network']:<22}{row['mode']:<12}{row['images_per_sec']:>10.1f}"
                  f"{row['images_per_cpu_sec']:>14.1f}"
                  f"{row['ms_per_batch']:>10.1f}{row['max_rel_diff']:>12.2e}", flush=True)
    import resource
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    from deploy.process import run_cli
    run_cli(main)
