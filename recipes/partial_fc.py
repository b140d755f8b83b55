"""fc7 sharded over devices (model parallel, as Partial FC does) with optional class sampling.

With millions of identities the fc7 weight (num_classes × emb) no longer fits one device next to the
backbone. :class:`PartialFC` splits it into contiguous class ranges, one per context; the backbone stays data
parallel. Each step:

1. every device's embeddings are L2-normalised and copied to every shard (the all-gather of Partial FC);
2. shard k computes the cosines of the whole batch against its (sampled) classes, applies the margin only
   where the label falls in its range, and scales by s;
3. the softmax cross-entropy is combined exactly across shards: global max = max of the shard maxima,
   sum-exp = sum of the shard sum-exps (each shifted by the global max), target logit from the label's
   shard; ``loss = log(sum_exp) + max - target``.

Everything runs under ``mx.autograd``: ``loss.backward()`` fills the shard weights' gradients and sends the
embedding gradient back to the backbone on each device. With ``sample_rate < 1`` each shard keeps the
positive classes of the batch plus uniformly drawn negatives, ``ceil(rate · shard_size)`` rows in all, and
:meth:`PartialFC.step` updates (SGD with momentum and weight decay) only the rows sampled in this step, as
Partial FC does. At ``sample_rate=1`` the result equals the unsharded margin softmax (tests check loss and
gradients).

Distributed (``dist_sync``/``dist_device_sync``): every worker holds the whole fc7, sharded over its own
devices; :meth:`step` sums the shard gradients and the sampled-row masks of all workers through the kvstore
before the identical local update, so every worker keeps the same fc7. The Gluon Trainer of the backbone must
then use ``update_on_kvstore=False`` (servers only sum; no server-side optimizer that would treat these
gradients as its own keys). With Horovod, pass ``allreduce`` to :meth:`step` instead.

Checkpoints: :meth:`save` gathers the shards into one ``(num_classes, emb)`` weight (and momentum) array in
class order; :meth:`load` splits it for whatever device count the run has, so resume does not depend on the
number of devices. Initialisation is per fixed block of classes, so it does not depend on it either.
"""
import math

import mxnet as mx
import numpy as np

from .heads import COS_EPS, MarginWarmup, target_cosine

INIT_BLOCK = 65536  # classes per initialisation block (seeded by block index, independent of sharding)
KV_KEY_BASE = 1 << 20  # kvstore keys of fc7 shards, far from the Trainer's parameter indices


