"""Verification metrics (docs/verification.md), computed exactly as every published LFW/CFP/AgeDB figure is.

The protocol is insightface's ``calculate_roc`` / ``calculate_val``:

* distance = squared Euclidean distance of the L2-normalised (flip-summed) embeddings of a pair;
  a pair is predicted "same" when ``distance < threshold``;
* accuracy: ``nfolds`` contiguous folds (``sklearn.model_selection.KFold(shuffle=False)``), thresholds
  ``np.arange(0, 4, 0.01)``; per fold the first threshold with the best accuracy on the other folds
  (``np.argmax``) scores the held-out fold; mean and std of the fold accuracies;
* TAR@FAR: thresholds ``np.arange(0, 4, 0.001)``; per fold the threshold at which the training folds'
  FAR equals the target (linear interpolation of FAR -> threshold, 0 when the target is never reached),
  then TAR (VAL) and FAR on the held-out fold; means over folds.

Counting is vectorised with sorted distances (``searchsorted``), which gives the same integer counts
as ``np.less(dist, threshold)`` and therefore bit-identical accuracies and thresholds.
"""
import numpy as np
from sklearn.model_selection import KFold

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
FAR_THRESHOLDS = np.arange(0, 4, 0.001)


def fold_splits(num_pairs, nfolds=10):
    """``[(train_idx, test_idx), ...]`` of the protocol's contiguous folds over ``num_pairs`` pairs.

    ``nfolds == 1`` trains and tests on every pair (insightface's ``LFold``), i.e. the best global
    threshold. Raises ValueError when there are fewer pairs than folds.
    """
    nfolds = int(nfolds)
    if nfolds < 1:
        raise ValueError(f"nfolds must be >= 1, got {nfolds}")
    if num_pairs < nfolds:
        raise ValueError(f"{num_pairs} pairs are too few for {nfolds} folds: every fold needs pairs; "
                         f"use a larger set or fewer folds (at most {num_pairs})")
    indices = np.arange(num_pairs)
    if nfolds == 1:
        return [(indices, indices)]
    return list(KFold(n_splits=nfolds, shuffle=False).split(indices))


def check_pairs(issame, nfolds=10):
    """Validate a pair list for the protocol; returns ``issame`` as a bool array ``(N,)``.

    Every held-out fold needs at least one positive and one negative pair, otherwise its TAR or FAR is
    a division by zero. Raises ValueError naming the offending folds. Cheap: call it when a set is
    loaded (e.g. before training starts) rather than at the first evaluation.
    """
    issame = np.asarray(issame)
    if issame.ndim != 1:
        raise ValueError(f"issame must be a flat list of booleans, got shape {issame.shape}")
    if issame.dtype.kind not in "bui" or (issame.dtype.kind != "b" and not np.isin(issame, (0, 1)).all()):
        raise ValueError(f"issame must hold booleans (or 0/1), got dtype {issame.dtype}")
    issame = issame.astype(bool)
    splits = fold_splits(len(issame), nfolds)
    no_neg = [i for i, (_, test) in enumerate(splits) if issame[test].all()]
    no_pos = [i for i, (_, test) in enumerate(splits) if not issame[test].any()]
    problems = []
    if no_neg:
        problems.append(f"no negative (different-identity) pair in fold(s) {_ranges(no_neg)}")
    if no_pos:
        problems.append(f"no positive (same-identity) pair in fold(s) {_ranges(no_pos)}")
    if problems:
        raise ValueError(
            f"{len(issame)} pairs in {len(splits)} contiguous folds: {'; '.join(problems)}. "
            "The protocol needs both kinds in every fold (TAR and FAR divide by their counts); "
            "interleave positive and negative pairs in the set, or use fewer folds")
    return issame


def _ranges(indices):
    """``[0, 1, 2, 5]`` -> ``'0-2, 5'``."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


def l2_normalize(embeddings):
    """Row-wise L2 normalisation in float64 (``sklearn.preprocessing.normalize``: zero rows stay zero)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return embeddings / norms


