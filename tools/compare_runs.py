"""Compare finished training runs: a per-epoch verification table (markdown) and curves.

    python tools/compare_runs.py outputs/rehearsal_arcface outputs/rehearsal_softmax --out outputs/rehearsal.png
    python tools/compare_runs.py runA runB --labels arcface,softmax
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy.process import run_cli  # noqa: E402
from recipes import runs  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", help="training output folders (each with metrics.csv)")
    parser.add_argument("--labels", default="", help="comma-separated names of the runs (default: folder names)")
    parser.add_argument("--out", default="", help="write the curves (PNG) here")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [os.path.basename(os.path.normpath(f)) for f in args.folders]
    if len(labels) != len(args.folders):
        raise ValueError(f"--labels names {len(labels)} runs, {len(args.folders)} folders given")
    loaded = [(label,) + runs.load_run(folder) for label, folder in zip(labels, args.folders)]
    print(runs.table([(label, metrics) for label, metrics, _ in loaded]))
    if args.out:
        runs.plot(loaded, args.out)
        print(f"curves: {args.out}")


if __name__ == "__main__":
    run_cli(main)
