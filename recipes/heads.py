"""Margin heads (fc7 + margin), kept apart from the backbone (docs/training.md).

A head maps ``(embeddings (B, emb), labels (B,)) -> logits (B, num_classes)`` for a softmax cross-entropy:

- ``softmax``: plain ``x · Wᵀ`` (no normalisation, no margin);
- ``arcface``: ``s · cos(θ_y + m)`` at the label (m1=1, m2=m, m3=0), ``s · cos θ_j`` elsewhere;
- ``cosface``: ``s · (cos θ_y − m)`` (m1=1, m2=0, m3=m);
- ``combined``: ``s · (cos(m1·θ_y + m2) − m3)``.

``cos θ`` is clamped to ``[-1+1e-7, 1-1e-7]`` before any ``arccos``/``sqrt``; where ``m1·θ_y + m2 > π`` the
target logit falls back to ``cos θ_y − m2·sin m2 − m3`` (ArcFace's rule, easy_margin off), which keeps it
monotone in θ. :meth:`MarginHead.set_margin_scale` scales the margins towards 0 (0: normalised softmax,
1: the configured margins) for the warm-up phase of small networks.
"""
import math

import mxnet as mx
from mxnet.gluon import HybridBlock

COS_EPS = 1e-7


def margins_of(cfg):
    """(m1, m2, m3) of the configured loss; ``None`` for plain softmax."""
    loss = cfg["loss"]
    if loss == "softmax":
        return None
    if loss == "arcface":
        return 1.0, float(cfg["margin_m"]), 0.0
    if loss == "cosface":
        return 1.0, 0.0, float(cfg["margin_m"])
    if loss == "combined":
        return float(cfg["margin_m1"]), float(cfg["margin_m2"]), float(cfg["margin_m3"])
    raise ValueError(f"unknown loss {loss!r}; valid: softmax, arcface, cosface, combined")


def target_cosine(F, cos_y, m1, m2, m3):
    """``cos(m1·θ_y + m2) − m3`` with the θ+m>π fallback, for clamped label cosines ``cos_y`` (B,)."""
    if m1 == 1.0 and m2 == 0.0:
        return cos_y - m3
    if m1 == 1.0:
        sin_y = F.sqrt(F.clip(1.0 - cos_y * cos_y, 0.0, 1.0))
        margin = cos_y * math.cos(m2) - sin_y * math.sin(m2)
        # θ + m2 > π  <=>  cos θ < cos(π − m2)
        inside = cos_y >= math.cos(math.pi - m2) if m2 > 0 else cos_y > -2.0
    else:
        theta = F.arccos(cos_y)
        margin = F.cos(theta * m1 + m2)
        inside = (theta * m1 + m2) <= math.pi
    fallback = cos_y - m2 * math.sin(m2)
    return F.where(inside, margin, fallback) - m3


class MarginWarmup:
    """Margin warm-up shared by the heads: ``margins`` (m1, m2, m3) or None, scaled by ``margin_scale``."""

    margins = None
    margin_scale = 1.0

    def set_margin_scale(self, value):
        """Scale the margins by ``value`` in [0, 1]: m1 → 1 + v·(m1 − 1), m2 → v·m2, m3 → v·m3 (0: softmax)."""
        self.margin_scale = min(max(float(value), 0.0), 1.0)

    def effective_margins(self):
        """The (m1, m2, m3) used now (after the warm-up scale); None for plain softmax."""
        if self.margins is None:
            return None
        m1, m2, m3 = self.margins
        v = self.margin_scale
        return 1.0 + v * (m1 - 1.0), v * m2, v * m3


class MarginHead(MarginWarmup, HybridBlock):
    """fc7 weight W (num_classes × emb_size, no bias) and a margin.

    ``forward(embeddings (B, emb) float32, labels (B,) float32 class ids) -> logits (B, num_classes)``.
    ``margins=None`` gives the plain softmax head (unnormalised ``x · Wᵀ``). Runs imperatively (the margin
    scale changes during warm-up); it is cheap next to the backbone.
    """

    def __init__(self, num_classes, emb_size, scale=64.0, margins=(1.0, 0.5, 0.0), init_std=0.01, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.emb_size = int(num_classes), int(emb_size)
        self.scale = float(scale)
        self.margins = None if margins is None else tuple(float(m) for m in margins)
        self.margin_scale = 1.0
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(self.num_classes, self.emb_size),
                                          init=mx.init.Normal(init_std))

    def hybrid_forward(self, F, x, label, weight):
        if self.margins is None:
            return F.FullyConnected(x, weight, no_bias=True, num_hidden=self.num_classes)
        x_norm = F.L2Normalization(x, mode="instance")
        w_norm = F.L2Normalization(weight, mode="instance")
        cos = F.FullyConnected(x_norm, w_norm, no_bias=True, num_hidden=self.num_classes)
        cos = F.clip(cos, -1.0 + COS_EPS, 1.0 - COS_EPS)
        m1, m2, m3 = self.effective_margins()
        if m1 == 1.0 and m2 == 0.0 and m3 == 0.0:
            return cos * self.scale
        cos_y = F.pick(cos, label, axis=1)
        target = target_cosine(F, cos_y, m1, m2, m3)
        one_hot = F.one_hot(label, depth=self.num_classes)
        logits = cos + F.broadcast_mul(one_hot, F.expand_dims(target - cos_y, axis=1))
        return logits * self.scale


def build_head(cfg, num_classes, emb_size):
    """The configured head: ``head(embeddings, labels) -> logits``; uninitialised."""
    return MarginHead(num_classes, emb_size, scale=cfg["margin_s"], margins=margins_of(cfg), prefix="fc7_")


def margin_scale_at(cfg, epoch_float):
    """Warm-up margin scale at a (fractional) epoch: 0 during ``softmax_warmup_epochs``, then a linear ramp to
    1 over ``margin_warmup_epochs``, then 1."""
    t = epoch_float - float(cfg["softmax_warmup_epochs"])
    if t < 0:
        return 0.0
    ramp = float(cfg["margin_warmup_epochs"])
    return 1.0 if ramp <= 0 else min(1.0, t / ramp)
