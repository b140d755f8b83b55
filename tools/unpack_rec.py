"""Unpack training records (either layout of docs/formats.md) into image folders, to look at the data.

Writes ``out_dir/<label>/<key>.jpg`` (the stored bytes, unchanged). A ``.bin`` verification set is unpacked
into ``out_dir/pairs/<i>_{a,b}_{same,diff}.jpg``.

    python tools/unpack_rec.py faces_emore/train.rec out/ [--identities 20] [--limit 1000]
    python tools/unpack_rec.py faces_emore/lfw.bin out/ [--limit 100]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
from tqdm import tqdm  # noqa: E402

from datasets import FaceRecordDataset, load_bin  # noqa: E402
from datasets.recordio import unpack_header  # noqa: E402
from deploy.process import run_cli  # noqa: E402


def unpack_records(rec_path, out_dir, identities=None, limit=None, idx_path=None):
    """Write the images of ``rec_path`` into per-label folders; returns the number of images written."""
    dataset = FaceRecordDataset(rec_path, idx_path=idx_path)
    count = 0
    order = range(len(dataset))
    for i in tqdm(order, desc="unpack", unit="img"):
        label = int(dataset.labels[i])
        if identities is not None and label >= identities:
            continue
        key = int(dataset.keys[i])
        _, _, _, _, body = unpack_header(dataset.reader.read(key), f"{rec_path}: record {key}")
        ext = ".png" if body[:4] == b"\x89PNG" else ".jpg"
        folder = os.path.join(out_dir, str(label))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{key}{ext}"), "wb") as f:
            f.write(body)
        count += 1
        if limit is not None and count >= limit:
            break
    return count


def unpack_bin(path, out_dir, limit=None):
    """Write the decoded pairs of a ``.bin`` set as PNG files; returns the number of pairs written."""
    images, issame = load_bin(path)
    folder = os.path.join(out_dir, "pairs")
    os.makedirs(folder, exist_ok=True)
    n = len(issame) if limit is None else min(limit, len(issame))
    for i in range(n):
        tag = "same" if issame[i] else "diff"
        for side, img in (("a", images[2 * i]), ("b", images[2 * i + 1])):
            cv2.imwrite(os.path.join(folder, f"{i:05d}_{side}_{tag}.png"), img[..., ::-1])
    return n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="train.rec (with its .idx next to it) or a .bin verification set")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--idx", default=None, help="index file (default: the .rec path with .idx)")
    parser.add_argument("--identities", type=int, default=None, help="only labels below this number")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many images (pairs for .bin)")
    args = parser.parse_args(argv)
    if args.source.endswith(".bin"):
        n = unpack_bin(args.source, args.out_dir, args.limit)
        print(f"wrote {n} pairs to {os.path.join(args.out_dir, 'pairs')}")
    else:
        n = unpack_records(args.source, args.out_dir, args.identities, args.limit, args.idx)
        print(f"wrote {n} images to {args.out_dir}")
    return 0


if __name__ == "__main__":
    run_cli(main)
