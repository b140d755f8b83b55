"""Pack aligned face images into train.rec/train.idx (MS1MV2 layout, docs/formats.md) plus ``property``.

Input is either a folder with one subfolder per identity, or an im2rec-style list file
(``index<TAB>label<TAB>relative/path`` per line, paths relative to ``--root``). Images that are already
112x112 JPEG/PNG are stored as they are; others are resized (and encoded as JPEG). Labels are remapped to
0..K-1 in sorted order (the mapping is written to ``labels.tsv``).

    python tools/pack_rec.py faces/ out_dir/ [--workers 2] [--quality 95]
    python tools/pack_rec.py train.lst out_dir/ --root images/
"""
import argparse
import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from datasets import DataError, MS1MV2Writer  # noqa: E402
from deploy.process import run_cli  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SIZE = 112


def list_folder(folder):
    """``[(label_name, path), ...]`` for a folder of identity subfolders (sorted)."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a folder or list file")
    entries = []
    for name in sorted(os.listdir(folder)):
        sub = os.path.join(folder, name)
        if not os.path.isdir(sub):
            continue
        for fname in sorted(os.listdir(sub)):
            if fname.lower().endswith(IMAGE_EXTS):
                entries.append((name, os.path.join(sub, fname)))
    if not entries:
        raise DataError(f"{folder}: no images found (expected one subfolder per identity holding "
                        f"{'/'.join(IMAGE_EXTS)} files)")
    return entries


def list_file(path, root):
    """``[(label, path), ...]`` from an im2rec list (``index<TAB>label...<TAB>path``)."""
    entries = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise DataError(f"{path}: line {lineno} is not 'index<TAB>label<TAB>path': {line[:80]!r}")
            try:
                label = float(parts[1])
            except ValueError:
                raise DataError(f"{path}: line {lineno}: label {parts[1]!r} is not a number") from None
            if label != int(label) or label < 0:
                raise DataError(f"{path}: line {lineno}: label {parts[1]} is not a non-negative integer")
            entries.append((int(label), os.path.join(root, parts[-1])))
    if not entries:
        raise DataError(f"{path}: list file holds no entries")
    return entries


def encode_one(job):
    """Worker: ``path -> (bytes or None, error message)``; keeps 112x112 JPEG/PNG bytes, else resizes."""
    path, quality = job
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        return None, f"{path}: cannot read ({err.strerror})"
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
    if img is None:
        return None, f"{path}: not a decodable image"
    if img.shape[:2] == (SIZE, SIZE) and path.lower().endswith((".jpg", ".jpeg", ".png")):
        return raw, None
    if img.shape[:2] != (SIZE, SIZE):
        img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes(), None


def pack(entries, out_dir, workers=2, quality=95, skip_bad=False, prefix="train"):
    """Encode ``entries`` ``[(label, path)]`` in parallel and write the MS1MV2 layout; returns a summary dict."""
    names = sorted({label for label, _ in entries}, key=lambda v: (isinstance(v, str), v))
    index = {name: i for i, name in enumerate(names)}
    entries = sorted(((index[label], path) for label, path in entries), key=lambda e: e[0])
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(path, quality) for _, path in entries]
    if workers > 1:
        pool = multiprocessing.get_context("fork").Pool(workers)
        results = pool.imap(encode_one, jobs, chunksize=64)
    else:
        pool = None
        results = map(encode_one, jobs)
    encoded, bad = [], []
    try:
        for (label, path), (buf, error) in tqdm(zip(entries, results), total=len(entries), desc="encode",
                                                 unit="img"):
            if buf is None:
                if not skip_bad:
                    raise DataError(f"{error} (use --skip-bad to leave such files out)")
                bad.append(error)
                continue
            encoded.append((label, buf))
    finally:
        if pool is not None:
            pool.terminate()
    if not encoded:
        raise DataError(f"no decodable images among {len(entries)} inputs")
    labels_present = sorted({label for label, _ in encoded})
    remap = {old: new for new, old in enumerate(labels_present)}
    writer = MS1MV2Writer(out_dir, len(encoded), len(labels_present), prefix=prefix)
    for label, buf in tqdm(encoded, desc="write", unit="img"):
        writer.add(remap[label], buf)
    writer.close()
    with open(os.path.join(out_dir, "labels.tsv"), "w") as f:
        for old in labels_present:
            f.write(f"{remap[old]}\t{names[old]}\n")
    return dict(images=len(encoded), identities=len(labels_present), skipped=len(bad), skipped_files=bad[:20])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="folder with one subfolder per identity, or an im2rec .lst file")
    parser.add_argument("out_dir", help="output folder for train.rec, train.idx, property")
    parser.add_argument("--root", default="", help="image root for the paths of a list file")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images")
    parser.add_argument("--prefix", default="train", help="file name prefix (train -> train.rec/.idx)")
    parser.add_argument("--skip-bad", action="store_true", help="leave undecodable images out instead of failing")
    args = parser.parse_args(argv)
    if os.path.isfile(args.source):
        entries = list_file(args.source, args.root or os.path.dirname(os.path.abspath(args.source)))
    else:
        entries = list_folder(args.source)
    summary = pack(entries, args.out_dir, workers=args.workers, quality=args.quality, skip_bad=args.skip_bad,
                   prefix=args.prefix)
    print(f"wrote {summary['images']} images of {summary['identities']} identities to {args.out_dir}"
          + (f"; skipped {summary['skipped']} undecodable files" if summary["skipped"] else ""))
    for error in summary["skipped_files"]:
        print(f"  skipped {error}")
    return 0


if __name__ == "__main__":
    run_cli(main)
