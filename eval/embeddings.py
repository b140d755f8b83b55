"""Embedding extraction for verification: every image and its horizontal flip, summed (the published protocol),
and XNorm over the two views as InsightFace reports it."""
import mxnet as mx
import numpy as np

from datasets import to_input
from deploy.checkpoint import check_embedding_output
from deploy.devices import as_ctx_list
from deploy.onnx_runtime import OnnxEmbedder


def _check_param_contexts(net, ctxs):
    """Gluon needs the parameters on every device the batch is split over; say so before MXNet does."""
    if not hasattr(net, "collect_params"):
        return
    for param in net.collect_params().values():
        try:
            have = param.list_ctx()
        except RuntimeError:
            return
        missing = [c for c in ctxs if c not in have]
        if missing:
            raise ValueError(f"the network's parameters live on {have} but embedding was asked on {ctxs}; "
                             "load the model with that ctx or call net.collect_params().reset_ctx(ctx)")
        return


def _forward(net, x, ctxs):
    """Run ``net`` on float32 NCHW ``x``, split over ``ctxs``; returns an NDArray or numpy ``(N, D)``."""
    if isinstance(net, OnnxEmbedder):
        return net(x)
    if len(ctxs) == 1:
        return net(mx.nd.array(x, ctx=ctxs[0]))
    parts = mx.gluon.utils.split_and_load(x, ctxs, even_split=False)
    return mx.nd.concat(*[net(part).as_in_context(ctxs[0]) for part in parts], dim=0)


def embed_views(net, images, ctx=None, batch_size=64, flip=True, progress=False):
    """Raw embeddings of every image and, when ``flip``, of its horizontal flip: ``[original, flipped]``.

    ``images``: uint8 ``(M, 112, 112, 3)`` RGB, given to the network as raw 0–255 floats (it normalises its own
    input). Batches of ``batch_size`` over the devices ``ctx`` (list; default CPU); the last batch is padded to
    full size (so hybridized static-shape networks keep one shape) and trimmed, except for an
    :class:`OnnxEmbedder` with a dynamic batch. Each view is float32 ``(M, D)``, not normalised. ``progress``
    shows a tqdm bar.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (M, H, W, 3) RGB, got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ValueError("no images to embed")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    ctxs = as_ctx_list(ctx)
    if len(ctxs) > batch_size:
        raise ValueError(f"batch size {batch_size} is smaller than the number of devices ({len(ctxs)})")
    _check_param_contexts(net, ctxs)
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="embedding", unit="batch", leave=False, dynamic_ncols=True)
    pad = not (isinstance(net, OnnxEmbedder) and net.fixed_batch is None)
    views = None
    with mx.autograd.predict_mode():
        for start in starts:
            chunk = images[start:start + batch_size]
            count = len(chunk)
            if count < batch_size and pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - count, axis=0)])
            x = to_input(chunk)
            inputs = [x, np.ascontiguousarray(x[:, :, :, ::-1])] if flip else [x]
            for k, batch in enumerate(inputs):
                out = _forward(net, batch, ctxs)
                check_embedding_output(out, len(chunk), "network")
                out = out.asnumpy() if hasattr(out, "asnumpy") else np.asarray(out)
                if views is None:
                    views = [np.empty((len(images), out.shape[1]), dtype=np.float32) for _ in inputs]
                views[k][start:start + count] = out[:count]
    return views


def extract_embeddings(net, images, ctx=None, batch_size=64, flip=True, progress=False):
    """Float32 ``(M, D)``: each image's raw embedding plus that of its horizontal flip when ``flip`` (the published
    protocol; :func:`eval.metrics.evaluate` L2-normalises after the sum). Arguments as :func:`embed_views`."""
    views = embed_views(net, images, ctx, batch_size, flip, progress)
    return views[0] + views[1] if flip else views[0]


def xnorm(views):
    """Mean L2 norm of every raw embedding row of every view (original and flipped counted apart), as
    InsightFace's verification reports it."""
    return float(np.mean(np.concatenate([np.linalg.norm(v.astype(np.float64), axis=1) for v in views])))
