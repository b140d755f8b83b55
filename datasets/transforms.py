"""Batch-level augmentation and the networks' input layout, vectorised in numpy (no per-pixel Python work).

Images stay raw RGB 0–255 here: every network normalises its own input as its first operators
(:func:`symbols.common.normalize_input`), so nothing in the data path may normalise.
"""
import os

import numpy as np


def to_input(batch_uint8_nhwc):
    """RGB uint8 ``(N, H, W, 3)`` (or one ``(H, W, 3)`` image) → float32 ``(N, 3, H, W)``, values 0–255: the
    networks' input."""
    batch = np.asarray(batch_uint8_nhwc)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB images, got shape {batch.shape}")
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def random_mirror(batch, rng, p=0.5):
    """Flip each image of ``(N, H, W, C)`` left-right with probability ``p`` (in place; returns the batch)."""
    flip = rng.random(batch.shape[0]) < p
    if flip.any():
        batch[flip] = batch[flip, :, ::-1]
    return batch


def color_jitter(batch, rng, strength):
    """Random brightness, contrast and saturation of RGB uint8 ``(N, H, W, 3)``; factors in 1 ± ``strength``.

    Returns a new uint8 batch. ``strength`` 0 returns the input unchanged.
    """
    if strength <= 0:
        return batch
    n = batch.shape[0]
    x = batch.astype(np.float32)
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    sat = rng.uniform(1 - strength, 1 + strength, (n, 1, 1, 1)).astype(np.float32)
    x = grey[..., None] + (x - grey[..., None]) * sat
    con = rng.uniform(1 - strength, 1 + strength, (n, 1, 1, 1)).astype(np.float32)
    mean = grey.mean(axis=(1, 2)).reshape(n, 1, 1, 1)
    bri = rng.uniform(1 - strength, 1 + strength, (n, 1, 1, 1)).astype(np.float32)
    x = ((x - mean) * con + mean) * bri
    return np.clip(x, 0, 255).astype(np.uint8)


class _ProcessRNG:
    """A numpy Generator reseeded in every process (forked workers must not share a random stream)."""

    def __init__(self, seed=None):
        self.seed = seed
        self._pid = None
        self._rng = None

    def __getstate__(self):
        return {"seed": self.seed, "_pid": None, "_rng": None}

    def get(self):
        pid = os.getpid()
        if self._rng is None or self._pid != pid:
            seq = np.random.SeedSequence() if self.seed is None else np.random.SeedSequence([self.seed, pid])
            self._rng = np.random.default_rng(seq)
            self._pid = pid
        return self._rng


class BatchAugment:
    """``batchify_fn`` for the Gluon DataLoader: list of ``(uint8 HWC RGB, label)`` -> ``(data, label)`` NDArrays.

    Stacks, mirrors and colour-jitters the batch with one vectorised pass into float32 NCHW (values 0–255).
    ``shared=True`` puts the arrays in shared memory (for worker processes).
    """

    def __init__(self, mirror=True, color_jitter=0.0, shared=False, seed=None):
        self.mirror = mirror
        self.color_jitter = float(color_jitter)
        self.shared = shared
        self.rng = _ProcessRNG(seed)

    def augment(self, images):
        """Mirror / jitter a uint8 ``(N, H, W, 3)`` batch; returns uint8."""
        rng = self.rng.get()
        if self.mirror:
            images = random_mirror(images, rng)
        return color_jitter(images, rng, self.color_jitter)

    def __call__(self, samples):
        import mxnet as mx
        labels = np.array([s[1] for s in samples], dtype=np.float32)
        if self.color_jitter > 0:
            data = to_input(self.augment(np.stack([s[0] for s in samples])))
        else:  # fast path: mirror while transposing each image into the float batch
            rng = self.rng.get()
            flip = rng.random(len(samples)) < 0.5 if self.mirror else np.zeros(len(samples), bool)
            h, w = samples[0][0].shape[:2]
            data = np.empty((len(samples), 3, h, w), dtype=np.float32)
            for i, (img, _) in enumerate(samples):
                data[i] = (img[:, ::-1] if flip[i] else img).transpose(2, 0, 1)
        ctx = mx.Context("cpu_shared", 0) if self.shared else mx.cpu()
        return mx.nd.array(data, ctx=ctx, dtype=np.float32), mx.nd.array(labels, ctx=ctx, dtype=np.float32)
