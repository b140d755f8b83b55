"""The networks' blocks written with the fused CPU training operators (same parameters, same values).

Each class here subclasses a block of :mod:`symbols` and replaces only its ``hybrid_forward``;
:func:`recipes.fused.enable` switches a network's blocks to them. A Seesaw block also fuses along its data flow,
because a library operator keeps all its inputs and outputs until its backward has run (``lib_api`` hands them
all to the backward): both expansions' BatchNorm + swish and the concat/shuffle write the shuffled map in one
operator (``seesaw_bn_swish_concat``), the SE scale writes the two projection inputs (``seesaw_scale_split``),
and a shuffle block hands the next block its output as the two channel pieces that block's uneven split cuts.
"""
import threading

import mxnet as mx
from mxnet.gluon import nn

from symbols.common import ConvBNAct, FaceNet, SEBlock, Swish, normalize_input
from symbols.seesaw import SeesawBlock

_lock = threading.Lock()
_shared = {}


def is_train_flag(F):
    """A (1,) float input for operators that must know MXNet's mode: exactly 1 in inference, 0 or 2 in training.

    lib_api operators are not told whether the graph runs in training mode (``fcomp_t`` sees attributes, tensors
    and resources only), Dropout is: ``Dropout(ones(1), p=0.5)``. Symbolic traces share one such node (it has no
    inputs, so any graph may hold it), so a cached graph computes it once per forward; imperative calls make
    their own.
    """
    if F is not mx.sym:
        return F.Dropout(F.ones(shape=(1,)), p=0.5)
    with _lock:
        if "is_train" not in _shared:
            _shared["is_train"] = mx.sym.Dropout(mx.sym.ones(shape=(1,), name="seesaw_is_train_one"), p=0.5,
                                                 name="seesaw_is_train")
        return _shared["is_train"]


class FusedSwish(Swish):
    """``seesaw_swish``: one pass forward and backward."""

    def hybrid_forward(self, F, x):
        return F.seesaw_swish(x)


class FusedPReLU(nn.PReLU):
    """``seesaw_prelu`` (MXNet's ``LeakyReLU(prelu)`` backward is ~50× slower than a convolution's)."""

    def hybrid_forward(self, F, x, alpha):
        return F.seesaw_prelu(x, alpha)


class FusedBatchNormSwish(nn.BatchNorm):
    """``swish(BatchNorm(x))`` in one ``seesaw_bn_swish``: batch statistics and running-statistic updates as
    ``BatchNorm`` in training, running statistics in inference; the BatchNorm output is not kept for the
    backward (it is recomputed from ``x``)."""

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        return F.seesaw_bn_swish(x, gamma, beta, running_mean, running_var, is_train_flag(F),
                                 eps=self._kwargs["eps"], momentum=self._kwargs["momentum"])[0]


class FusedConvBNAct(ConvBNAct):
    """Conv → ``seesaw_bn_swish`` (its ``bn`` is a :class:`FusedBatchNormSwish`, which applies the swish)."""

    def hybrid_forward(self, F, x):
        return self.bn(self.conv(x))


class FusedSEBlock(SEBlock):
    """SE with ``seesaw_spatial_mean`` pooling and the ``seesaw_scale`` product (both have one-pass backwards)."""

    def pool(self, F, x):
        return F.seesaw_spatial_mean(x)

    def hybrid_forward(self, F, x):
        return F.seesaw_scale(x, self.gate(F, x))


class FusedSeesawBlock(SeesawBlock):
    """Seesaw block on fused operators; takes and (``emit_pieces``) returns its tensor as two channel pieces.

    ``x`` (N, in_c, H, W), or ``x`` and ``rest``: its first in_c/4 and its other channels (what the previous
    shuffle block emitted). Returns (N, out_c, H/s, W/s), or with ``emit_pieces`` its two pieces
    (out_c/4 | 3out_c/4) when the block is a shuffle block without a skip branch.
    """

    emit_pieces = False

    def hybrid_forward(self, F, x, rest=None):
        whole = x if rest is None else None
        if rest is None:
            first, rest = F.seesaw_split(x, point=self.in_quarter)
        else:
            first = x
        y = self.dw(self._expand(F, first, rest))
        low, high = F.seesaw_scale_split(y, self.se.gate(F, y), point=self._projection_point())
        if self.variant == "shuffle" and self.skip is None:
            pieces = [self.project_1(low), self.project_3(high)]  # (out/4 | 3out/4): the next block's split
            if self.residual:
                pieces = [pieces[0] + first, pieces[1] + rest]
            return tuple(pieces) if self.emit_pieces else F.concat(*pieces, dim=1)
        if whole is None:
            whole = F.concat(first, rest, dim=1)
        return self._finish(F, whole, self._project(F, low, high))

    def _expand(self, F, first, rest):
        """The two expansions, concatenated (and shuffled): both BatchNorm + swish and the concat + shuffle in one
        ``seesaw_bn_swish_concat`` when the activation is swish."""
        groups = 2 if self.variant == "shuffle" else 1
        bns = (self.expand_1.bn, self.expand_3.bn)
        if not all(isinstance(bn, FusedBatchNormSwish) for bn in bns):
            a, b = self.expand_1(first), self.expand_3(rest)
            return F.seesaw_concat_shuffle(a, b, groups=2) if groups == 2 else F.concat(a, b, dim=1)
        a, b = self.expand_1.conv(first), self.expand_3.conv(rest)
        if F is mx.sym:
            params = [p.var() for bn in bns for p in (bn.gamma, bn.beta, bn.running_mean, bn.running_var)]
        else:
            params = [p.data(a.context) for bn in bns for p in (bn.gamma, bn.beta, bn.running_mean, bn.running_var)]
        kwargs = bns[0]._kwargs
        if any(bn._kwargs["eps"] != kwargs["eps"] or bn._kwargs["momentum"] != kwargs["momentum"] for bn in bns):
            raise ValueError("the two expansion BatchNorms of a Seesaw block differ in eps or momentum")
        return F.seesaw_bn_swish_concat(a, b, *params, is_train_flag(F), groups=groups, eps=kwargs["eps"],
                                        momentum=kwargs["momentum"])[0]


class FusedFaceNet(FaceNet):
    """Stem → blocks → head, passing each block's output on as the channel pieces it emits."""

    def hybrid_forward(self, F, x):
        pieces = (self.stem(normalize_input(F, x)),)
        for stage in self.stages:
            for block in stage:
                out = block(*pieces)
                pieces = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return self.head(pieces[0] if len(pieces) == 1 else F.concat(*pieces, dim=1))


def fused_class(block):
    """The fused class for ``block`` (exact type match: subclasses are left alone), or None."""
    if type(block) is ConvBNAct:
        return FusedConvBNAct if isinstance(block.act, Swish) else None
    if type(block) is nn.BatchNorm:
        return None  # switched with its ConvBNAct (only BatchNorm followed by swish is fused)
    return {Swish: FusedSwish, nn.PReLU: FusedPReLU, SEBlock: FusedSEBlock, SeesawBlock: FusedSeesawBlock,
            FaceNet: FusedFaceNet}.get(type(block))
