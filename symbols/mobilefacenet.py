"""MobileFaceNet, the baseline (docs/architecture.md).

Stage table, rows ``(in_c, out_c, expansion, n_residual, residual_expansion)``: one stride-2 bottleneck
``in_c→out_c`` then ``n_residual`` residual bottlenecks.

| network       | stem | stage 1           | stage 2             | stage 3             | activation        |
|---------------|------|-------------------|---------------------|---------------------|-------------------|
| mobilefacenet | 64   | B(64→64,128) R×4  | B(64→128,256) R×6   | B(128→128,512) R×2  | PReLU (or swish)  |

The published MobileFaceNet uses PReLU; the SeesawFaceNets authors' baseline used swish (``act='swish'``).
"""
from mxnet.gluon.block import HybridBlock

from .common import ConvBNAct, FaceNet, depthwise

MOBILEFACENET_TABLE = [(64, 64, 128, 4, 128), (64, 128, 256, 6, 256), (128, 128, 512, 2, 256)]


class Bottleneck(HybridBlock):
    """Inverted residual: ConvBNAct 1×1 → E, depthwise 3×3 (stride s), Linear 1×1 → out_c; residual add
    when ``in_c == out_c`` and ``s == 1``. Shapes: (N, in_c, H, W) → (N, out_c, H/s, W/s)."""

    def __init__(self, in_c, out_c, expansion, stride, act="prelu", **kwargs):
        super().__init__(**kwargs)
        self.residual = in_c == out_c and stride == 1
        with self.name_scope():
            self.expand = ConvBNAct(in_c, expansion, act=act, prefix="expand_")
            self.dw = depthwise(expansion, stride, act=act, prefix="dw_")
            self.project = ConvBNAct(expansion, out_c, act=None, prefix="project_")

    def hybrid_forward(self, F, x):
        y = self.project(self.dw(self.expand(x)))
        return y + x if self.residual else y


def mobilefacenet(emb_size=512, act="prelu", **kwargs):
    """``mobilefacenet``: MobileFaceNet with ``act`` ('prelu' as published, 'swish' as the authors' baseline)."""

    def make_block(in_c, out_c, expansion, stride, prefix):
        return Bottleneck(in_c, out_c, expansion, stride, act=act, prefix=prefix)

    kwargs.setdefault("prefix", "mobilefacenet_")
    return FaceNet(64, MOBILEFACENET_TABLE, make_block, emb_size=emb_size, act=act, **kwargs)
