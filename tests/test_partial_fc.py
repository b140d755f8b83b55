"""recipes/partial_fc.py: sharded fc7 equals the unsharded margin softmax; sampling; device-count-free state."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from recipes.heads import MarginHead, target_cosine
from recipes.partial_fc import PartialFC, init_weight_rows, num_sampled, shard_ranges

NUM_CLASSES, EMB = 23, 8
ARCFACE = dict(scale=64.0, margins=(1.0, 0.5, 0.0))


def assert_close(got, want, rel=1e-4):
    """Equal up to float32 rounding: elementwise rtol plus an atol scaled to the array's magnitude."""
    np.testing.assert_allclose(got, want, rtol=rel, atol=rel * 0.1 * float(np.abs(want).max()))


def contexts(n):
    return [mx.cpu(i) for i in range(n)]


def batch(seed=0, per_device=(5, 7), ctxs=None, num_classes=NUM_CLASSES):
    """Embeddings and labels split over data-parallel devices (like a multi-device backbone)."""
    rng = np.random.RandomState(seed)
    ctxs = ctxs or contexts(len(per_device))
    xs, ys = [], []
    for size, ctx in zip(per_device, ctxs):
        xs.append(mx.nd.array(rng.randn(size, EMB) * 3.0, ctx=ctx))
        ys.append(mx.nd.array(rng.randint(0, num_classes, size), ctx=ctx))
    return xs, ys


def reference(weight, xs, ys, scale, margins):
    """Unsharded margin softmax on one device: per-sample loss, d(sum loss)/dx per input, d/dW."""
    weight = mx.nd.array(weight)
    x = mx.nd.concat(*[v.as_in_context(mx.cpu()) for v in xs], dim=0)
    y = mx.nd.concat(*[v.as_in_context(mx.cpu()) for v in ys], dim=0)
    weight.attach_grad()
    x.attach_grad()
    with autograd.record():
        cos = mx.nd.dot(mx.nd.L2Normalization(x), mx.nd.L2Normalization(weight), transpose_b=True)
        cos_y = mx.nd.pick(cos, y, axis=1)
        onehot = mx.nd.one_hot(y, weight.shape[0])
        logits = scale * (cos + onehot * (target_cosine(mx.nd, cos_y, *margins) - cos_y).reshape((-1, 1)))
        loss = -mx.nd.pick(mx.nd.log_softmax(logits, axis=1), y, axis=1)
    loss.backward()
    splits = np.cumsum([len(v) for v in xs])[:-1]
    return loss.asnumpy(), np.split(x.grad.asnumpy(), splits), weight.grad.asnumpy(), logits.asnumpy()


def sharded(pfc, xs, ys):
    for x in xs:
        x.attach_grad()
    with autograd.record():
        loss = pfc(xs, ys)
    loss.backward()
    return loss.asnumpy(), [x.grad.asnumpy() for x in xs], np.concatenate([w.grad.asnumpy() for w in pfc.weights])


