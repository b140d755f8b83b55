"""Margin heads: target logits against a numpy reference, the θ+m>π fallback, clamping, warm-up."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from recipes.heads import MarginHead, build_head, margin_scale_at, margins_of
from recipes import config

NUM_CLASSES, EMB = 7, 16


def _head(margins, scale=64.0, seed=0):
    mx.random.seed(seed)
    head = MarginHead(NUM_CLASSES, EMB, scale=scale, margins=margins)
    head.initialize()
    return head


def _cosines(x, w):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    return np.clip(xn @ wn.T, -1 + 1e-7, 1 - 1e-7)


def _reference(x, w, labels, s, m1, m2, m3):
    cos = _cosines(x, w)
    out = cos.copy()
    for i, y in enumerate(labels):
        theta = math.acos(cos[i, y])
        if m1 * theta + m2 <= math.pi:
            out[i, y] = math.cos(m1 * theta + m2) - m3
        else:
            out[i, y] = cos[i, y] - m2 * math.sin(m2) - m3
    return s * out


@pytest.mark.parametrize("margins", [(1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (1.35, 0.25, 0.1), (1.0, 0.3, 0.2)])
def test_margin_logits_match_reference(margins):
    head = _head(margins)
    rng = np.random.RandomState(1)
    x = rng.randn(9, EMB).astype(np.float32)
    labels = rng.randint(0, NUM_CLASSES, 9)
    logits = head(mx.nd.array(x), mx.nd.array(labels)).asnumpy()
    expected = _reference(x, head.weight.data().asnumpy(), labels, 64.0, *margins)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=2e-3)


def test_fallback_where_theta_plus_m_exceeds_pi():
    """An embedding opposite its class centre: θ ≈ π, so cos(θ+m) would rise again; the fallback keeps it low."""
    head = _head((1.0, 0.5, 0.0), scale=1.0)
    w = head.weight.data().asnumpy()
    x = -w[[2]] * 3.0
    logits = head(mx.nd.array(x), mx.nd.array([2])).asnumpy()
    cos_y = -1 + 1e-7
    assert logits[0, 2] == pytest.approx(cos_y - 0.5 * math.sin(0.5), abs=1e-4)
    assert logits[0, 2] < math.cos(math.pi - 1e-3 + 0.5) - 0.1  # lower than the non-monotone cos(θ+m)


def test_softmax_head_is_plain_fc():
    head = _head(None)
    x = np.random.RandomState(2).randn(5, EMB).astype(np.float32)
    logits = head(mx.nd.array(x), mx.nd.array([0, 1, 2, 3, 4])).asnumpy()
    np.testing.assert_allclose(logits, x @ head.weight.data().asnumpy().T, rtol=1e-5, atol=1e-5)


def test_gradients_finite_at_clamp_boundary():
    """x parallel (cos = 1) and anti-parallel (cos = -1) to its class: gradients stay finite (clamping)."""
    for margins in [(1.0, 0.5, 0.0), (1.5, 0.2, 0.0)]:
        head = _head(margins)
        w = head.weight.data().asnumpy()
        x = mx.nd.array(np.stack([w[1], -w[3]]))
        x.attach_grad()
        with autograd.record():
            loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(head(x, mx.nd.array([1, 3])), mx.nd.array([1, 3]))
        loss.backward()
        assert np.isfinite(loss.asnumpy()).all()
        assert np.isfinite(x.grad.asnumpy()).all()
        assert np.isfinite(head.weight.grad().asnumpy()).all()


def test_margin_scale_warmup():
    head = _head((1.0, 0.5, 0.0), scale=10.0)
    x = np.random.RandomState(3).randn(4, EMB).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    head.set_margin_scale(0.0)
    logits = head(mx.nd.array(x), mx.nd.array(labels)).asnumpy()
    np.testing.assert_allclose(logits, 10.0 * _cosines(x, head.weight.data().asnumpy()), rtol=1e-4, atol=1e-4)
    head.set_margin_scale(0.5)
    assert head.effective_margins() == (1.0, 0.25, 0.0)
    cfg = dict(config.DEFAULTS, softmax_warmup_epochs=1.0, margin_warmup_epochs=2.0)
    assert [margin_scale_at(cfg, e) for e in (0.5, 1.0, 2.0, 3.0, 5.0)] == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_build_head_from_config():
    cfg = dict(config.DEFAULTS)
    assert margins_of(dict(cfg, loss="arcface", margin_m=0.5)) == (1.0, 0.5, 0.0)
    assert margins_of(dict(cfg, loss="cosface", margin_m=0.35)) == (1.0, 0.0, 0.35)
    assert margins_of(dict(cfg, loss="combined", margin_m1=1.0, margin_m2=0.3, margin_m3=0.2)) == (1.0, 0.3, 0.2)
    assert margins_of(dict(cfg, loss="softmax")) is None
    head = build_head(dict(cfg, loss="arcface"), 11, 32)
    head.initialize()
    assert head(mx.nd.ones((2, 32)), mx.nd.array([0, 10])).shape == (2, 11)
    with pytest.raises(ValueError, match="unknown loss"):
        margins_of(dict(cfg, loss="sphere"))
