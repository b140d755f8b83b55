"""Building blocks shared by every network family (docs/architecture.md).

Every block takes its activation as an argument (``'swish'``, ``'prelu'``, ``'relu'`` or ``None``); nothing
reads a global config. Child blocks get explicit prefixes, so parameter names in an exported
``-symbol.json`` read like ``seesaw_shuffle_stage1_down_expand_1_conv_weight``.
"""
import mxnet as mx
from mxnet import init as mx_init
from mxnet.gluon import nn
from mxnet.gluon.block import HybridBlock

BN_EPSILON = 1e-5  # the reference implementation's (PyTorch default)
BN_MOMENTUM = 0.9

ACTIVATIONS = ("swish", "prelu", "relu")
INPUT_MEAN, INPUT_SCALE = 127.5, 0.0078125  # (x − 127.5) / 128 on RGB 0–255, as InsightFace's networks


def normalize_input(F, x):
    """``(x − 127.5) · 1/128`` of raw RGB 0–255 images: the first two operators of every network. They are named
    as in InsightFace's MXNet symbols (``_minusscalar0``, ``_mulscalar0``), the names InsightFace's tools look
    for to know that a model normalises its own input."""
    with mx.name.NameManager():  # no block prefix on these two names
        return (x - INPUT_MEAN) * INPUT_SCALE


class Swish(HybridBlock):
    """``x * sigmoid(x)``, the Seesaw networks' activation. ``Activation(act_type='sigmoid')`` is ~10x faster
    than ``F.sigmoid`` on CPU."""

    def hybrid_forward(self, F, x):
        return x * F.Activation(x, act_type="sigmoid")


def make_activation(act, channels, prefix):
    """Activation block by name: ``'swish'``, per-channel ``'prelu'`` (slope 0.25), ``'relu'``."""
    if act == "swish":
        return Swish(prefix=prefix)
    if act == "prelu":
        return nn.PReLU(alpha_initializer=mx_init.Constant(0.25), in_channels=channels, prefix=prefix)
    if act == "relu":
        return nn.Activation("relu", prefix=prefix)
    raise ValueError(f"unknown activation {act!r}; valid: {', '.join(ACTIVATIONS)}")


class ConvBNAct(HybridBlock):
    """Conv (no bias) → BatchNorm → activation; ``act=None`` gives the Linear block.

    Shapes: (N, in_channels, H, W) → (N, channels, H/stride, W/stride).
    """

    def __init__(self, in_channels, channels, kernel=1, stride=1, pad=0, groups=1, act="swish", **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(channels, kernel, strides=stride, padding=pad, groups=groups, use_bias=False,
                                  in_channels=in_channels, prefix="conv_")
            self.bn = nn.BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, in_channels=channels, prefix="bn_")
            self.act = make_activation(act, channels, "act_") if act else None

    def hybrid_forward(self, F, x):
        x = self.bn(self.conv(x))
        return x if self.act is None else self.act(x)


def depthwise(channels, stride=1, act="swish", kernel=3, pad=1, prefix=None):
    """Depthwise ConvBNAct (one filter per channel)."""
    return ConvBNAct(channels, channels, kernel, stride, pad, groups=channels, act=act, prefix=prefix)


class SEBlock(HybridBlock):
    """Squeeze-excitation, on every Seesaw block after the depthwise conv: GAP → FC E→E/r (bias) → PReLU → FC E/r→E (bias) → sigmoid → scale.

    The fully connected layers are written as 1×1 convolutions on the pooled (N, E, 1, 1) map: the same
    weights and multiply-adds as Dense, with no reshape and no 2-D BatchNorm/PReLU input.
    """

    def __init__(self, channels, reduction=4, **kwargs):
        super().__init__(**kwargs)
        hidden = channels // reduction
        with self.name_scope():
            self.fc1 = nn.Conv2D(hidden, 1, in_channels=channels, prefix="fc1_")
            self.act = make_activation("prelu", hidden, "act_")
            self.fc2 = nn.Conv2D(channels, 1, in_channels=hidden, prefix="fc2_")

    def pool(self, F, x):
        """Global average pool: (N, E, H, W) → (N, E, 1, 1)."""
        return F.contrib.AdaptiveAvgPooling2D(x, output_size=1)

    def gate(self, F, x):
        """The (N, E, 1, 1) sigmoid gate for ``x``."""
        return F.Activation(self.fc2(self.act(self.fc1(self.pool(F, x)))), act_type="sigmoid")

    def hybrid_forward(self, F, x):
        return F.broadcast_mul(x, self.gate(F, x))