@pytest.mark.parametrize("num_shards", [1, 2, 3])
@pytest.mark.parametrize("margins", [(1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (1.0, 0.0, 0.0), (1.0, 0.3, 0.2)])
def test_sharded_equals_unsharded_at_rate_one(num_shards, margins):
    pfc = PartialFC(NUM_CLASSES, EMB, contexts(num_shards), scale=30.0, margins=margins)
    xs, ys = batch(seed=num_shards)
    loss, x_grads, w_grad = sharded(pfc, xs, ys)
    ref_loss, ref_x_grads, ref_w_grad, ref_logits = reference(pfc.gather_weight(), xs, ys, 30.0, margins)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(x_grads, ref_x_grads):
        assert_close(got, want)
    assert_close(w_grad, ref_w_grad)
    assert np.abs(w_grad).max() > 1e-3 and all(np.abs(g).max() > 1e-3 for g in x_grads)
    labels = np.concatenate([y.asnumpy() for y in ys])
    assert pfc.last_accuracy == pytest.approx(float((ref_logits.argmax(1) == labels).mean()))


def test_embedding_gradients_land_on_their_own_devices():
    pfc = PartialFC(NUM_CLASSES, EMB, contexts(2), **ARCFACE)
    xs, ys = batch(per_device=(3, 4, 5), ctxs=[mx.cpu(0), mx.cpu(1), mx.cpu(5)])
    loss, _, _ = sharded(pfc, xs, ys)
    assert loss.shape == (12,) and np.isfinite(loss).all()
    assert [x.grad.context for x in xs] == [mx.cpu(0), mx.cpu(1), mx.cpu(5)]


def test_target_cosine_margins():
    theta = np.array([0.1, 1.0, 2.5, 3.0])
    cos = mx.nd.array(np.cos(theta))
    arc = target_cosine(mx.nd, cos, 1.0, 0.5, 0.0).asnumpy()
    expected = np.where(theta + 0.5 <= math.pi, np.cos(theta + 0.5), np.cos(theta) - 0.5 * math.sin(0.5))
    np.testing.assert_allclose(arc, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(arc) < 0)  # monotone in theta across the fallback point
    np.testing.assert_allclose(target_cosine(mx.nd, cos, 1.0, 0.0, 0.35).asnumpy(), np.cos(theta) - 0.35, rtol=1e-6)
    np.testing.assert_allclose(target_cosine(mx.nd, cos, 1.0, 0.0, 0.0).asnumpy(), np.cos(theta), rtol=1e-6)


def test_shard_ranges_and_sample_counts():
    assert shard_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_ranges(85742, 8)[-1] == (75025, 85742)
    with pytest.raises(ValueError, match="cannot split 2 classes over 3"):
        shard_ranges(2, 3)
    assert num_sampled(100, 1.0) == 100 and num_sampled(100, 0.1) == 10 and num_sampled(7, 0.1) == 1
    with pytest.raises(ValueError, match="sample-rate"):
        PartialFC(10, 4, contexts(1), sample_rate=0.0)


def test_sampling_keeps_positives_and_matches_softmax_over_sampled_classes():
    num_classes = 200
    pfc = PartialFC(num_classes, EMB, contexts(2), sample_rate=0.1, seed=3, **ARCFACE)
    xs, ys = batch(seed=5, num_classes=num_classes)
    loss, x_grads, w_grad = sharded(pfc, xs, ys)
    labels = np.concatenate([y.asnumpy() for y in ys]).astype(int)
    kept = np.concatenate([start + pfc._sampled[k] for k, (start, _) in enumerate(pfc.ranges)])
    assert set(labels) <= set(kept)
    assert [len(pfc._sampled[k]) for k in range(2)] == [10, 10]
    # the sampled loss is the margin softmax over the kept classes only
    remap = {c: i for i, c in enumerate(kept)}
    sub_ys = [mx.nd.array([remap[int(v)] for v in y.asnumpy()], ctx=y.context) for y in ys]
    ref_loss, ref_x_grads, ref_w_grad, _ = reference(pfc.gather_weight()[kept], xs, sub_ys, 64.0, (1.0, 0.5, 0.0))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(x_grads, ref_x_grads):
        assert_close(got, want)
    assert_close(w_grad[kept], ref_w_grad)
    assert np.abs(np.delete(w_grad, kept, axis=0)).max() == 0.0


def test_step_updates_only_sampled_rows_like_sgd_momentum():
    num_classes = 60
    pfc = PartialFC(num_classes, EMB, contexts(2), sample_rate=0.25, momentum=0.9, wd=1e-3)
    before = pfc.gather_weight()
    xs, ys = batch(seed=1, num_classes=num_classes)
    _, _, grad = sharded(pfc, xs, ys)
    pfc.step(learning_rate=0.1, rescale_grad=1.0 / 12)
    kept = np.concatenate([start + pfc._sampled[k] for k, (start, _) in enumerate(pfc.ranges)])
    after = pfc.gather_weight()
    expected = before[kept] - 0.1 * (grad[kept] / 12 + 1e-3 * before[kept])
    np.testing.assert_allclose(after[kept], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.delete(after, kept, axis=0), np.delete(before, kept, axis=0))
    assert all(w.grad.abs().max().asscalar() == 0.0 for w in pfc.weights)


def test_step_at_rate_one_equals_mxnet_sgd_momentum_over_two_steps():
    pfc = PartialFC(NUM_CLASSES, EMB, contexts(3), momentum=0.9, wd=5e-4, **ARCFACE)
    weight = mx.nd.array(pfc.gather_weight())
    mom = mx.nd.zeros(weight.shape)
    for seed in (0, 1):
        xs, ys = batch(seed=seed)
        ref_grad = reference(weight.asnumpy(), xs, ys, 64.0, (1.0, 0.5, 0.0))[2]
        sharded(pfc, xs, ys)
        pfc.step(learning_rate=0.05, rescale_grad=1.0 / 12)
        mx.nd.sgd_mom_update(weight, mx.nd.array(ref_grad), mom, lr=0.05, momentum=0.9, wd=5e-4,
                             rescale_grad=1.0 / 12, out=weight)
    np.testing.assert_allclose(pfc.gather_weight(), weight.asnumpy(), rtol=1e-4, atol=1e-6)


def test_save_load_across_device_counts(tmp_path):
    three = PartialFC(NUM_CLASSES, EMB, contexts(3), sample_rate=0.5, **ARCFACE)
    xs, ys = batch(seed=2)
    sharded(three, xs, ys)
    three.step(0.1, 1.0 / 12)
    path = str(tmp_path / "model-0001.fc7.params")
    three.save(path)
    saved = mx.nd.load(path)
    assert saved["fc7_weight"].shape == (NUM_CLASSES, EMB) and saved["fc7_momentum"].abs().sum().asscalar() > 0
    two = PartialFC(NUM_CLASSES, EMB, contexts(2), seed=99, **ARCFACE)
    two.load(path)
    np.testing.assert_array_equal(two.gather_weight(), three.gather_weight())
    np.testing.assert_array_equal(np.concatenate([m.asnumpy() for m in two.momenta]),
                                  saved["fc7_momentum"].asnumpy())
    one = PartialFC(NUM_CLASSES, EMB, contexts(1), **ARCFACE)
    one.load(path)
    xs, ys = batch(seed=4)
    np.testing.assert_allclose(sharded(one, xs, ys)[0], sharded(two, *batch(seed=4))[0], rtol=1e-5)
    wrong = PartialFC(NUM_CLASSES + 1, EMB, contexts(1))
    with pytest.raises(ValueError, match="check num_classes"):
        wrong.load(path)


def test_initialisation_does_not_depend_on_device_count():
    np.testing.assert_array_equal(PartialFC(NUM_CLASSES, EMB, contexts(1)).gather_weight(),
                                  PartialFC(NUM_CLASSES, EMB, contexts(3)).gather_weight())
    rows = init_weight_rows(65530, 65540, 2)  # crosses an initialisation block boundary
    np.testing.assert_array_equal(rows[:6], init_weight_rows(65530, 65536, 2))
    np.testing.assert_array_equal(rows[6:], init_weight_rows(65536, 65540, 2))
    assert abs(float(init_weight_rows(0, 5000, 8).std()) - 0.01) < 1e-3


def test_persistent_memory_per_device_falls_with_device_count():
    one = PartialFC(1000, 16, contexts(1)).memory_per_device()
    four = PartialFC(1000, 16, contexts(4)).memory_per_device()
    assert one == [3 * 1000 * 16 * 4 + 1000 * 4]
    assert four == [3 * 250 * 16 * 4 + 250 * 4] * 4


def test_allreduce_hook_sums_gradients_and_masks_before_the_update():
    pfc = PartialFC(NUM_CLASSES, EMB, contexts(2), sample_rate=0.5, momentum=0.0, wd=0.0, **ARCFACE)
    before = pfc.gather_weight()
    xs, ys = batch(seed=6)
    _, _, grad = sharded(pfc, xs, ys)
    calls = []

    def double(name, array):  # stands in for a 2-worker allreduce where the other worker sent the same
        calls.append(name)
        array[:] = array * 2

    pfc.step(0.1, 1.0, allreduce=double)
    assert calls == ["fc7_grad_0", "fc7_mask_0", "fc7_grad_1", "fc7_mask_1"]
    kept = np.concatenate([start + pfc._sampled[k] for k, (start, _) in enumerate(pfc.ranges)])
    np.testing.assert_allclose(pfc.gather_weight()[kept], before[kept] - 0.1 * 2 * grad[kept], rtol=1e-5)


@pytest.mark.parametrize("margins,margin_scale", [((1.0, 0.5, 0.0), 1.0), ((1.0, 0.5, 0.0), 0.5),
                                                  ((1.0, 0.0, 0.35), 1.0), ((1.2, 0.3, 0.1), 1.0), (None, 1.0)])
def test_matches_the_recipe_margin_head(margins, margin_scale):
    """At rate 1 the sharded loss and gradients equal recipes.heads.MarginHead + softmax cross-entropy."""
    head = MarginHead(NUM_CLASSES, EMB, scale=32.0, margins=margins, prefix="fc7_")
    head.initialize(ctx=mx.cpu())
    pfc = PartialFC(NUM_CLASSES, EMB, contexts(3), scale=32.0, margins=margins)
    head.weight.set_data(mx.nd.array(pfc.gather_weight()))
    head.set_margin_scale(margin_scale)
    pfc.set_margin_scale(margin_scale)
    assert pfc.effective_margins() == head.effective_margins()
    xs, ys = batch(seed=8)
    x = mx.nd.concat(*[v.as_in_context(mx.cpu()) for v in xs], dim=0)
    y = mx.nd.concat(*[v.as_in_context(mx.cpu()) for v in ys], dim=0)
    x.attach_grad()
    with autograd.record():
        ref = mx.gluon.loss.SoftmaxCrossEntropyLoss()(head(x, y), y)
    ref.backward()
    loss, x_grads, w_grad = sharded(pfc, xs, ys)
    assert_close(loss, ref.asnumpy())
    assert_close(np.concatenate(x_grads), x.grad.asnumpy())
    assert_close(w_grad, head.weight.grad().asnumpy())


def test_sharded_head_checkpoint_view_is_device_count_free():
    from recipes.partial_fc import ShardedHead
    three = ShardedHead(NUM_CLASSES, EMB, contexts(3), sample_rate=0.5, **ARCFACE)
    xs, ys = batch(seed=3)
    with autograd.record():
        loss = three.loss(xs, ys)
    loss.backward()
    three.step(0.1, 12)
    assert list(three.collect_params().keys()) == []  # the Gluon Trainer leaves fc7 alone
    view = three._collect_params_with_prefix()
    assert sorted(view) == ["momentum", "weight"] and view["weight"].shape == (NUM_CLASSES, EMB)
    two = ShardedHead(NUM_CLASSES, EMB, contexts(2), seed=5, **ARCFACE)
    for name, array in two._collect_params_with_prefix().items():
        array.set_data(mx.nd.array(view[name].data().asnumpy()))
    np.testing.assert_array_equal(two.pfc.gather_weight(), three.pfc.gather_weight())
    np.testing.assert_array_equal(two._collect_params_with_prefix()["momentum"].data().asnumpy(),
                                  view["momentum"].data().asnumpy())
    three.set_margin_scale(0.5)
    assert three.margin_scale == 0.5 and three.effective_margins() == (1.0, 0.25, 0.0)
    with pytest.raises(RuntimeError, match="loss"):
        three(xs[0], ys[0])
