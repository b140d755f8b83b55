"""Fused CPU training operators: one forward and one backward pass where MXNet makes several.

MXNet 1.9.1 on CPU spends most of a Seesaw/MobileFaceNet training step outside the convolutions: swish as
``sigmoid`` + ``mul``, the SE gate's pooling and ``broadcast_mul`` (slow generic backward kernels), PReLU's
backward, the channel shuffle's concat/reshape/``SwapAxis`` and the uneven channel splits, and BatchNorm followed
by swish. ``seesaw_ops.cc`` replaces each with one-pass operators computing the same values (BatchNorm running
statistics included); :mod:`recipes.fused.layers` writes the networks' blocks with them. The networks in
:mod:`symbols` know nothing of this: a network built for CPU training is switched over::

    if recipes.fused.available():
        recipes.fused.enable(net)      # before net.hybridize()

Graphs traced for checkpoints use the standard blocks (:func:`standard_layers`), so a saved ``-symbol.json``
never needs this library.
"""
import contextlib

from .layers import FusedBatchNormSwish, FusedConvBNAct, FusedSeesawBlock, fused_class
from .library import OPS, available, build, cache_dir, library_path, load, unavailable_reason

__all__ = ["OPS", "available", "build", "cache_dir", "enable", "library_path", "load", "standard_layers",
           "unavailable_reason"]


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def enable(net):
    """Switch ``net``'s blocks to their fused classes (parameters untouched); returns how many were switched.

    Call before ``net.hybridize()`` (a cached graph keeps the operators it was traced with). Raises
    RuntimeError when the library cannot be loaded.
    """
    if not load():
        raise RuntimeError(f"fused operators unavailable: {unavailable_reason()}")
    count = 0
    for block in list(_walk(net)):
        cls = fused_class(block)
        if cls is None:
            continue
        block.__class__ = cls
        count += 1
        if cls is FusedConvBNAct:  # its BatchNorm applies the swish
            block.bn.__class__ = FusedBatchNormSwish
    for stage in getattr(net, "stages", []):
        for block in stage:
            if isinstance(block, FusedSeesawBlock):
                block.emit_pieces = True
    return count


@contextlib.contextmanager
def standard_layers(net):
    """Within this context ``net``'s blocks are their standard classes again (for tracing an exported graph)."""
    switched = [(block, block.__class__) for block in _walk(net) if block.__class__.__module__ == __name__ + ".layers"]
    try:
        for block, cls in switched:
            block.__class__ = cls.__mro__[1]
        yield net
    finally:
        for block, cls in switched:
            block.__class__ = cls
