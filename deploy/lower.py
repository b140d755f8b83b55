"""Lowering a trained network into the folded inference graph (:class:`deploy.graph.DeployGraph`).

Two things are folded away:

- **BatchNorm** into the preceding convolution (``W·γ/σ``, ``β − μ·γ/σ``); the head's last BatchNorm into
  the fully connected layer before it.
- **The channel shuffle.** Everything between the expansion and the projection of a Seesaw block (depthwise
  conv, its activation, the SE block) works channel by channel, so a fixed permutation of the expanded
  channels can be moved into the rows of the expansion weights and the columns of the projection weights.

The graph keeps a tensor of a stage split into *pieces* (groups of channels kept as separate tensors),
chosen so that each of the Seesaw block's uneven 1/4 : 3/4 convolutions reads and writes whole pieces:
no slice, no concat and no transpose over full-resolution feature maps, and the multiply-adds of the
uneven split are kept (a dense convolution with zero blocks would cost MobileFaceNet's pointwise MAdds).
A convolution reading several pieces is a sum of convolutions, which oneDNN and ONNX Runtime fuse.
The ``dense`` layout does the opposite (one tensor, zero blocks in the weights) for batch-1 latency.
"""
import numpy as np
from mxnet.gluon import nn

from symbols.common import INPUT_MEAN, INPUT_SCALE, FaceNet, GDCHead, Swish
from symbols.mobilefacenet import Bottleneck
from symbols.seesaw import SeesawBlock

from .graph import DeployGraph

__all__ = ["build_deploy_graph", "fold_batchnorm", "shuffle_permutation", "LAYOUTS"]

# How the expanded channels of a Seesaw block are grouped into tensors (see _seesaw_stream_groups).
LAYOUTS = ("cells", "expand", "concat", "slice", "dense")


def fold_batchnorm(conv_weight, bn_params, eps):
    """Fold an inference BatchNorm into the convolution before it.

    ``bn_params`` = (gamma, beta, running_mean, running_var). Returns (weight, bias) with
    ``conv(x, weight) + bias == bn(conv(x, conv_weight))``.
    """
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in bn_params)
    scale = gamma / np.sqrt(var + eps)
    weight = np.asarray(conv_weight, dtype=np.float64) * scale.reshape(-1, *([1] * (conv_weight.ndim - 1)))
    return weight, beta - mean * scale


def shuffle_permutation(channels, groups=2):
    """Source channel of each output channel of :func:`symbols.common.channel_shuffle`:
    ``shuffled[:, k] == x[:, perm[k]]``."""
    k = np.arange(channels)
    per_group = channels // groups
    return (k % groups) * per_group + k // groups


def _np(param):
    return param.data().asnumpy().astype(np.float64)


def _bn(bn):
    return (_np(bn.gamma), _np(bn.beta), _np(bn.running_mean), _np(bn.running_var)), bn._kwargs["eps"]


def _folded(block):
    """(weight, bias, act_spec) of a ConvBNAct; act_spec is None, 'swish', 'relu' or ('prelu', alpha)."""
    params, eps = _bn(block.bn)
    weight, bias = fold_batchnorm(_np(block.conv.weight), params, eps)
    act = block.act
    if act is None:
        spec = None
    elif isinstance(act, Swish):
        spec = "swish"
    elif isinstance(act, nn.PReLU):
        spec = ("prelu", _np(act.alpha))
    elif isinstance(act, nn.Activation) and act._act_type == "relu":
        spec = "relu"
    else:
        raise ValueError(f"cannot fold activation {act!r}")
    return weight, bias, spec


def _conv_args(block):
    conv = block.conv
    return dict(stride=conv._kwargs["stride"][0], pad=conv._kwargs["pad"][0])


