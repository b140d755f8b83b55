"""The training loop: its shared state, one optimisation step, one epoch, and a verification pass."""
import logging
import math
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from deploy.process import tune_malloc

from .heads import margin_scale_at
from .optim import current_lr

LOGGER_NAME = "seesawface.train"


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; raised before the poisoned update is applied."""


class TrainState:
    """Everything the loop and the callbacks share: settings, devices, blocks, trainer and counters."""

    def __init__(self, cfg, contexts, backbone, head, trainer, iters_per_epoch, num_classes, rank=0,
                 num_workers=1, logger=None, data_dir=None, amp=False, horovod=None):
        self.cfg, self.contexts = cfg, contexts
        self.backbone, self.head, self.trainer = backbone, head, trainer
        self.iters_per_epoch = int(iters_per_epoch)
        self.total_steps = self.iters_per_epoch * int(cfg["num_epochs"])
        self.num_classes = int(num_classes)
        self.rank, self.num_workers = rank, num_workers
        self.is_main = rank == 0
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.data_dir = data_dir
        self.epoch, self.batch, self.step = 0, 0, 0
        # --max-steps: the step at which the run stops with a checkpoint (None: runs all epochs)
        self.max_steps = int(cfg.get("max_steps") or 0) or None
        self.stopped = False  # set when the run stopped at --max-steps
        self.lr = cfg["lr"]
        self.start_time = time.time()
        self.callbacks = []
        self.global_batch = cfg["batch_size"] * len(contexts) * num_workers
        self.amp, self.horovod = amp, horovod
        self.verifier = None
        # --malloc-tuning on CPU: tune after the first step (tune_malloc_after_first_step)
        self.malloc_pending = bool(cfg.get("malloc_tuning")) and all(c.device_type == "cpu" for c in contexts)

    def log(self, message):
        """Log a line (prefixed with the rank when there are several workers)."""
        if self.num_workers > 1:
            message = f"[rank {self.rank}] {message}"
        self.logger.info(message)

    @property
    def last_step(self):
        """The step at which this run will end: the schedule's last, or ``--max-steps`` when that is earlier."""
        return self.total_steps if self.max_steps is None else min(self.total_steps, self.max_steps)

    def elapsed(self):
        return time.time() - self.start_time

    def checkpoint_meta(self):
        """What a training state file records besides parameters and optimizer state."""
        return {"config": self.cfg, "num_classes": self.num_classes, "network": self.cfg["network"],
                "emb_size": self.cfg["emb_size"], "global_batch": self.global_batch,
                "iters_per_epoch": self.iters_per_epoch, "data_dir": self.data_dir}

    def fire(self, event, *args):
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)


def mirror_batch(data, rng):
    """Flip a random half of a (B, 3, H, W) batch horizontally, with ``rng`` (deterministic per epoch)."""
    mask = rng.random_sample(data.shape[0]) < 0.5
    if not mask.any():
        return data
    cond = mx.nd.array(mask.astype(np.float32), ctx=data.context)
    return mx.nd.where(cond, mx.nd.flip(data, axis=3), data)


def epoch_seed(seed, epoch, rank=0):
    """Seed of everything random in one epoch (data order, flips, MXNet ops): a function of (seed, epoch)."""
    return (int(seed) * 1000003 + int(epoch) * 7919 + int(rank) * 104729 + 17) % (2 ** 31 - 1)


def tune_malloc_after_first_step(state):
    """``--malloc-tuning`` (CPU training): :func:`deploy.process.tune_malloc` once the first step has run, when
    glibc has mapped the graph's static buffers apart from the heap that then serves the per-operator copies
    (tuned before the first step, the heap fragments around them)."""
    state.malloc_pending = False
    tuned = tune_malloc()
    state.log("malloc: " + (", ".join(f"{k} {v}" for k, v in tuned.items()) + " (after the first step)" if tuned
                            else "not tuned (needs glibc on Linux)"))


def train_step(state, data, label, loss_fn):
    """One optimisation step on a (B, 3, 112, 112) batch split over the devices; returns loss, accuracy.

    Raises :class:`TrainingDiverged` before updating when the loss is not finite.
    """
    contexts = state.contexts
    data_parts = gluon.utils.split_and_load(data, contexts, even_split=True)
    label_parts = gluon.utils.split_and_load(label, contexts, even_split=True)
    losses, correct = [], []
    sharded = getattr(state.head, "sharded", False)
    with autograd.record():
        if sharded:  # fc7 split over the devices: one loss over every device's embeddings
            losses.append(state.head.loss([state.backbone(x) for x in data_parts], label_parts))
        else:
            for x, y in zip(data_parts, label_parts):
                logits = state.head(state.backbone(x), y)
                losses.append(loss_fn(logits, y))
                correct.append(mx.nd.sum(mx.nd.argmax(logits, axis=1) == y))
    if state.amp:
        from mxnet.contrib import amp
        with amp.scale_loss(losses, state.trainer) as scaled:
            autograd.backward(scaled)
    else:
        autograd.backward(losses)
    total = sum(float(l.sum().asscalar()) for l in losses)
    samples = sum(int(l.shape[0]) for l in losses)
    loss_value = total / samples
    if not math.isfinite(loss_value):
        raise TrainingDiverged(
            f"loss became {loss_value} at epoch {state.epoch + 1}, step {state.step + 1} (lr {state.lr:g}); "
            "the parameters were not updated with it and the last checkpoint is intact. Try a lower --lr, "
            "a longer --warmup-epochs or --softmax-warmup-epochs, or a smaller --margin-s")
    hvd = state.horovod
    # Horovod's DistributedTrainer already divides by the number of workers
    state.trainer.step(samples * (1 if hvd is not None else state.num_workers))
    if sharded:
        allreduce = None if hvd is None else (lambda name, array: hvd.allreduce_(array, average=False, name=name))
        state.head.step(state.lr, samples * state.num_workers, kvstore=state.trainer._kvstore, allreduce=allreduce)
        accuracy = state.head.last_accuracy
    else:
        accuracy = sum(float(c.asscalar()) for c in correct) / samples
    return loss_value, accuracy, samples