def channel_shuffle(F, x, groups=2):
    """Channel shuffle of the Seesaw-shuffle block: view (N, g, C/g, H, W), swap axes 1 and 2, flatten back.

    Output channel ``i*g + j`` is input channel ``j*(C/g) + i``.
    """
    x = F.reshape(x, shape=(0, -4, groups, -1, -2))
    x = F.swapaxes(x, 1, 2)
    return F.reshape(x, shape=(0, -3, -2))


class GDCHead(HybridBlock):
    """Global depthwise-conv (GDC) embedding head.

    ConvBNAct 1×1 → 512, Linear 7×7 depthwise (no padding), FC 512→emb (no bias), BatchNorm.
    Shapes: (N, in_channels, 7, 7) → (N, emb_size). The FC is a 1×1 convolution on the (N, 512, 1, 1)
    map so its BatchNorm sees a 4-D input (2-D BatchNorm crashes MXNet 1.9.1).
    """

    def __init__(self, in_channels, emb_size=512, act="swish", width=512, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv_sep = ConvBNAct(in_channels, width, 1, act=act, prefix="conv_sep_")
            self.conv_dw = ConvBNAct(width, width, 7, 1, 0, groups=width, act=None, prefix="conv_dw_")
            self.linear = nn.Conv2D(emb_size, 1, use_bias=False, in_channels=width, prefix="linear_")
            self.bn = nn.BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, in_channels=emb_size, prefix="bn_")

    def hybrid_forward(self, F, x):
        x = self.bn(self.linear(self.conv_dw(self.conv_sep(x))))
        return F.flatten(x)


class Stem(HybridBlock):
    """conv 3×3/2 → depthwise 3×3: (N, 3, 112, 112) → (N, C, 56, 56)."""

    def __init__(self, channels, act="swish", **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = ConvBNAct(3, channels, 3, 2, 1, act=act, prefix="conv_")
            self.dw = depthwise(channels, act=act, prefix="dw_")

    def hybrid_forward(self, F, x):
        return self.dw(self.conv(x))


class FaceNet(HybridBlock):
    """Stem → three stages → GDC head, built from a stage table.

    ``table`` rows are ``(in_c, out_c, expansion, n_residual, residual_expansion)``: one stride-2 block
    ``in_c → out_c`` (named ``down``) then ``n_residual`` stride-1 residual blocks at ``out_c``
    (``res0``, ``res1``, ...). ``make_block(in_c, out_c, expansion, stride, prefix)`` builds one block.
    Input (N, 3, 112, 112) raw RGB 0–255 floats, normalised as the network's first step
    (:func:`normalize_input`); output (N, emb_size) raw (not L2-normalised) embedding.
    """

    def __init__(self, stem_channels, table, make_block, emb_size=512, act="swish", **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.stem = Stem(stem_channels, act=act, prefix="stem_")
            self.stages = nn.HybridSequential(prefix="")
            with self.stages.name_scope():
                for i, (in_c, out_c, expansion, n_res, res_expansion) in enumerate(table):
                    stage = nn.HybridSequential(prefix=f"stage{i + 1}_")
                    with stage.name_scope():
                        stage.add(make_block(in_c, out_c, expansion, 2, "down_"))
                        for j in range(n_res):
                            stage.add(make_block(out_c, out_c, res_expansion, 1, f"res{j}_"))
                    self.stages.add(stage)
            self.head = GDCHead(table[-1][1], emb_size, act=act, prefix="head_")

    def hybrid_forward(self, F, x):
        return self.head(self.stages(self.stem(normalize_input(F, x))))
