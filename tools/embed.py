"""Embed face images with an exported model: images or folders → ``.npy`` embeddings + a names file.

    python tools/embed.py --model export/seesaw_shuffle/model.onnx faces/ --output faces.npy
    python tools/embed.py --model output/model,15 a.jpg b.jpg --landmarks landmarks.txt --output ab.npy

``--model``: ``PREFIX,EPOCH``, a model folder or an ``.onnx`` file. Images that are aligned 112×112 crops are used as they are; any other image needs its five
landmarks (left eye, right eye, nose, left and right mouth corner, pixel x y) in ``--landmarks``: a text
file with lines ``<image path or file name> x1 y1 x2 y2 x3 y3 x4 y4 x5 y5`` (commas allowed) or a JSON
object ``{name: [10 numbers]}``; the face is then aligned to the ArcFace template (``datasets.align``).
Each embedding is that of the image plus its horizontal flip (as verification does), L2-normalised unless
``--raw``.
Writes ``OUTPUT`` (float32 (N, D)) and ``OUTPUT`` with ``.txt`` (one image path per line, same order).
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
from deploy.checkpoint import load_model  # noqa: E402
from deploy.mxnet_runtime import prepare_for_inference  # noqa: E402
from eval.embeddings import extract_embeddings  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(inputs):
    """Image files from a mix of files and folders (folders: image extensions, recursively, sorted)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(item) for name in names
                           if name.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"{item}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image file or folder")
    return paths


def read_landmarks(path):
    """``{key: (5, 2) landmarks}`` from a text or JSON landmarks file (keys: paths as written)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: landmarks file not found")
    with open(path) as f:
        text = f.read()
    table = {}
    if text.lstrip().startswith("{"):
        try:
            for key, values in json.loads(text).items():
                table[key] = parse_landmarks(values)
        except (json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"{path}: not a JSON object of name → 10 numbers ({err})") from None
        return table
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            table[parts[0]] = parse_landmarks(parts[1:])
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from None
    return table


def _lookup(table, path):
    for key in (path, os.path.normpath(path), os.path.basename(path)):
        if key in table:
            return table[key]
    return None


def load_faces(paths, landmarks=None):
    """uint8 (N, 112, 112, 3) RGB crops of ``paths``, aligned where ``landmarks`` ({key: points}) has them."""
    return np.stack([prepare_face(p, _lookup(landmarks or {}, p)) for p in paths])


def embed_faces(net, faces, batch_size=32, flip=True, normalize=True):
    """Embeddings (N, D) float32 of uint8 face crops (N, 112, 112, 3) with a loaded model."""
    emb = extract_embeddings(net, faces, batch_size=min(batch_size, len(faces)), flip=flip)
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32)


def load_embedder(spec):
    """Model for :func:`embed_faces` from ``PREFIX,EPOCH``, a model folder or an .onnx file."""
    return prepare_for_inference(load_model(spec))


def build_parser():
    parser = argparse.ArgumentParser(description="Embed face images (112×112 aligned crops, or aligned from "
                                                 "5 landmarks) into a .npy file plus a names file.")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--model", required=True, help="PREFIX,EPOCH, an exported model directory or an .onnx")
    parser.add_argument("--output", required=True, help="embeddings .npy to write (names go to the .txt)")
    parser.add_argument("--landmarks", help="landmarks file (text lines 'name x1 y1 ... x5 y5' or JSON)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-flip", action="store_true", help="embed the image only, not its flip as well")
    parser.add_argument("--raw", action="store_true", help="write raw embeddings (not L2-normalised)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.output.endswith(".npy"):
        raise ValueError(f"--output {args.output!r}: give a .npy path")
    paths = list_images(args.inputs)
    faces = load_faces(paths, read_landmarks(args.landmarks) if args.landmarks else None)
    net = load_embedder(args.model)
    emb = embed_faces(net, faces, args.batch_size, flip=not args.no_flip, normalize=not args.raw)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    np.save(args.output, emb)
    names = args.output[:-4] + ".txt"
    with open(names, "w") as f:
        f.write("".join(p + "\n" for p in paths))
    print(f"{len(paths)} embeddings of size {emb.shape[1]} written to {args.output}; names in {names}")
    return 0


if __name__ == "__main__":
    run_cli(main)
