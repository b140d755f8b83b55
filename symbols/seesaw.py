"""SeesawFaceNets (arXiv 1908.09124, Tables 1, 2 and 6; docs/architecture.md): Seesaw-shuffle, Seesaw-share, the MobileFaceNet-depth variant and DW-Seesaw.

Stage tables, rows ``(in_c, out_c, expansion, n_residual, residual_expansion)``: each stage is one stride-2
``Block(in_c→out_c, expansion)`` followed by ``n_residual`` ``RBlock(out_c, residual_expansion)``.

| network             | stem | stage 1            | stage 2              | stage 3              | block   |
|---------------------|------|--------------------|----------------------|----------------------|---------|
| seesaw_shuffle      | 64   | B(64→64,128) R×4   | B(64→128,256) R×6    | B(128→128,512) R×2   | shuffle |
| seesaw_share        | 64   | as seesaw_shuffle                                                | share   |
| seesaw_shuffle_mobi | 64   | B(64→64,128) R×2   | B(64→128,256) R×3    | B(128→128,512) R×6   | shuffle |
| dw_seesaw_v1        | 96   | B(96→96,192) R×8   | B(96→192,384) R×12   | B(192→192,768) R×4   | shuffle |
| dw_seesaw_v2        | 96   | as dw_seesaw_v1, plus a max-pool + 1×1 skip branch on each B     | shuffle |

The DW networks use shuffle blocks: the authors' DW_seesawFaceNetv2 weights reproduce only that way
(tests/test_convert_pytorch.py), and its skip branch is 2×2/2 max pool → ConvBNAct (swish) 1×1.
"""
from mxnet.gluon.block import HybridBlock

from .common import ConvBNAct, FaceNet, SEBlock, channel_shuffle, depthwise

SEESAW_TABLE = [(64, 64, 128, 4, 128), (64, 128, 256, 6, 256), (128, 128, 512, 2, 256)]
SEESAW_MOBI_TABLE = [(64, 64, 128, 2, 128), (64, 128, 256, 3, 256), (128, 128, 512, 6, 256)]
DW_SEESAW_TABLE = [(96, 96, 192, 8, 192), (96, 192, 384, 12, 384), (192, 192, 768, 4, 384)]

VARIANTS = ("shuffle", "share")


class SeesawBlock(HybridBlock):
    """Seesaw block ``in_c → out_c`` with expansion ``E`` and stride ``s``.

    Uneven split 1/4 : 3/4 → two 1×1 expansions (E/4, 3E/4) → concat → [shuffle: 2-group channel shuffle]
    → 3×3 depthwise (stride s) → SE → two linear 1×1 projections (shuffle: first E/4 → out/4, rest → 3out/4;
    share: first 3E/4 → 3out/4, rest → out/4, the 3/4 branch first) → residual add when ``in_c == out_c``
    and ``s == 1``. ``skip=True`` adds DW-Seesaw v2's branch (2×2 max pool → ConvBNAct 1×1 in→out) on a
    non-residual stride-2 block.
    Shapes: (N, in_c, H, W) → (N, out_c, H/s, W/s).
    """

    def __init__(self, in_c, out_c, expansion, stride, variant="shuffle", act="swish", skip=False, **kwargs):
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"unknown Seesaw variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if in_c % 4 or out_c % 4 or expansion % 4:
            raise ValueError(f"Seesaw block channels must be multiples of 4, got {in_c}, {out_c}, {expansion}")
        self.variant = variant
        self.in_quarter = in_c // 4
        self.e_quarter = expansion // 4
        self.e_three = expansion - self.e_quarter
        self.residual = in_c == out_c and stride == 1
        if skip and self.residual:
            raise ValueError("the DW-Seesaw v2 skip branch belongs on non-residual blocks only")
        with self.name_scope():
            self.expand_1 = ConvBNAct(in_c // 4, self.e_quarter, act=act, prefix="expand_1_")
            self.expand_3 = ConvBNAct(in_c - in_c // 4, self.e_three, act=act, prefix="expand_3_")
            self.dw = depthwise(expansion, stride, act=act, prefix="dw_")
            self.se = SEBlock(expansion, prefix="se_")
            self.project_1 = ConvBNAct(self.e_quarter, out_c // 4, act=None, prefix="project_1_")
            self.project_3 = ConvBNAct(self.e_three, out_c - out_c // 4, act=None, prefix="project_3_")
            if skip:
                self.skip = ConvBNAct(in_c, out_c, act=act, prefix="skip_")
            else:
                self.skip = None

    def hybrid_forward(self, F, x):
        first = F.slice_axis(x, axis=1, begin=0, end=self.in_quarter)
        rest = F.slice_axis(x, axis=1, begin=self.in_quarter, end=None)
        y = F.concat(self.expand_1(first), self.expand_3(rest), dim=1)
        if self.variant == "shuffle":
            y = channel_shuffle(F, y, 2)
        y = self.se(self.dw(y))
        point = self._projection_point()
        low = F.slice_axis(y, axis=1, begin=0, end=point)
        y = self._project(F, low, F.slice_axis(y, axis=1, begin=point, end=None))
        return self._finish(F, x, y)

    def _projection_point(self):
        """Where the expanded map splits between the projections: shuffle E/4 | 3E/4, share 3E/4 | E/4."""
        return self.e_quarter if self.variant == "shuffle" else self.e_three

    def _project(self, F, low, high):
        """Both projections of the expanded map's two parts, concatenated in the variant's order."""
        if self.variant == "shuffle":
            return F.concat(self.project_1(low), self.project_3(high), dim=1)
        return F.concat(self.project_3(low), self.project_1(high), dim=1)

    def _finish(self, F, x, y):
        """Residual add and DW-Seesaw v2's skip branch."""
        if self.residual:
            y = y + x
        if self.skip is not None:
            y = y + self.skip(F.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max"))
        return y


def _seesaw_net(name, table, variant, stem, skip=False):
    def build(emb_size=512, act="swish", **kwargs):
        def make_block(in_c, out_c, expansion, stride, prefix):
            return SeesawBlock(in_c, out_c, expansion, stride, variant=variant, act=act,
                               skip=skip and stride == 2, prefix=prefix)

        kwargs.setdefault("prefix", f"{name}_")
        return FaceNet(stem, table, make_block, emb_size=emb_size, act=act, **kwargs)

    build.__doc__ = f"``{name}``: Seesaw-{variant} blocks, stem {stem}, stages {table}" + (
        ", skip branch on stride-2 blocks." if skip else ".")
    return build


seesaw_shuffle = _seesaw_net("seesaw_shuffle", SEESAW_TABLE, "shuffle", 64)
seesaw_share = _seesaw_net("seesaw_share", SEESAW_TABLE, "share", 64)
seesaw_shuffle_mobi = _seesaw_net("seesaw_shuffle_mobi", SEESAW_MOBI_TABLE, "shuffle", 64)
dw_seesaw_v1 = _seesaw_net("dw_seesaw_v1", DW_SEESAW_TABLE, "shuffle", 96)
dw_seesaw_v2 = _seesaw_net("dw_seesaw_v2", DW_SEESAW_TABLE, "shuffle", 96, skip=True)

__all__ = ["SeesawBlock", "seesaw_shuffle", "seesaw_share", "seesaw_shuffle_mobi", "dw_seesaw_v1", "dw_seesaw_v2"]
