"""Verification metrics on constructed embeddings whose right answers are known by hand."""
import numpy as np
import pytest
from scipy import interpolate

from eval.metrics import (ACC_THRESHOLDS, FAR_THRESHOLDS, check_pairs, evaluate, pair_distances,
                          threshold_at_far)


def embeddings_for_distances(dist, seed=0):
    """(2N, 3) embeddings whose normalised pairs are at squared distance ``dist``, with random norms."""
    dist = np.asarray(dist, dtype=np.float64)
    rng = np.random.RandomState(seed)
    cos = 1.0 - dist / 2.0
    first = np.tile([1.0, 0.0, 0.0], (len(dist), 1))
    second = np.stack([cos, np.sqrt(np.clip(1 - cos ** 2, 0, None)), np.zeros_like(cos)], axis=1)
    emb = np.empty((2 * len(dist), 3))
    emb[0::2], emb[1::2] = first, second
    return emb * rng.uniform(0.5, 20.0, size=(len(emb), 1))


def test_distances_are_of_normalised_pairs():
    dist = np.array([0.0, 0.305, 1.0, 2.0, 3.999])
    np.testing.assert_allclose(pair_distances(embeddings_for_distances(dist)), dist, atol=1e-12)


def test_perfectly_separable_pairs_score_100_percent():
    """Every fold: positives at 0.0025 + 0.05 k, negatives at 1.2005 + 0.1 k (k = 0..4), interleaved.

    Every threshold in (0.2025, 1.2005] is perfect; the first maximum on the grid is 0.21. On the
    training folds FAR is 0 up to t = 1.200 and 0.2 from 1.201, so both FAR targets interpolate to a
    threshold just above 1.200: below every negative, above every positive.
    """
    fold = np.stack([0.0025 + 0.05 * np.arange(5), 1.2005 + 0.1 * np.arange(5)], axis=1).reshape(-1)
    issame = np.tile([True, False], 50)
    result = evaluate(embeddings_for_distances(np.tile(fold, 10)), issame)
    assert result["accuracy"] == 1.0 and result["accuracy_std"] == 0.0
    assert result["fold_accuracies"] == [1.0] * 10
    np.testing.assert_allclose(result["thresholds"], [0.21] * 10)
    for target in (1e-3, 1e-4):
        assert result["tar_at_far"][target]["tar"] == 1.0
        assert result["tar_at_far"][target]["far"] == 0.0
        np.testing.assert_allclose(result["tar_at_far"][target]["fold_thresholds"], 1.2 + target / 0.2 * 0.001)


def test_foldwise_threshold_differs_from_best_global_threshold():
    """Two kinds of folds that want different thresholds; worked out by hand.

    20 pairs, 10 folds of one positive and one negative each. Folds 0-4 (A): positive at 0.305,
    negative at 0.905 (perfect for t in (0.305, 0.905]). Folds 5-9 (B): positive at 1.105, negative
    at 1.505 (perfect for t in (1.105, 1.505]). Over all pairs both ranges score 15/20; the first
    maximum is t = 0.31: 75%. Held-out A fold: its training folds (4 A + 5 B) prefer t = 1.11 (14/18
    against 13/18), which rejects nothing of A's negative: 50%. Held-out B fold: 5 A + 4 B prefer
    t = 0.31, which rejects B's positive: 50%. So the protocol reports 50.00 ± 0.00, not 75.
    """
    dist = np.array([0.305, 0.905] * 5 + [1.105, 1.505] * 5)
    issame = np.array([True, False] * 10)
    result = evaluate(embeddings_for_distances(dist), issame)
    assert result["fold_accuracies"] == [0.5] * 10
    assert result["accuracy"] == 0.5 and result["accuracy_std"] == 0.0
    np.testing.assert_allclose(result["thresholds"], [1.11] * 5 + [0.31] * 5)
    best_global = evaluate(embeddings_for_distances(dist), issame, nfolds=1)
    assert best_global["accuracy"] == 0.75
    np.testing.assert_allclose(best_global["thresholds"], [0.31])


