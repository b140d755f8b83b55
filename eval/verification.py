"""Face verification accuracy of a model on ``.bin`` pair sets, with the published protocol (docs/formats.md).

    python eval/verification.py --model PREFIX,EPOCH --data-dir DIR --target lfw,cfp_fp,agedb_30 \
        [--gpus 0,1] [--batch-size 64] [--no-flip] [--out results.json] [--roc roc.png]

``--model`` also takes a model folder (one ``*-symbol.json`` and its params) or an ``.onnx`` file. Library use:
:func:`eval.sets.verify_sets` (what runs after every training epoch), :mod:`eval.metrics`.
"""
import argparse
import json
import os
import sys

if __name__ == "__main__":  # python eval/verification.py, from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from deploy.process import use_all_cores

    use_all_cores()

from deploy.devices import parse_gpus  # noqa: E402
from deploy.embedders import EVAL_BACKENDS, load_embedder  # noqa: E402
from eval.embeddings import extract_embeddings  # noqa: E402
from eval.metrics import check_pairs  # noqa: E402
from eval.report import format_table, plot_roc, results_to_json  # noqa: E402
from eval.sets import load_sets, verify_sets  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(
        description="Face verification accuracy on .bin pair sets with the standard protocol (the published protocol).")
    parser.add_argument("--model", required=True,
                        help="PREFIX,EPOCH checkpoint, an exported model directory, or an .onnx file")
    parser.add_argument("--data-dir", required=True, help="folder holding the <name>.bin sets")
    parser.add_argument("--target", default="",
                        help="comma-separated set names, e.g. lfw,cfp_fp,agedb_30 (default: every .bin)")
    parser.add_argument("--gpus", default="", help="GPU ids, e.g. 0,1 (default: CPU)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-flip", action="store_true", help="embed the images only, not their flips")
    parser.add_argument("--backend", default="auto", choices=EVAL_BACKENDS,
                        help="auto: ONNX Runtime on CPU for checkpoints of this repository's networks (checked "
                             "against MXNet first), else MXNet")
    parser.add_argument("--no-fuse", action="store_true",
                        help="on CPU, do not fuse operators with oneDNN (MKLDNN backend)")
    parser.add_argument("--nfolds", type=int, default=10)
    parser.add_argument("--far", default="1e-3,1e-4", help="comma-separated FAR targets for TAR@FAR")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument("--roc", default="", help="draw the ROC curves of all sets into this PNG")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        far_targets = tuple(float(t) for t in args.far.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--far expects comma-separated numbers such as 1e-3,1e-4, got {args.far!r}") from None
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    ctx = parse_gpus(args.gpus)
    sets = load_sets(args.data_dir, args.target or None)
    for name, (_, issame) in sets.items():
        try:
            check_pairs(issame, args.nfolds)
        except ValueError as err:
            raise ValueError(f"set {name}: {err}") from None
    net, runs_on = load_embedder(args.model, ctx, args.backend, fuse=not args.no_fuse)
    print(f"model {args.model} on {runs_on}; sets: "
          + ", ".join(f"{name} ({len(issame)} pairs)" for name, (_, issame) in sets.items())
          + "; warming up", flush=True)
    first_images = next(iter(sets.values()))[0]
    extract_embeddings(net, first_images[:args.batch_size], ctx=ctx, batch_size=args.batch_size, flip=False)
    results = verify_sets(net, sets, ctx=ctx, batch_size=args.batch_size, flip=not args.no_flip,
                          nfolds=args.nfolds, far_targets=far_targets, progress=True)
    print(format_table(results))
    if args.out:
        payload = {"model": args.model, "flip": not args.no_flip, "nfolds": args.nfolds,
                   "results": results_to_json(results)}
        directory = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(directory, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"results written to {args.out}")
    if args.roc:
        plot_roc(results, args.roc)
        print(f"ROC curves drawn in {args.roc}")
    return 0


if __name__ == "__main__":
    from deploy.process import run_cli

    run_cli(main)