# -------------------------------------------------------------------- lowering
class _Lowering:
    """Emits layers over tensors split into pieces: a piece is (tensor name, logical channel indices)."""

    def __init__(self, graph, slice_reads=False, with_se=True):
        self.g = graph
        self.slice_reads = slice_reads
        self.with_se = with_se

    def activation(self, pieces, spec):
        if spec is None:
            return pieces
        out = []
        for name, idx in pieces:
            if spec == "swish":
                out.append((self.g.swish(name, len(idx)), idx))
            elif spec == "relu":
                out.append((self.g.relu(name, len(idx)), idx))
            else:
                out.append((self.g.prelu(name, spec[1][idx]), idx))
        return out

    def dense(self, pieces, weight, bias, groups, stride=1, pad=0, residual=None):
        """Dense conv ``weight`` (O, I, kh, kw) over the logical input held in ``pieces``.

        ``groups`` lists the output tensors to make; each is a list of row-index arrays (sub-groups,
        concatenated). A sub-group is the sum of one convolution per input piece it has non-zero weights
        for (the bias goes into the first). Returns the output pieces.

        ``residual``: pieces lining up with ``groups`` (one sub-group each) added to the output. The sum
        starts from them, so every add has a convolution's output as its newest term: ONNX Runtime fuses such
        an add into the convolution (its ``Sum`` input), but only one per convolution, so an add of two
        finished sums would stay a separate pass.
        """
        if residual is not None and (len(residual) != len(groups) or any(len(g) != 1 for g in groups)):
            raise ValueError("residual pieces do not line up with the output groups")
        out = []
        for k, group in enumerate(groups):
            parts = []
            for rows in group:
                acc = None
                if residual is not None:
                    acc, idx_r = residual[k]
                    if not np.array_equal(idx_r, rows):
                        raise ValueError("residual pieces do not line up")
                used = [(name, idx) for name, idx in pieces if np.any(weight[rows][:, idx])] or pieces[:1]
                for j, (name, idx) in enumerate(used):
                    w = weight[rows][:, idx]
                    if self.slice_reads:
                        name, idx, w = self._narrow(name, idx, w)
                    b = bias[rows] if j == 0 else np.zeros(len(rows))
                    y = self.g.conv(name, w, b, stride=stride, pad=pad)
                    acc = y if acc is None else self.g.add(y, acc, len(rows))
                parts.append(acc)
            idx = np.concatenate(group)
            name = parts[0] if len(parts) == 1 else self.g.concat(parts, len(idx))
            out.append((name, idx))
        return out

    def _narrow(self, name, idx, w):
        """Slice a piece to the contiguous channel range a convolution actually reads, if there is one."""
        cols = np.flatnonzero(np.any(w.reshape(w.shape[0], w.shape[1], -1) != 0, axis=(0, 2)))
        if len(cols) == 0 or len(cols) == len(idx) or cols[-1] - cols[0] + 1 != len(cols):
            return name, idx, w
        begin, end = int(cols[0]), int(cols[-1]) + 1
        return self.g.slice(name, begin, end), idx[begin:end], w[:, begin:end]

    def depthwise(self, pieces, weight, bias, stride, pad):
        return [(self.g.conv(name, weight[idx], bias[idx], stride=stride, pad=pad, groups=len(idx)), idx)
                for name, idx in pieces]

    def se(self, pieces, se):
        """SE block over the pieces of one feature map (channel order of the pieces is arbitrary)."""
        w1, b1 = _np(se.fc1.weight), _np(se.fc1.bias)
        w2, b2 = _np(se.fc2.weight), _np(se.fc2.bias)
        alpha = _np(se.act.alpha)
        order = np.concatenate([idx for _, idx in pieces])
        pooled = [self.g.gap(name, len(idx)) for name, idx in pieces]
        pooled = pooled[0] if len(pooled) == 1 else self.g.concat(pooled, len(order))
        h = self.g.conv(pooled, w1[:, order], b1)
        h = self.g.prelu(h, alpha)
        gate = self.g.sigmoid(self.g.conv(h, w2[order], b2[order]), len(order))
        out, start = [], 0
        for name, idx in pieces:
            g = gate if len(pieces) == 1 else self.g.slice(gate, start, start + len(idx))
            start += len(idx)
            out.append((self.g.mul(name, g, len(idx)), idx))
        return out


