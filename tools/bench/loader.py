"""Benchmark the training loader: images/s decoded + augmented into float32 batches at 112x112.

    python tools/bench/loader.py [--rec train.rec] [--workers 0,1,2] [--batch-size 128] [--batches 40] [--rounds 3]

Without ``--rec`` it uses the default synthetic dataset (generated once into ``.cache/synthetic``). Prints one
line per worker count (decoding threads; 0 = in the iterating thread) with its speed-up over 0 workers and
its rate per core used: the median of ``--rounds`` rounds that each time every worker count in turn, so slow
phases of a shared machine fall on all of them. The first batches (thread start-up, buffer allocation) of each
timing are not timed.
"""
import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root

from datasets import build_train_loader, synthetic  # noqa: E402
from deploy.process import run_cli  # noqa: E402


def bench(rec_path, num_workers, batch_size=128, batches=40, warmup=3, color_jitter=0.0, mirror=True):
    """Images per second of ``build_train_loader`` with ``num_workers`` (timed after ``warmup`` batches)."""
    loader, dataset = build_train_loader(rec_path, batch_size, num_workers=num_workers, mirror=mirror,
                                         color_jitter=color_jitter)
    seen, start = 0, None
    total = warmup + batches
    while seen < total:
        for data, label in loader:
            data.wait_to_read()
            label.wait_to_read()
            seen += 1
            if seen == warmup:
                start = time.perf_counter()
            if seen >= total:
                break
    elapsed = time.perf_counter() - start
    return batches * batch_size / elapsed


def cpu_model():
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rec", default=None, help="train.rec to read (default: synthetic dataset)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated decoding thread counts")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    parser.add_argument("--rounds", type=int, default=3, help="timings of each worker count (median reported)")
    parser.add_argument("--color-jitter", type=float, default=0.0)
    parser.add_argument("--no-mirror", action="store_true", help="no random mirroring (as the recipes' loader)")
    args = parser.parse_args(argv)
    rec = args.rec or os.path.join(synthetic.ensure_default_dataset(), "train.rec")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{rec}: batch {args.batch_size}, {args.batches} timed batches, mirror {'off' if args.no_mirror else 'on'}, "
          f"colour jitter {args.color_jitter}, {cores} CPU cores ({cpu_model()})")
    counts = [int(w) for w in args.workers.split(",")]
    rates = {w: [] for w in counts}
    for _ in range(args.rounds):
        for workers in counts:
            rates[workers].append(bench(rec, workers, args.batch_size, args.batches, color_jitter=args.color_jitter,
                                        mirror=not args.no_mirror))
    base = statistics.median(rates[0]) if 0 in rates else None
    for workers in counts:
        rate = statistics.median(rates[workers])
        used = min(max(workers, 1), cores)
        ratio = f"  {rate / base:4.2f}x workers=0" if base else ""
        rounds = " ".join(f"{r:.0f}" for r in rates[workers])
        print(f"workers={workers}: {rate:8.0f} images/s  {rate / used:7.0f} per core{ratio}  (rounds: {rounds})",
              flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