def epoch_batches(loader, epoch, start_batch=0):
    """Iterate ``loader`` over epoch ``epoch``'s batches from ``start_batch`` on: the same indices and
    augmentation, in the same order, as the batches ``start_batch..`` of an uninterrupted epoch; the skipped
    ones are not decoded (:meth:`datasets.loader.TrainLoader.iterate`)."""
    sampler = loader.batch_sampler
    sampler.set_epoch(epoch)
    if start_batch and not 0 < start_batch < len(sampler):
        raise ValueError(f"cannot start epoch {epoch + 1} at batch {start_batch}: it has {len(sampler)} batches")
    yield from loader.iterate(start_batch)


def train_one_epoch(state, loader, loss_fn, start_batch=0):
    """Run epoch ``state.epoch`` from batch ``start_batch`` (0: all its batches; more: continue a resumed epoch
    exactly, with the data order, flips and schedule of an uninterrupted run) until its end or ``--max-steps``
    (then ``state.stopped``); returns ``{'loss', 'accuracy', 'samples_per_sec', 'seconds', 'steps'}`` of the
    batches run."""
    cfg = state.cfg
    seed = epoch_seed(cfg["seed"], state.epoch, state.rank)
    mx.random.seed(seed)
    rng = np.random.RandomState(seed)
    batch_per_worker = state.global_batch // state.num_workers
    if cfg["mirror"]:  # the flips of the skipped batches: the same draws an uninterrupted epoch made
        for _ in range(start_batch):
            rng.random_sample(batch_per_worker)
    losses, accuracies, seen = [], [], 0
    tic = time.perf_counter()
    state.batch = start_batch
    for data, label in epoch_batches(loader, state.epoch, start_batch):
        if data.shape[0] != batch_per_worker:
            raise ValueError(f"the loader gave a batch of {data.shape[0]}, expected {batch_per_worker}")
        labels_np = label.asnumpy()
        if labels_np.min() < 0 or labels_np.max() >= state.num_classes:
            raise ValueError(f"label {labels_np.max():.0f} outside [0, {state.num_classes}): train.rec and the "
                             "property file disagree")
        if cfg["mirror"]:
            data = mirror_batch(data, rng)
        fraction = state.epoch + state.batch / state.iters_per_epoch
        state.head.set_margin_scale(margin_scale_at(cfg, fraction))
        state.lr = current_lr(state.trainer)
        loss, accuracy, samples = train_step(state, data, label, loss_fn)
        if state.malloc_pending:
            tune_malloc_after_first_step(state)
        state.batch += 1
        state.step += 1
        seen += samples
        losses.append(loss)
        accuracies.append(accuracy)
        state.fire("on_batch_end", {"loss": loss, "accuracy": accuracy, "lr": state.lr, "samples": samples,
                                    "margin_scale": state.head.margin_scale})
        if cfg["eval_interval"] and state.batch % cfg["eval_interval"] == 0 and state.batch < state.iters_per_epoch:
            metrics = evaluate(state)
            metrics["train"] = {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accuracies))}
            state.fire("on_eval", metrics)
        if state.max_steps is not None and state.step >= state.max_steps:
            state.stopped = True
            break
    seconds = time.perf_counter() - tic
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accuracies)),
            "samples_per_sec": seen * state.num_workers / max(seconds, 1e-9), "seconds": seconds,
            "steps": state.batch - start_batch}


def evaluate(state):
    """Verify on every loaded set; returns ``{'sets': {name: result}, 'mean_accuracy': float}`` and logs a
    line per set, then the mean with the time taken and the backend. Rank 0 only (other ranks return an
    empty dict)."""
    if not state.is_main or state.verifier is None or not state.verifier.sets:
        return {}
    tic = time.perf_counter()
    results = state.verifier(state.backbone)
    sets = {}
    for name, result in results.items():
        tar = result.get("tar_at_far", {})
        tar_text = "  ".join(f"TAR@FAR={far:g} {v['tar']:.4f}" for far, v in sorted(tar.items(), reverse=True))
        state.log(f"[{name}] epoch {state.step / state.iters_per_epoch:.2f} accuracy "
                  f"{result['accuracy']:.4f} ± {result['accuracy_std']:.4f}  {tar_text}  xnorm {result['xnorm']:.2f}")
        sets[name] = {"accuracy": float(result["accuracy"]), "accuracy_std": float(result["accuracy_std"]),
                      "xnorm": float(result["xnorm"])}
    mean = float(np.mean([s["accuracy"] for s in sets.values()]))
    last = getattr(state.verifier, "last", {})
    how = f", {last['backend']}, {last['prepare_seconds']:.2f} s preparing" if "backend" in last else ""
    state.log(f"verification mean accuracy {mean:.4f} ({time.perf_counter() - tic:.1f} s{how})")
    return {"sets": sets, "mean_accuracy": mean}