def shard_ranges(num_classes, num_shards):
    """Contiguous, balanced class ranges: ``[(start, end), ...]``, the first ``num_classes % num_shards``
    ranges one class longer."""
    if num_shards < 1 or num_classes < num_shards:
        raise ValueError(f"cannot split {num_classes} classes over {num_shards} devices")
    base, extra = divmod(num_classes, num_shards)
    ranges, start = [], 0
    for k in range(num_shards):
        end = start + base + (1 if k < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def num_sampled(shard_size, sample_rate):
    """Rows kept per shard and step: ``ceil(sample_rate · shard_size)`` (at least the positives present)."""
    return shard_size if sample_rate >= 1.0 else max(1, int(math.ceil(sample_rate * shard_size)))


def init_weight_rows(start, end, emb_size, std=0.01, seed=0):
    """Rows ``[start, end)`` of the N(0, std²) initial fc7 weight, identical whatever the sharding."""
    rows = []
    for block in range(start // INIT_BLOCK, (end - 1) // INIT_BLOCK + 1):
        lo, hi = block * INIT_BLOCK, (block + 1) * INIT_BLOCK
        rng = np.random.RandomState([seed, block])
        full = rng.normal(0.0, std, size=(INIT_BLOCK, emb_size)).astype(np.float32)
        rows.append(full[max(start, lo) - lo:min(end, hi) - lo])
    return np.concatenate(rows)


class PartialFC(MarginWarmup):
    """fc7 weight (num_classes × emb_size) split over ``contexts``, computing the margin softmax loss.

    Parameters: ``num_classes``, ``emb_size``; ``contexts`` (list of mx.Context, one shard each);
    ``sample_rate`` in (0, 1]; ``scale`` s and ``margins`` (m1, m2, m3) of :mod:`recipes.heads` (default ArcFace 64, 0.5;
    ``None``: the plain, unnormalised softmax head ``x · Wᵀ`` as in ``recipes.heads``);
    ``momentum``, ``wd`` of the fc7 SGD update; ``init_std``, ``seed`` of the N(0, std²) initialisation
    (must be the same on every worker); ``sample_seed`` of the negative sampling (default: from ``seed``;
    give each distributed worker its own, e.g. ``seed + rank``).
    """

    def __init__(self, num_classes, emb_size, contexts, sample_rate=1.0, scale=64.0, margins=(1.0, 0.5, 0.0),
                 momentum=0.9, wd=5e-4, init_std=0.01, seed=0, sample_seed=None):
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"--sample-rate must be in (0, 1], got {sample_rate}")
        contexts = list(contexts) if isinstance(contexts, (list, tuple)) else [contexts]
        self.num_classes, self.emb_size = int(num_classes), int(emb_size)
        self.contexts = contexts
        self.ranges = shard_ranges(self.num_classes, len(contexts))
        self.sample_rate = float(sample_rate)
        self.scale = float(scale)
        self.margins = None if margins is None else tuple(float(m) for m in margins)
        self.margin_scale = 1.0
        self.momentum, self.wd = float(momentum), float(wd)
        self._rng = np.random.RandomState(seed + 7919 if sample_seed is None else sample_seed)
        self.weights, self.momenta, self.masks = [], [], []
        for (start, end), ctx in zip(self.ranges, contexts):
            weight = mx.nd.array(init_weight_rows(start, end, self.emb_size, init_std, seed), ctx=ctx)
            weight.attach_grad()
            self.weights.append(weight)
            self.momenta.append(mx.nd.zeros(weight.shape, ctx=ctx))
            self.masks.append(mx.nd.zeros((end - start, 1), ctx=ctx))
        self._kv_ready = False
        self.last_accuracy = None

    # ---------------------------------------------------------------- forward

    def _sample(self, shard, labels):
        """Local row indices kept for ``shard`` (sorted) and each label's position among them (-1: absent)."""
        start, end = self.ranges[shard]
        size = end - start
        inside = (labels >= start) & (labels < end)
        if self.sample_rate >= 1.0:
            index = None
            local = np.where(inside, labels - start, -1)
        else:
            positives = np.unique(labels[inside] - start)
            wanted = num_sampled(size, self.sample_rate)
            if len(positives) >= wanted:
                index = positives
            else:
                negatives = np.setdiff1d(np.arange(size), positives, assume_unique=True)
                chosen = self._rng.choice(negatives, wanted - len(positives), replace=False)
                index = np.sort(np.concatenate([positives, chosen]))
            local = np.full(labels.shape, -1, dtype=np.int64)
            local[inside] = np.searchsorted(index, labels[inside] - start)
        return index, local

    def __call__(self, embeddings, labels):
        """Margin softmax cross-entropy of a batch, one value per sample.

        ``embeddings``: raw (unnormalised) embeddings, an NDArray (B, emb) or a list of them (one per
        data-parallel device); ``labels``: matching NDArray(s) of class ids (B,). Returns the per-sample loss
        (B_total,) on ``contexts[0]``, in the order of the concatenated inputs; call it inside
        ``autograd.record()`` and ``backward()`` the (summed) loss. Sets ``last_accuracy`` (top-1 over all
        sampled classes, margin included).
        """
        if not isinstance(embeddings, (list, tuple)):
            embeddings, labels = [embeddings], [labels]
        label_np = np.concatenate([lab.asnumpy().reshape(-1) for lab in labels]).astype(np.int64)
        if label_np.min() < 0 or label_np.max() >= self.num_classes:
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {label_np.min()}..{label_np.max()}")
        batch = len(label_np)
        plain = self.margins is None
        inputs = embeddings if plain else [mx.nd.L2Normalization(e, mode="instance") for e in embeddings]
        margins = self.effective_margins()
        home = self.contexts[0]
        shard_max, shard_sumexp, shard_target, shard_parts = [], [], [], []
        self._sampled = []
        for shard, ctx in enumerate(self.contexts):
            index, local = self._sample(shard, label_np)
            self._sampled.append(index)
            x = mx.nd.concat(*[v.as_in_context(ctx) for v in inputs], dim=0)
            weight = self.weights[shard]
            if index is not None:
                weight = mx.nd.take(weight, mx.nd.array(index, ctx=ctx, dtype="int64"))
            w = weight if plain else mx.nd.L2Normalization(weight, mode="instance")
            cos = mx.nd.FullyConnected(x, w, no_bias=True, num_hidden=w.shape[0])
            present = mx.nd.array(local >= 0, ctx=ctx)
            position = mx.nd.array(np.maximum(local, 0), ctx=ctx)
            if plain:  # unnormalised softmax head: logits x·Wᵀ
                logits = cos
                target = mx.nd.pick(logits, position, axis=1)
            else:
                cos = mx.nd.clip(cos, -1.0 + COS_EPS, 1.0 - COS_EPS)
                cos_y = mx.nd.pick(cos, position, axis=1)
                if margins == (1.0, 0.0, 0.0):
                    logits, target = self.scale * cos, self.scale * cos_y
                else:
                    target_cos = target_cosine(mx.nd, cos_y, *margins)
                    onehot = mx.nd.one_hot(position, depth=w.shape[0]) * present.reshape((-1, 1))
                    logits = self.scale * (cos + onehot * (target_cos - cos_y).reshape((-1, 1)))
                    target = self.scale * target_cos
            local_max = mx.nd.max(logits, axis=1).detach()
            shard_max.append(local_max.as_in_context(home))
            shard_parts.append((logits, ctx, mx.nd.argmax(logits, axis=1).detach()))
            shard_target.append((target * present).as_in_context(home))
        global_max = shard_max[0]
        for value in shard_max[1:]:
            global_max = mx.nd.maximum(global_max, value)
        for logits, ctx, _ in shard_parts:
            shifted = logits - global_max.as_in_context(ctx).reshape((-1, 1))
            shard_sumexp.append(mx.nd.sum(mx.nd.exp(shifted), axis=1).as_in_context(home))
        sum_exp = mx.nd.add_n(*shard_sumexp) if len(shard_sumexp) > 1 else shard_sumexp[0]
        target = mx.nd.add_n(*shard_target) if len(shard_target) > 1 else shard_target[0]
        loss = mx.nd.log(sum_exp) + global_max - target
        self.last_accuracy = self._accuracy(shard_parts, shard_max, label_np)
        assert loss.shape == (batch,)
        return loss

    def _accuracy(self, shard_parts, shard_max, label_np):
        maxima = np.stack([m.asnumpy() for m in shard_max])  # (shards, B)
        best = maxima.argmax(axis=0)
        predicted = np.empty(len(label_np), dtype=np.int64)
        for shard, (_, _, argmax) in enumerate(shard_parts):
            rows = best == shard
            if not rows.any():
                continue
            local = argmax.asnumpy().astype(np.int64)[rows]
            index = self._sampled[shard]
            predicted[rows] = self.ranges[shard][0] + (local if index is None else index[local])
        return float((predicted == label_np).mean())

    # ---------------------------------------------------------------- update

    def _aggregate(self, kvstore):
        """Sum shard gradients and sampled-row masks over the workers of a dist kvstore (in place)."""
        if not self._kv_ready:
            keys, values = [], []
            for shard, weight in enumerate(self.weights):
                keys += [KV_KEY_BASE + 2 * shard, KV_KEY_BASE + 2 * shard + 1]
                values += [mx.nd.zeros(weight.shape, ctx=weight.context),
                           mx.nd.zeros(self.masks[shard].shape, ctx=weight.context)]
            kvstore.init(keys, values)
            # MXNet 1.9.1 does not wait for rank 0's init pushes before its barrier: a worker's first push
            # could reach a server first and be taken for the initial value. Wait, then barrier again.
            mx.nd.waitall()
            kvstore._barrier()
            self._kv_ready = True
        for shard, weight in enumerate(self.weights):
            kvstore.pushpull(KV_KEY_BASE + 2 * shard, weight.grad, out=weight.grad)
            kvstore.pushpull(KV_KEY_BASE + 2 * shard + 1, self.masks[shard], out=self.masks[shard])

    def step(self, learning_rate, rescale_grad=1.0, kvstore=None, allreduce=None):
        """SGD-momentum update of the rows sampled in the last forward (every row at ``sample_rate=1``).

        ``mom = momentum·mom − lr·(rescale_grad·grad + wd·w); w += mom`` on those rows only (MXNet's
        ``sgd_mom_update``). ``rescale_grad`` is usually 1/global_batch. ``kvstore``: a ``dist_*`` KVStore to
        sum gradients and sampled rows over workers first (see module docstring); local kvstores are ignored.
        ``allreduce``: with Horovod instead, a function ``(name, array)`` summing ``array`` over workers in
        place, e.g. ``lambda name, a: hvd.allreduce_(a, average=False, name=name)``.
        """
        for shard, mask in enumerate(self.masks):
            index = self._sampled[shard]
            if index is None:
                mask[:] = 1.0
            else:
                values = np.zeros(mask.shape, dtype=np.float32)
                values[index] = 1.0
                mask[:] = values
        if kvstore is not None and "dist" in kvstore.type:
            self._aggregate(kvstore)
        elif allreduce is not None:
            for shard, weight in enumerate(self.weights):
                allreduce(f"fc7_grad_{shard}", weight.grad)
                allreduce(f"fc7_mask_{shard}", self.masks[shard])
        hyper = dict(lr=learning_rate, momentum=self.momentum, wd=self.wd, rescale_grad=rescale_grad)
        for weight, mom, mask in zip(self.weights, self.momenta, self.masks):
            rows = np.flatnonzero(mask.asnumpy().reshape(-1) > 0)
            if len(rows) == len(mask):
                mx.nd.sgd_mom_update(weight, weight.grad, mom, out=weight, **hyper)
            elif len(rows):
                # gather the updated rows, fused update, scatter back: transients are rows × emb only
                index = mx.nd.array(rows, ctx=weight.context, dtype="int64")
                sub_weight, sub_mom = mx.nd.take(weight, index), mx.nd.take(mom, index)
                mx.nd.sgd_mom_update(sub_weight, mx.nd.take(weight.grad, index), sub_mom, out=sub_weight, **hyper)
                mx.nd.contrib.index_copy(weight, index, sub_weight, out=weight)
                mx.nd.contrib.index_copy(mom, index, sub_mom, out=mom)
            weight.grad[:] = 0.0

    # ---------------------------------------------------------------- state

    def gather_weight(self):
        """The whole fc7 weight as numpy (num_classes, emb_size), class order."""
        return np.concatenate([w.asnumpy() for w in self.weights])

    def _split(self, array):
        return [array[start:end] for start, end in self.ranges]

    def set_weight(self, weight, momentum=None):
        """Load a full (num_classes, emb_size) weight (and optional momentum) into the shards."""
        weight = np.asarray(weight, dtype=np.float32)
        if weight.shape != (self.num_classes, self.emb_size):
            raise ValueError(f"fc7 weight has shape {weight.shape}, this run needs "
                             f"({self.num_classes}, {self.emb_size}): check num_classes and emb_size")
        for target, rows in zip(self.weights, self._split(weight)):
            target[:] = rows
        moms = self._split(np.asarray(momentum, dtype=np.float32)) if momentum is not None else None
        for shard, mom in enumerate(self.momenta):
            mom[:] = moms[shard] if moms is not None else 0.0

    def save(self, fname):
        """Write ``{'fc7_weight', 'fc7_momentum'}`` as full (num_classes, emb) arrays (``mx.nd.save``)."""
        momentum = np.concatenate([m.asnumpy() for m in self.momenta])
        mx.nd.save(fname, {"fc7_weight": mx.nd.array(self.gather_weight()), "fc7_momentum": mx.nd.array(momentum)})

    def load(self, fname):
        """Read a file written by :meth:`save` (any device count) into this run's shards."""
        arrays = mx.nd.load(fname)
        if "fc7_weight" not in arrays:
            raise ValueError(f"{fname} holds no 'fc7_weight' (keys: {sorted(arrays)})")
        momentum = arrays.get("fc7_momentum")
        self.set_weight(arrays["fc7_weight"].asnumpy(), None if momentum is None else momentum.asnumpy())

    def memory_per_device(self):
        """Bytes of persistent fc7 state (weight, gradient, momentum, row mask) held on each context."""
        return [sum(a.size * 4 for a in (w, w.grad, m, k))
                for w, m, k in zip(self.weights, self.momenta, self.masks)]


class _StateArray:
    """Checkpoint view of one full (num_classes, emb) array of a :class:`ShardedHead` (weight or momentum).

    Quacks like a Gluon Parameter for ``recipes.checkpoint``: ``shape``, ``data(ctx)`` (the gathered array),
    ``set_data(value)`` (split over this run's shards), so state files stay device-count independent.
    """

    def __init__(self, pfc, which):
        self._pfc, self._which = pfc, which
        self.shape = (pfc.num_classes, pfc.emb_size)

    def data(self, ctx=None):
        arrays = self._pfc.weights if self._which == "weight" else self._pfc.momenta
        return mx.nd.array(np.concatenate([a.asnumpy() for a in arrays]))

    def set_data(self, value):
        value = value.asnumpy() if isinstance(value, mx.nd.NDArray) else np.asarray(value)
        if self._which == "weight":
            momentum = np.concatenate([m.asnumpy() for m in self._pfc.momenta])
            self._pfc.set_weight(value, momentum)
        else:
            self._pfc.set_weight(self._pfc.gather_weight(), value)


class ShardedHead(mx.gluon.Block):
    """:class:`PartialFC` behind the margin-head interface of ``recipes.train`` (``--fc7-parallel``).

    ``sharded = True`` tells the training step to call :meth:`loss` with every device's embeddings at once
    instead of ``head(embeddings, labels) -> logits`` per device, and :meth:`step` after the Trainer. It
    holds no Gluon parameters (the Trainer leaves fc7 alone); checkpoints see ``weight`` and ``momentum`` as
    full (num_classes, emb) arrays. ``set_margin_scale``/``margin_scale`` as ``recipes.heads.MarginHead``.
    """

    sharded = True

    def __init__(self, num_classes, emb_size, contexts, sample_rate=1.0, scale=64.0, margins=(1.0, 0.5, 0.0),
                 momentum=0.9, wd=5e-4, lr_mult=1.0, seed=0, rank=0, **kwargs):
        super().__init__(**kwargs)
        self.pfc = PartialFC(num_classes, emb_size, contexts, sample_rate=sample_rate, scale=scale,
                             margins=margins, momentum=momentum, wd=wd, seed=seed, sample_seed=seed * 1009 + rank)
        self.lr_mult = float(lr_mult)
        self._state = {"weight": _StateArray(self.pfc, "weight"), "momentum": _StateArray(self.pfc, "momentum")}

    @property
    def margin_scale(self):
        return self.pfc.margin_scale

    def set_margin_scale(self, value):
        self.pfc.set_margin_scale(value)

    def effective_margins(self):
        return self.pfc.effective_margins()

    def _collect_params_with_prefix(self, prefix=""):
        return {prefix + name: array for name, array in self._state.items()}

    def loss(self, embeddings, labels):
        """Per-sample loss (B_total,) on the first context; see :meth:`PartialFC.__call__`."""
        return self.pfc(embeddings, labels)

    @property
    def last_accuracy(self):
        return self.pfc.last_accuracy

    def step(self, learning_rate, global_batch, kvstore=None, allreduce=None):
        """Update fc7 after ``trainer.step``: ``learning_rate`` is the Trainer's for this step (× ``lr_mult``)."""
        kv = kvstore if kvstore is not None and not isinstance(kvstore, str) else None
        self.pfc.step(learning_rate * self.lr_mult, 1.0 / global_batch, kvstore=kv, allreduce=allreduce)

    def forward(self, *args):
        raise RuntimeError("ShardedHead computes the loss over all devices at once: call .loss(embeddings_list, "
                           "labels_list), not head(x, y)")