def pair_distances(embeddings):
    """Squared Euclidean distance of each normalised pair: ``(2N, D)`` -> ``(N,)`` in ``[0, 4]``.

    Pair ``i`` is rows ``2i`` and ``2i + 1``; rows are L2-normalised first (the published protocol).
    """
    normed = l2_normalize(embeddings)
    diff = normed[0::2] - normed[1::2]
    return np.sum(np.square(diff), axis=1)


def _less_counts(dist, issame, thresholds):
    """For each threshold t: (#positives with dist < t, #negatives with dist < t)."""
    pos = np.sort(dist[issame])
    neg = np.sort(dist[~issame])
    return (np.searchsorted(pos, thresholds, side="left"),
            np.searchsorted(neg, thresholds, side="left"))


def _rates(dist, issame, thresholds):
    """Per threshold: tpr, fpr, accuracy as insightface's ``calculate_accuracy`` (0 rate on empty class)."""
    n_pos = int(issame.sum())
    n_neg = issame.size - n_pos
    tp, fp = _less_counts(dist, issame, thresholds)
    tn = n_neg - fp
    tpr = tp / n_pos if n_pos else np.zeros(len(thresholds))
    fpr = fp / n_neg if n_neg else np.zeros(len(thresholds))
    acc = (tp + tn) / float(dist.size)
    return tpr, fpr, acc


def accuracy_folds(dist, issame, nfolds=10, thresholds=ACC_THRESHOLDS):
    """Fold-wise accuracy from pair distances.

    Returns ``(fold_accuracies (nfolds,), fold_thresholds (nfolds,), tpr (T,), fpr (T,))`` where
    ``tpr``/``fpr`` are the held-out rates at every threshold averaged over folds (the ROC curve).
    """
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    splits = fold_splits(len(dist), nfolds)
    accuracies = np.zeros(len(splits))
    best = np.zeros(len(splits))
    tprs = np.zeros((len(splits), len(thresholds)))
    fprs = np.zeros((len(splits), len(thresholds)))
    for fold, (train, test) in enumerate(splits):
        _, _, acc_train = _rates(dist[train], issame[train], thresholds)
        best_index = int(np.argmax(acc_train))
        tprs[fold], fprs[fold], acc_test = _rates(dist[test], issame[test], thresholds)
        accuracies[fold] = acc_test[best_index]
        best[fold] = thresholds[best_index]
    return accuracies, best, tprs.mean(axis=0), fprs.mean(axis=0)


