"""Augmentation and the networks' input layout: decoded images written straight into float32 NCHW batches.

Images stay raw RGB 0–255 here: every network normalises its own input as its first operators
(:func:`symbols.common.normalize_input`), so nothing in the data path may normalise.
"""
import cv2
import numpy as np

_GREY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights of R, G, B


def to_input(batch_uint8_nhwc):
    """RGB uint8 ``(N, H, W, 3)`` (or one ``(H, W, 3)`` image) → float32 ``(N, 3, H, W)``, values 0–255: the
    networks' input."""
    batch = np.asarray(batch_uint8_nhwc)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB images, got shape {batch.shape}")
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def write_input(bgr, out, flip=False):
    """Write OpenCV's BGR uint8 ``(H, W, 3)`` image into ``out``, float32 ``(3, H, W)`` RGB 0–255, mirrored
    left-right if ``flip``: one strided cast, so a decoded image is copied once, without holding the GIL."""
    view = bgr[:, ::-1] if flip else bgr
    np.copyto(out, view.transpose(2, 0, 1)[::-1], casting="unsafe")


def random_mirror(batch, rng, p=0.5):
    """Flip each image of ``(N, H, W, C)`` left-right with probability ``p`` (in place; returns the batch)."""
    flip = rng.random(batch.shape[0]) < p
    if flip.any():
        batch[flip] = batch[flip, :, ::-1]
    return batch


def jitter_factors(rng, n, strength):
    """Saturation, contrast and brightness factors of ``n`` images, float32 ``(n, 3)``, each in 1 ± ``strength``."""
    factors = [rng.uniform(1 - strength, 1 + strength, n) for _ in range(3)]
    return np.stack(factors, axis=1).astype(np.float32)


def jitter_input(image, saturation, contrast, brightness):
    """Colour-jitter one float32 ``(3, H, W)`` RGB 0–255 image in place; the result is clipped and floored,
    as if it were stored as uint8 again.

    Saturation blends with the grey image, contrast with its mean grey, brightness scales: all three fold
    into ``a * x + b * grey + c``.
    """
    grey = image[0] * np.float32(_GREY[0])
    grey += image[1] * np.float32(_GREY[1])
    grey += image[2] * np.float32(_GREY[2])
    mean = grey.mean(dtype=np.float32)
    a = np.float32(saturation * contrast * brightness)
    b = np.float32((1 - saturation) * contrast * brightness)
    c = np.float32(mean * (1 - contrast) * brightness)
    grey *= b
    grey += c
    image *= a
    image += grey
    np.clip(image, 0, 255, out=image)
    np.floor(image, out=image)
    return image


def color_jitter(batch, rng, strength):
    """Random brightness, contrast and saturation of RGB uint8 ``(N, H, W, 3)``; factors in 1 ± ``strength``.

    Returns a new uint8 batch. ``strength`` 0 returns the input unchanged.
    """
    if strength <= 0:
        return batch
    factors = jitter_factors(rng, batch.shape[0], strength)
    x = to_input(batch)
    for image, row in zip(x, factors):
        jitter_input(image, *row)
    return x.transpose(0, 2, 3, 1).astype(np.uint8)


class BatchAugment:
    """Mirror and colour jitter of a batch, drawn up front for the whole batch from its own seeded generator.

    :meth:`plan` draws every image's choices at once (from ``(seed, *key)``, e.g. epoch, rank and batch index),
    and :meth:`write` applies them one image at a time; so a batch is the same whichever thread writes which
    of its images.
    """

    def __init__(self, mirror=False, color_jitter=0.0, seed=0):
        self.mirror = bool(mirror)
        self.color_jitter = float(color_jitter)
        self.seed = np.random.SeedSequence().entropy if seed is None else int(seed)

    def plan(self, n, *key, rng=None):
        """``(flips bool (n,), factors float32 (n, 3) or None)`` for ``n`` images; ``rng`` overrides the seeding."""
        if rng is None:
            rng = np.random.default_rng([self.seed, *key])
        flips = rng.random(n) < 0.5 if self.mirror else np.zeros(n, dtype=bool)
        factors = jitter_factors(rng, n, self.color_jitter) if self.color_jitter > 0 else None
        return flips, factors

    @staticmethod
    def write(bgr, out, plan, j):
        """Write decoded BGR image number ``j`` of a planned batch into ``out`` (float32 ``(3, H, W)``)."""
        flips, factors = plan
        write_input(bgr, out, flips[j])
        if factors is not None:
            jitter_input(out, *factors[j])

    @staticmethod
    def stage(bgr, row, plan, j):
        """Copy decoded BGR image number ``j`` of a planned batch into ``row`` (uint8 ``(H, W, 3)``), mirrored if
        planned; OpenCV's flip writes in place without the GIL."""
        if plan[0][j]:
            cv2.flip(bgr, 1, row)
        else:
            row[...] = bgr

    @staticmethod
    def write_staged(stage, out, plan, lo):
        """Cast staged BGR images ``lo, lo + 1, ...`` (uint8 ``(n, H, W, 3)``) into ``out`` (float32 ``(n, 3, H, W)``
        RGB 0–255) in one call, then colour-jitter them as planned: the same values as :meth:`write`."""
        np.copyto(out, stage.transpose(0, 3, 1, 2)[:, ::-1], casting="unsafe")
        factors = plan[1]
        if factors is not None:
            for image, row in zip(out, factors[lo:lo + len(out)]):
                jitter_input(image, *row)
