"""Generate the synthetic face dataset (train.rec/.idx/property + synth_lfw/cfp_fp/agedb_30 .bin sets).

    python tools/make_synthetic.py out_dir/ [--identities 400] [--images-per-identity 14] [--pairs 600] [--seed 0]

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
    args = parser.parse_args(argv)
    summary = synthetic.generate_dataset(
        args.out_dir, num_identities=args.identities, images_per_identity=args.images_per_identity,
        pairs_per_set=args.pairs, seed=args.seed, eval_identities=args.eval_identities, workers=args.workers,
        quality=args.quality)
    print(f"wrote {summary['num_images']} training images of {summary['num_identities']} identities and "
          f"{len(summary['sets'])} sets of {summary['pairs_per_set']} pairs to {args.out_dir} "
          f"in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    run_cli(main)
