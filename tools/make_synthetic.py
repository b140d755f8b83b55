"""Generate the synthetic face dataset (train.rec/.idx/property + synth_lfw/cfp_fp/agedb_30 .bin sets).

    python tools/make_synthetic.py out_dir/ [--identities 400] [--images-per-identity 14] [--pairs 600] [--seed 0]
    python tools/make_synthetic.py ms1mv2_shape/ --identities 85742 --images-per-identity 3 --renderer cheap

``--renderer cheap`` draws a few hundred base faces once and varies them cheaply per identity and image (the
records are the same valid 112x112 JPEGs in the MS1MV2 layout): MS1MV2's class count in minutes, for smoke runs
and measurements at that shape (docs/training.md).

Deterministic from ``--seed``; verification sets use identities that are not in the training set.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import synthetic  # noqa: E402
from deploy.process import run_cli  # noqa: E402


def main(argv=None):
    d = synthetic.DEFAULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--identities", type=int, default=d["num_identities"], help="training identities")
    parser.add_argument("--images-per-identity", type=int, default=d["images_per_identity"])
    parser.add_argument("--pairs", type=int, default=d["pairs_per_set"], help="pairs per .bin (multiple of 20)")
    parser.add_argument("--eval-identities", type=int, default=d["eval_identities"],
                        help="identities per verification set (disjoint from training)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: CPU count)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--renderer", choices=synthetic.RENDERERS, default="full",
                        help="full: every image drawn under the full nuisance; cheap: base faces varied per identity "
                             "and image, for large class counts (default: full)")
    parser.add_argument("--base-faces", type=int, default=synthetic.CHEAP_BASE_FACES,
                        help="--renderer cheap: base faces the identities share (default: %(default)s)")
    args = parser.parse_args(argv)
    summary = synthetic.generate_dataset(
        args.out_dir, num_identities=args.identities, images_per_identity=args.images_per_identity,
        pairs_per_set=args.pairs, seed=args.seed, eval_identities=args.eval_identities, workers=args.workers,
        quality=args.quality, renderer=args.renderer, base_faces=args.base_faces)
    print(f"wrote {summary['num_images']} training images of {summary['num_identities']} identities and "
          f"{len(summary['sets'])} sets of {summary['pairs_per_set']} pairs to {args.out_dir} "
          f"in {summary['seconds']} s" + (f" ({args.renderer} renderer)" if args.renderer != "full" else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
