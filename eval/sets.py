"""Verification sets: loading the ``.bin`` pair sets of a folder and evaluating a model on each."""
import os
import time

import datasets

from .embeddings import embed_views, xnorm
from .metrics import check_pairs, evaluate

DEFAULT_FAR_TARGETS = (1e-3, 1e-4)


def load_sets(data_dir, targets=None):
    """Load verification sets: ``{name: (images uint8 (2N,112,112,3), issame bool (N,))}``.

    ``targets``: names (``'lfw'`` -> ``DATA_DIR/lfw.bin``), a comma-separated string, or None for every
    ``*.bin`` in ``data_dir``. Raises ValueError naming the available sets when one is missing.
    """
    available = datasets.find_bins(data_dir)
    if targets is None:
        names = list(available)
    elif isinstance(targets, str):
        names = [t.strip() for t in targets.split(",") if t.strip()]
    else:
        names = list(targets)
    names = [n[:-len(".bin")] if n.endswith(".bin") else n for n in names]
    if not names:
        raise ValueError(f"{data_dir}: no verification sets (*.bin) to evaluate")
    missing = [n for n in names if n not in available]
    if missing:
        listing = ", ".join(available) or "none"
        raise ValueError(f"{data_dir}: no verification set {', '.join(missing)} "
                         f"(expected {missing[0]}.bin; available: {listing})")
    return {name: datasets.load_bin(available[name]) for name in names}


def verify_sets(net, sets, ctx=None, batch_size=64, flip=True, nfolds=10, far_targets=DEFAULT_FAR_TARGETS,
                progress=False):
    """Embed and evaluate every set: ``{name: result}``.

    ``sets``: ``{name: (images uint8 (2N,112,112,3), issame (N,))}`` as from :func:`load_sets`.
    Each result is :func:`evaluate`'s dict (XNorm over the original and flipped embeddings apart, as InsightFace
    reports it) plus ``images_per_sec`` (embedding throughput, flips included in the cost) and ``embed_seconds``.
    ``net`` is used as given (no hybridization here).
    """
    results = {}
    for name, (images, issame) in sets.items():
        check_pairs(issame, nfolds)
        begin = time.perf_counter()
        views = embed_views(net, images, ctx=ctx, batch_size=batch_size, flip=flip, progress=progress)
        seconds = time.perf_counter() - begin
        embeddings = views[0] + views[1] if flip else views[0]
        try:
            result = evaluate(embeddings, issame, nfolds=nfolds, far_targets=far_targets, xnorm=xnorm(views))
        except ValueError as err:
            raise ValueError(f"set {name}: {err}") from None
        result["images_per_sec"] = len(images) / max(seconds, 1e-9)
        result["embed_seconds"] = seconds
        results[name] = result
    return results


def load_set_files(path):
    """Every set of a folder of ``.bin`` files, or the one set of a ``.bin`` file: ``{name: (images, issame)}``."""
    if os.path.isdir(path):
        return load_sets(path)
    if path.endswith(".bin"):
        return {os.path.basename(path)[:-len(".bin")]: datasets.load_bin(path)}
    raise ValueError(f"{path}: expected a folder of .bin sets or a .bin file")
