"""Compare two face images: cosine similarity of their embeddings and a same/different verdict.

    python tools/compare.py --model export/s/model.onnx a.jpg b.jpg --threshold-from eval.json --set synth_lfw
    python tools/compare.py --model export/s a.jpg b.jpg --landmarks1 "38,51,73,51,56,71,41,92,70,92" \
        --threshold 0.35

Images that are not aligned 112×112 crops need their 5 landmarks (``--landmarks1``/``--landmarks2``, 10
numbers ``x1,y1,...,x5,y5``: eyes, nose, mouth corners). The threshold is a cosine similarity
(``--threshold``) or is taken from a verification run (``--threshold-from``, the JSON written by
``eval/verification.py --out``): the mean of the per-fold thresholds on squared distance ``d`` between
normalised embeddings, converted with ``cos = 1 - d / 2``.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from deploy.process import run_cli, use_all_cores  # noqa: E402

use_all_cores()

import numpy as np  # noqa: E402

from datasets.align import parse_landmarks, prepare_face  # noqa: E402
from tools.embed import embed_faces, load_embedder  # noqa: E402


def threshold_from_results(path, set_name=None):
    """Cosine threshold from ``eval/verification.py --out`` JSON (mean per-fold distance threshold)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: verification results file not found")
    try:
        with open(path) as f:
            payload = json.load(f)
        results = payload.get("results", payload)
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: not a verification results JSON ({err})") from None
    if not isinstance(results, dict) or not results:
        raise ValueError(f"{path}: holds no verification results")
    if set_name is None:
        if len(results) != 1:
            raise ValueError(f"{path}: holds several sets ({', '.join(results)}); choose one with --set")
        set_name = next(iter(results))
    if set_name not in results or "thresholds" not in results[set_name]:
        raise ValueError(f"{path}: no thresholds for set {set_name!r} (sets: {', '.join(results)})")
    distance = float(np.mean(results[set_name]["thresholds"]))
    return 1.0 - distance / 2.0


def compare_faces(net, path1, path2, landmarks1=None, landmarks2=None, threshold=None):
    """``{'similarity': float, 'same': bool or None, 'threshold': float or None}`` for two image files."""
    faces = np.stack([prepare_face(path1, landmarks1), prepare_face(path2, landmarks2)])
    emb = embed_faces(net, faces, batch_size=2)
    similarity = float(np.clip(np.dot(emb[0], emb[1]), -1.0, 1.0))
    same = None if threshold is None else bool(similarity >= threshold)
    return {"similarity": similarity, "same": same, "threshold": threshold}


def build_parser():
    parser = argparse.ArgumentParser(description="Cosine similarity of two face images and a same/different "
                                                 "verdict.")
    parser.add_argument("image1")
    parser.add_argument("image2")
    parser.add_argument("--model", required=True, help="PREFIX,EPOCH, an exported model directory or an .onnx")
    parser.add_argument("--landmarks1", help="10 numbers x1,y1,...,x5,y5 for image1 (if not an aligned crop)")
    parser.add_argument("--landmarks2", help="the same for image2")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="cosine similarity at or above which faces are 'same'")
    group.add_argument("--threshold-from", help="verification results JSON (eval/verification.py --out)")
    parser.add_argument("--set", help="which set's threshold in --threshold-from")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    threshold = args.threshold
    if args.threshold_from:
        threshold = threshold_from_results(args.threshold_from, args.set)
    lm1 = parse_landmarks(args.landmarks1) if args.landmarks1 else None
    lm2 = parse_landmarks(args.landmarks2) if args.landmarks2 else None
    for path in (args.image1, args.image2):  # fail on a bad image before loading the model
        prepare_face(path, lm1 if path == args.image1 else lm2)
    result = compare_faces(load_embedder(args.model), args.image1, args.image2, lm1, lm2, threshold)
    print(f"similarity {result['similarity']:.4f}")
    if result["same"] is None:
        print("no verdict: give --threshold or --threshold-from (a verification run's results)")
    else:
        print(f"verdict: {'same' if result['same'] else 'different'} (threshold {threshold:.4f})")
    return 0


if __name__ == "__main__":
    run_cli(main)
