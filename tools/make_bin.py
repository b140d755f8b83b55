"""Build a verification ``.bin`` (docs/formats.md) from a pairs list.

Pairs list formats (auto-detected per line):
  ``path1 path2 1|0``                         (1 = same person; paths relative to ``--root``)
  LFW ``pairs.txt``: ``name i j`` (same) and ``name1 i name2 j`` (different), images at
  ``root/name/name_%04d.jpg``; a leading ``folds pairs`` header line is ignored.

Images of 112x112 JPEG/PNG are stored as they are; others are resized and encoded as JPEG.

    python tools/make_bin.py pairs.txt out/lfw.bin --root aligned/
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from datasets import DataError, write_bin  # noqa: E402
from deploy.process import run_cli  # noqa: E402
from tools.pack_rec import encode_one  # noqa: E402


def parse_pairs(path, root, lfw_ext=".jpg"):
    """``[(path1, path2, issame), ...]`` from a pairs list (see module doc)."""
    pairs = []
    with open(path) as f:
        lines = [line.split() for line in f]
    for lineno, parts in enumerate(lines, 1):
        if not parts:
            continue
        if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
            continue
        def lfw(name, i):
            return os.path.join(root, name, f"{name}_{int(i):04d}{lfw_ext}")
        if len(parts) == 3 and parts[2] in ("0", "1", "True", "False", "true", "false") and not parts[1].isdigit():
            same = parts[2] in ("1", "True", "true")
            pairs.append((os.path.join(root, parts[0]), os.path.join(root, parts[1]), same))
        elif len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            pairs.append((lfw(parts[0], parts[1]), lfw(parts[0], parts[2]), True))
        elif len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
            pairs.append((lfw(parts[0], parts[1]), lfw(parts[2], parts[3]), False))
        else:
            raise DataError(f"{path}: line {lineno} is neither 'path1 path2 0|1' nor an LFW pairs line: "
                            f"{' '.join(parts)[:80]!r}")
    if not pairs:
        raise DataError(f"{path}: no pairs found")
    return pairs


def make_bin(pairs, out_path, quality=95):
    """Encode every pair image and write ``out_path``; returns the number of pairs."""
    images, issame = [], []
    for a, b, same in tqdm(pairs, desc="pairs", unit="pair"):
        for p in (a, b):
            buf, error = encode_one((p, quality))
            if buf is None:
                raise DataError(error)
            images.append(buf)
        issame.append(same)
    write_bin(out_path, images, issame)
    return len(pairs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", help="pairs list file")
    parser.add_argument("out", help="output .bin path")
    parser.add_argument("--root", default="", help="folder the image paths are relative to")
    parser.add_argument("--ext", default=".jpg", help="image extension for LFW-format lines")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.pairs):
        raise DataError(f"{args.pairs}: pairs list not found")
    pairs = parse_pairs(args.pairs, args.root, args.ext)
    n = make_bin(pairs, args.out, args.quality)
    same = sum(p[2] for p in pairs)
    print(f"wrote {args.out}: {n} pairs ({same} same, {n - same} different)")
    if n % 10:
        print(f"note: {n} pairs is not a multiple of 10; the 10-fold protocol needs equal folds")
    return 0


if __name__ == "__main__":
    run_cli(main)