def _split(channels, parts):
    """Contiguous row groups ``[[arange(a, b)], ...]`` at the boundaries ``parts`` (fractions of 4)."""
    bounds = [0] + [channels * q // 4 for q in parts] + [channels]
    return [[np.arange(a, b)] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _stage_partition(block, channels, layout=None):
    """How the tensor between the blocks of a stage is split into pieces (logical channel groups)."""
    if layout == "dense":
        return _split(channels, [])
    if isinstance(block, SeesawBlock):
        if block.variant == "share":
            # The share projection writes (3/4 | 1/4) while the next expansion reads (1/4 | 3/4).
            return _split(channels, [1, 3])
        return _split(channels, [1])
    return _split(channels, [])


def _seesaw_stream_groups(block, layout):
    """Expanded-channel tensors of a Seesaw block, in the depthwise stage's (shuffled) channel order.

    ``cells``: one tensor per (expansion conv × projection conv) pair, so every pointwise conv reads and
    writes whole tensors (exact MAdds, no copies, most ops). ``expand``: one tensor per expansion conv (the
    projections read them with some zero columns). ``concat``: one tensor, the expansion outputs concatenated
    (one copy of the expanded map; the projections read all of it, with zero columns); ``slice``: as
    ``concat``, each projection reading only its channel range through a slice. ``dense``: one tensor, and
    the tensors between blocks unsplit too, so each block is one expansion and one projection convolution
    whose weights hold the uneven split as zero blocks: the fewest operators (fastest at batch 1, where a run
    is bound by per-operator costs) at the price of MobileFaceNet's pointwise multiply-adds.
    """
    e = block.e_quarter + block.e_three
    perm = shuffle_permutation(e) if block.variant == "shuffle" else np.arange(e)
    stream = np.arange(e)
    from_first = perm < block.e_quarter            # stream channel made by expand_1
    if block.variant == "shuffle":
        to_first = stream < block.e_quarter        # stream channel read by project_1
    else:
        to_first = stream >= block.e_three
    if layout == "cells":
        cells = [stream[from_first & to_first], stream[from_first & ~to_first],
                 stream[~from_first & to_first], stream[~from_first & ~to_first]]
        return [[c] for c in cells if len(c)]
    if layout == "expand":
        return [[stream[from_first]], [stream[~from_first]]]
    if layout == "dense":
        return [[stream]]
    if layout in ("concat", "slice"):
        # Order the cells so that the 3/4 projection reads one contiguous channel range.
        return [[np.concatenate([stream[from_first & to_first], stream[from_first & ~to_first]]),
                 np.concatenate([stream[~from_first & ~to_first], stream[~from_first & to_first]])]]
    raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")


def _lower_seesaw(low, block, pieces, out_groups, layout):
    e = block.e_quarter + block.e_three
    perm = shuffle_permutation(e) if block.variant == "shuffle" else np.arange(e)
    in_c = sum(len(idx) for _, idx in pieces)
    w1, b1, act = _folded(block.expand_1)
    w3, b3, _ = _folded(block.expand_3)
    q = block.in_quarter
    w_exp = np.zeros((e, in_c, 1, 1))
    w_exp[:block.e_quarter, :q] = w1
    w_exp[block.e_quarter:, q:] = w3
    b_exp = np.concatenate([b1, b3])
    stream = low.dense(pieces, w_exp[perm], b_exp[perm], _seesaw_stream_groups(block, layout))
    stream = low.activation(stream, act)
    wd, bd, act_dw = _folded(block.dw)
    stream = low.activation(low.depthwise(stream, wd, bd, **_conv_args(block.dw)), act_dw)
    if low.with_se:
        stream = low.se(stream, block.se)
    p1w, p1b, _ = _folded(block.project_1)
    p3w, p3b, _ = _folded(block.project_3)
    out_c = p1w.shape[0] + p3w.shape[0]
    w_proj = np.zeros((out_c, e, 1, 1))
    if block.variant == "shuffle":
        w_proj[:p1w.shape[0], :block.e_quarter] = p1w
        w_proj[p1w.shape[0]:, block.e_quarter:] = p3w
        b_proj = np.concatenate([p1b, p3b])
    else:
        w_proj[:p3w.shape[0], :block.e_three] = p3w
        w_proj[p3w.shape[0]:, block.e_three:] = p1w
        b_proj = np.concatenate([p3b, p1b])
    residual = pieces if block.residual else None
    if block.skip is not None:  # DW-Seesaw v2's branch, the start of the projection's sum like a residual
        ws, bs, act_s = _folded(block.skip)
        pooled = [(low.g.maxpool2(name, len(idx)), idx) for name, idx in pieces]
        residual = low.activation(low.dense(pooled, ws, bs, out_groups), act_s)
    return low.dense(stream, w_proj, b_proj, out_groups, residual=residual)


def _lower_bottleneck(low, block, pieces, out_groups):
    we, be, act = _folded(block.expand)
    stream = low.activation(low.dense(pieces, we, be, [[np.arange(we.shape[0])]]), act)
    wd, bd, act_dw = _folded(block.dw)
    stream = low.activation(low.depthwise(stream, wd, bd, **_conv_args(block.dw)), act_dw)
    wp, bp, _ = _folded(block.project)
    return low.dense(stream, wp, bp, out_groups, residual=pieces if block.residual else None)


def build_deploy_graph(net, layout="cells", se=True):
    """Lower an initialised ``FaceNet`` (any registered network) into a :class:`DeployGraph`.

    ``layout`` (one of ``LAYOUTS``) chooses how a Seesaw block's expanded channels are held (see
    ``_seesaw_stream_groups``); every layout computes the same function. The graph has input ``data``
    (N, 3, 112, 112) and output the (N, emb_size) embedding of ``net`` in inference mode.

    ``se=False`` leaves the Seesaw blocks' SE blocks out. That graph is *not* the network (its embedding
    differs); it exists to measure what the SE blocks cost at deployment (``tools/bench/inference.py``'s
    ``name:no_se`` rows).
    """
    if not isinstance(net, FaceNet):
        raise ValueError(f"build_deploy_graph needs a symbols.get_model network, got {type(net).__name__}")
    g = DeployGraph()
    low = _Lowering(g, slice_reads=layout == "slice", with_se=bool(se))
    x = [(g.normalize(g.input(3), INPUT_MEAN, INPUT_SCALE), np.arange(3))]
    blocks = [block for stage in net.stages for block in stage]
    first = blocks[0]
    partition = _stage_partition(first, net.stem.dw.conv._channels, layout)

    w, b, act = _folded(net.stem.conv)
    x = low.activation(low.dense(x, w, b, partition, **_conv_args(net.stem.conv)), act)
    w, b, act = _folded(net.stem.dw)
    x = low.activation(low.depthwise(x, w, b, **_conv_args(net.stem.dw)), act)

    for i, block in enumerate(blocks):
        out_c = _out_channels(block)
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        out_groups = _stage_partition(nxt, out_c, layout) if nxt is not None else [[np.arange(out_c)]]
        if block.residual:  # the residual add needs the output split like the input
            out_groups = [[idx] for _, idx in x]
        if isinstance(block, SeesawBlock):
            x = _lower_seesaw(low, block, x, out_groups, layout)
        elif isinstance(block, Bottleneck):
            x = _lower_bottleneck(low, block, x, out_groups)
        else:
            raise ValueError(f"cannot lower block {type(block).__name__}")

    head = net.head
    if not isinstance(head, GDCHead):
        raise ValueError(f"cannot lower head {type(head).__name__}")
    w, b, act = _folded(head.conv_sep)
    x = low.activation(low.dense(x, w, b, [[np.arange(w.shape[0])]]), act)
    w, b, _ = _folded(head.conv_dw)
    (name, _), = low.depthwise(x, w, b, stride=1, pad=0)
    params, eps = _bn(head.bn)
    wl, bl = fold_batchnorm(_np(head.linear.weight), params, eps)
    name = g.conv(name, wl, bl)
    g.output = g.flatten(name, wl.shape[0])
    return g


def _out_channels(block):
    if isinstance(block, SeesawBlock):
        return block.project_1.conv._channels + block.project_3.conv._channels
    return block.project.conv._channels