def threshold_at_far(far, thresholds, far_target):
    """Threshold at which a non-decreasing FAR curve reaches ``far_target`` (0 when it never does).

    Linear interpolation of FAR -> threshold as insightface's ``interp1d(far, thresholds, 'slinear')``
    computed it with SciPy versions that accepted repeated FAR values (SciPy >= 1.9 raises "Expect x to
    not have duplicates" there, insightface issue #2152): between the last threshold whose FAR is
    <= target and the first whose FAR is > target; at the largest FAR value, its first threshold.
    """
    far = np.asarray(far, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if far.max() < far_target:
        return 0.0
    upper = int(np.searchsorted(far, far_target, side="right"))
    if upper == len(far):
        return float(thresholds[int(np.searchsorted(far, far_target, side="left"))])
    lower = upper - 1
    if lower < 0:
        return float(thresholds[0])
    slope = (thresholds[upper] - thresholds[lower]) / (far[upper] - far[lower])
    return float(thresholds[lower] + (far_target - far[lower]) * slope)


def _val_far(threshold, dist, issame):
    """TAR (VAL) and FAR of predicting "same" for ``dist < threshold``; classes must be non-empty."""
    predict = dist < threshold
    n_pos = int(issame.sum())
    n_neg = issame.size - n_pos
    return (float(np.sum(predict & issame)) / n_pos, float(np.sum(predict & ~issame)) / n_neg)


def tar_at_far(dist, issame, far_target, nfolds=10, thresholds=FAR_THRESHOLDS):
    """TAR at a FAR target: ``{'tar', 'tar_std', 'far', 'fold_thresholds'}``.

    ``tar``/``far`` are means over the held-out folds of VAL and of the FAR actually achieved.
    """
    if not 0 < far_target <= 1:
        raise ValueError(f"a FAR target must be in (0, 1], got {far_target}")
    dist = np.asarray(dist, dtype=np.float64)
    issame = check_pairs(issame, nfolds)
    splits = fold_splits(len(dist), nfolds)
    vals = np.zeros(len(splits))
    fars = np.zeros(len(splits))
    fold_thresholds = np.zeros(len(splits))
    for fold, (train, test) in enumerate(splits):
        n_neg = int((~issame[train]).sum())
        _, fp = _less_counts(dist[train], issame[train], thresholds)
        far_train = fp / float(n_neg)
        fold_thresholds[fold] = threshold_at_far(far_train, thresholds, far_target)
        vals[fold], fars[fold] = _val_far(fold_thresholds[fold], dist[test], issame[test])
    return {"tar": float(vals.mean()), "tar_std": float(vals.std()), "far": float(fars.mean()),
            "fold_thresholds": fold_thresholds.tolist()}


def evaluate(embeddings, issame, nfolds=10, far_targets=(1e-3, 1e-4), xnorm=None):
    """Verification metrics of one pair set (the published protocol).

    ``embeddings``: ``(2N, D)`` raw flip-summed embeddings, pair ``i`` = rows ``2i, 2i+1`` (they are
    L2-normalised here). ``issame``: ``(N,)`` booleans. Returns a dict:

    * ``accuracy``, ``accuracy_std``: mean and std of ``fold_accuracies`` (fractions in [0, 1]);
    * ``thresholds``: the distance threshold chosen for each fold;
    * ``tar_at_far``: ``{far_target: {'tar', 'tar_std', 'far', 'fold_thresholds'}}`` (``far`` achieved);
    * ``xnorm``: the ``xnorm`` given (:func:`eval.embeddings.xnorm` of the views), else the mean L2 norm of the
      embeddings passed in;
    * ``roc``: ``{'fpr', 'tpr', 'thresholds'}`` arrays, held-out rates averaged over folds;
    * ``num_pairs``, ``nfolds``.

    Raises ValueError for mismatched shapes, non-finite embeddings, fewer pairs than folds, or a fold
    without positive or negative pairs.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] < 2:
        raise ValueError(f"embeddings must be (2N, D) with D > 1, got shape {embeddings.shape}")
    issame = check_pairs(issame, nfolds)
    if embeddings.shape[0] != 2 * len(issame):
        raise ValueError(f"{embeddings.shape[0]} embeddings for {len(issame)} pairs; expected "
                         f"{2 * len(issame)} (two per pair)")
    if not np.isfinite(embeddings).all():
        bad = int((~np.isfinite(embeddings)).any(axis=1).sum())
        raise ValueError(f"{bad} of {embeddings.shape[0]} embeddings contain NaN or Inf "
                         "(has the network diverged?)")
    dist = pair_distances(embeddings)
    accuracies, fold_thresholds, tpr, fpr = accuracy_folds(dist, issame, nfolds)
    tars = {float(target): tar_at_far(dist, issame, float(target), nfolds) for target in far_targets}
    return {
        "accuracy": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std()),
        "fold_accuracies": accuracies.tolist(),
        "thresholds": fold_thresholds.tolist(),
        "tar_at_far": tars,
        "xnorm": float(np.linalg.norm(embeddings.astype(np.float64), axis=1).mean()) if xnorm is None else float(xnorm),
        "roc": {"fpr": fpr, "tpr": tpr, "thresholds": ACC_THRESHOLDS.copy()},
        "num_pairs": int(len(issame)),
        "nfolds": int(nfolds),
    }