def test_tar_at_far_on_constructed_distribution():
    """10 folds x (100 positives, 100 negatives), the same in every fold.

    Negatives: 100 distances 1.5005 + 0.02 k, k = 0..99. Positives: 80 at 0.5 and 20 at 1.6.
    On 9 training folds the FAR curve is 0 up to t = 1.500 and 9/900 = 0.01 from t = 1.501, so FAR 1e-3
    interpolates to t = 1.500 + 0.1 * 0.001 = 1.5001: below every negative, above the 80 close
    positives: TAR = 0.8, achieved FAR = 0. FAR 0.1 is reached exactly with 10 negatives below t, i.e.
    for t in [1.681, 1.700]; the last such threshold, 1.700, accepts every positive: TAR = 1.0 at an
    achieved FAR of 0.1.
    """
    negatives = 1.5005 + 0.02 * np.arange(100)
    positives = np.r_[np.full(80, 0.5), np.full(20, 1.6)]
    fold_dist = np.r_[np.stack([positives, negatives], axis=1).reshape(-1)]
    fold_same = np.tile([True, False], 100)
    dist, issame = np.tile(fold_dist, 10), np.tile(fold_same, 10)
    result = evaluate(embeddings_for_distances(dist), issame, far_targets=(1e-3, 0.1))
    low, high = result["tar_at_far"][1e-3], result["tar_at_far"][0.1]
    assert low["tar"] == pytest.approx(0.8) and low["far"] == 0.0 and low["tar_std"] == 0.0
    np.testing.assert_allclose(low["fold_thresholds"], 1.5001, atol=1e-9)
    assert high["tar"] == 1.0 and high["far"] == pytest.approx(0.1)
    np.testing.assert_allclose(high["fold_thresholds"], 1.7, atol=1e-9)


def test_unreachable_far_target_uses_threshold_zero():
    # one negative per training fold set of 9: the smallest FAR step is 1/9, so FAR 1e-3 is reached by
    # interpolation, but with no negatives below 4.0 the FAR curve stays 0 and the threshold is 0
    dist = np.tile([0.2, 3.9999], 10)
    result = evaluate(embeddings_for_distances(dist), np.tile([True, False], 10))
    entry = result["tar_at_far"][1e-3]
    assert entry["fold_thresholds"] == [0.0] * 10
    assert entry["tar"] == 0.0 and entry["far"] == 0.0


def test_xnorm_is_mean_norm_of_raw_embeddings():
    emb = np.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [1.0, 0.0]] * 10)
    result = evaluate(emb, np.tile([True, False], 10))
    assert result["xnorm"] == pytest.approx((5 + 1 + 10 + 1) / 4)


def test_roc_points_are_fold_averaged_rates():
    dist = np.array([0.305, 0.905] * 5 + [1.105, 1.505] * 5)
    result = evaluate(embeddings_for_distances(dist), np.array([True, False] * 10))
    roc = result["roc"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"]) == 400
    at = {round(t, 2): i for i, t in enumerate(roc["thresholds"])}
    assert roc["tpr"][at[0.31]] == 0.5 and roc["fpr"][at[0.31]] == 0.0
    assert roc["tpr"][at[1.11]] == 1.0 and roc["fpr"][at[1.11]] == 0.5
    assert roc["tpr"][at[1.51]] == 1.0 and roc["fpr"][at[1.51]] == 1.0
    assert np.all(np.diff(roc["tpr"]) >= 0) and np.all(np.diff(roc["fpr"]) >= 0)


def test_threshold_at_far_equals_scipy_slinear_without_repeats():
    far = np.sort(np.random.RandomState(3).uniform(0, 1, 50))
    far[0] = 0.0
    thresholds = np.linspace(0, 4, 50)
    for target in (1e-3, 0.05, 0.37, far[10], far[-1]):
        expected = float(interpolate.interp1d(far, thresholds, kind="slinear")(target))
        assert threshold_at_far(far, thresholds, target) == pytest.approx(expected, abs=1e-12)


def test_threshold_at_far_with_repeated_far_values_matches_linear_bspline():
    """Repeated FAR values: the answer SciPy's interp1d gave before it refused duplicates.

    interp1d(kind='slinear') was a degree-1 B-spline with knots ``r_[x0, x, xn]`` on the stably
    sorted points, i.e. ``BSpline(r_[x0, x, xn], y, 1)``: between the last threshold still at the lower
    FAR and the first one at the higher FAR. At the largest FAR value itself that spline evaluates a
    degenerate knot interval (returns 0); there the first threshold reaching it is used instead.
    """
    thresholds = np.arange(0, 4, 0.5)
    far = np.array([0.0, 0.0, 0.0, 0.25, 0.25, 0.5, 1.0, 1.0])
    spline = interpolate.BSpline(np.r_[far[0], far, far[-1]], thresholds, 1)
    for target in (0.1, 0.25, 0.3, 0.5, 0.75):
        assert threshold_at_far(far, thresholds, target) == pytest.approx(float(spline(target)))
    assert threshold_at_far(far, thresholds, 0.1) == pytest.approx(1.0 + 0.4 * 0.5)
    assert threshold_at_far(far, thresholds, 1.0) == 3.0
    assert threshold_at_far(np.zeros(8), thresholds, 1e-3) == 0.0


def _reference_protocol(dist, issame, far_target, nfolds=10):
    """The protocol as written in the insightface loops: one threshold at a time, np.less everywhere."""
    from sklearn.model_selection import KFold

    def rates(t, d, same):
        predict = np.less(d, t)
        tp = np.sum(predict & same)
        fp = np.sum(predict & ~same)
        tn = np.sum(~predict & ~same)
        return float(tp + tn) / d.size, float(tp) / same.sum(), float(fp) / (~same).sum()

    accuracies, chosen, vals, fars = [], [], [], []
    for train, test in KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(dist))):
        acc_train = [rates(t, dist[train], issame[train])[0] for t in ACC_THRESHOLDS]
        best = int(np.argmax(acc_train))
        chosen.append(ACC_THRESHOLDS[best])
        accuracies.append(rates(ACC_THRESHOLDS[best], dist[test], issame[test])[0])
        far_train = np.array([rates(t, dist[train], issame[train])[2] for t in FAR_THRESHOLDS])
        if far_train.max() >= far_target:
            spline = interpolate.BSpline(np.r_[far_train[0], far_train, far_train[-1]], FAR_THRESHOLDS, 1)
            threshold = float(spline(far_target))
        else:
            threshold = 0.0
        _, val, far = rates(threshold, dist[test], issame[test])
        vals.append(val)
        fars.append(far)
    return accuracies, chosen, np.mean(vals), np.mean(fars)


