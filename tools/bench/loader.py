"""Benchmark the training loader: images/s decoded + augmented + normalised at 112x112.

    python tools/bench/loader.py [--rec train.rec] [--workers 0,1,2] [--batch-size 128] [--batches 40]

Without ``--rec`` it uses the default synthetic dataset (generated once into ``.cache/synthetic``).
Prints one line per worker count; the first batches (worker start-up) are not timed.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root

from datasets import build_train_loader, synthetic  # noqa: E402
from deploy.process import run_cli  # noqa: E402


def bench(rec_path, num_workers, batch_size=128, batches=40, warmup=3, color_jitter=0.0):
    """Images per second of ``build_train_loader`` with ``num_workers`` (timed after ``warmup`` batches)."""
    loader, dataset = build_train_loader(rec_path, batch_size, num_workers=num_workers, mirror=True,
                                         color_jitter=color_jitter)
    seen, start = 0, None
    total = warmup + batches
    while seen < total:
        for data, label in loader:
            data.wait_to_read()
            seen += 1
            if seen == warmup:
                start = time.perf_counter()
            if seen >= total:
                break
    elapsed = time.perf_counter() - start
    del loader
    return batches * batch_size / elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rec", default=None, help="train.rec to read (default: synthetic dataset)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    parser.add_argument("--color-jitter", type=float, default=0.0)
    args = parser.parse_args(argv)
    rec = args.rec or os.path.join(synthetic.ensure_default_dataset(), "train.rec")
    print(f"{rec}: batch {args.batch_size}, {args.batches} timed batches, mirror on, "
          f"colour jitter {args.color_jitter}, {os.cpu_count()} CPU cores")
    for workers in (int(w) for w in args.workers.split(",")):
        rate = bench(rec, workers, args.batch_size, args.batches, color_jitter=args.color_jitter)
        print(f"workers={workers}: {rate:8.0f} images/s")
    return 0


if __name__ == "__main__":
    run_cli(main)