def test_vectorised_protocol_matches_threshold_by_threshold_loop():
    rng = np.random.RandomState(7)
    issame = rng.rand(300) < 0.5
    issame[::10], issame[1::10] = True, False
    anchors = rng.randn(300, 16)
    partners = np.where(issame[:, None], anchors + 0.8 * rng.randn(300, 16), rng.randn(300, 16))
    emb = np.empty((600, 16))
    emb[0::2], emb[1::2] = anchors, partners
    result = evaluate(emb, issame, far_targets=(1e-2,))
    accuracies, chosen, val, far = _reference_protocol(pair_distances(emb), issame, 1e-2)
    assert result["fold_accuracies"] == accuracies
    assert result["thresholds"] == chosen
    assert 0.6 < result["accuracy"] < 1.0
    assert result["tar_at_far"][1e-2]["tar"] == pytest.approx(val, abs=1e-12)
    assert result["tar_at_far"][1e-2]["far"] == pytest.approx(far, abs=1e-12)


# ----------------------------------------------------------------------------------- bad input


def test_too_few_pairs_for_the_folds():
    with pytest.raises(ValueError, match="9 pairs are too few for 10 folds"):
        evaluate(np.random.randn(18, 4), np.tile([True, False], 5)[:9])


def test_fold_without_negative_pairs_is_named():
    issame = np.r_[np.ones(10, bool), np.tile([True, False], 5)]
    with pytest.raises(ValueError, match=r"no negative \(different-identity\) pair in fold\(s\) 0-4"):
        evaluate(np.random.randn(40, 4), issame)


def test_fold_without_positive_pairs_is_named():
    issame = np.r_[np.tile([True, False], 8), np.zeros(4, bool)]
    with pytest.raises(ValueError, match=r"no positive \(same-identity\) pair in fold\(s\) 8-9"):
        check_pairs(issame)


def test_mismatched_and_non_finite_embeddings():
    issame = np.tile([True, False], 10)
    with pytest.raises(ValueError, match="38 embeddings for 20 pairs"):
        evaluate(np.random.randn(38, 4), issame)
    with pytest.raises(ValueError, match="D > 1"):
        evaluate(np.random.randn(40, 1), issame)
    emb = np.random.randn(40, 4)
    emb[3, 1] = np.nan
    with pytest.raises(ValueError, match="1 of 40 embeddings contain NaN"):
        evaluate(emb, issame)


def test_zero_embeddings_do_not_divide_by_zero():
    emb = np.zeros((40, 4))
    result = evaluate(emb, np.tile([True, False], 10))
    assert result["accuracy"] == 0.5 and result["xnorm"] == 0.0
