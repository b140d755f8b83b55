"""Optimiser setup (the paper's schedule, docs/training.md): gluoncv lr schedulers, per-parameter weight decay, the Gluon Trainer.

The schedule is iteration based: ``iters_per_epoch = images // global_batch``; the lr steps at
``epoch · iters_per_epoch``, optionally after a linear warm-up (gluoncv ``LRSequential`` of a ``linear`` and a
``step`` :class:`gluoncv.utils.LRScheduler`).
"""
import sys

import mxnet as mx

from .config import lr_steps


def _import_gluoncv_schedulers():
    """``gluoncv.utils.LRScheduler, LRSequential``.

    gluoncv 0.10.5's package ``__init__`` raises RuntimeError when a PyTorch >= 2 is installed next to it (an
    optional-backend version check unrelated to the MXNet schedulers); hide torch from that check only.
    """
    saved = sys.modules.get("torch")
    sys.modules["torch"] = None
    try:
        from gluoncv.utils import LRScheduler, LRSequential
    finally:
        if saved is None:
            del sys.modules["torch"]
        else:
            sys.modules["torch"] = saved
    return LRScheduler, LRSequential


LRScheduler, LRSequential = _import_gluoncv_schedulers()

NO_DECAY_SUFFIXES = ("gamma", "beta", "bias", "alpha", "running_mean", "running_var")


def base_lr(cfg, global_batch=None):
    """The peak lr of this run: ``lr``, scaled linearly (``lr × global_batch / lr_batch``) when the global batch
    is smaller than ``lr_batch``, the batch the configured lr is meant for (docs/training.md: ArcFace s=64 at
    lr 0.1 rewrites fc7 rows outright at small batches)."""
    lr, ref = float(cfg["lr"]), int(cfg.get("lr_batch") or 0)
    if ref > 0 and global_batch and global_batch < ref:
        return lr * global_batch / ref
    return lr


def build_lr_scheduler(cfg, iters_per_epoch, global_batch=None):
    """gluoncv scheduler giving the lr at optimizer update ``num_update`` (1-based).

    Linear warm-up from 0 to :func:`base_lr` over ``warmup_epochs`` (if > 0), then that lr multiplied by
    ``lr_factor`` at each epoch of ``lr_steps`` (epochs counted from the start of training, warm-up included).
    """
    if iters_per_epoch <= 0:
        raise ValueError("iters_per_epoch must be positive")
    peak = base_lr(cfg, global_batch)
    total = int(cfg["num_epochs"]) * int(iters_per_epoch)
    warm = int(round(float(cfg["warmup_epochs"]) * iters_per_epoch))
    warm = min(warm, total - 1)
    steps = [s * iters_per_epoch - warm for s in lr_steps(cfg) if s < cfg["num_epochs"]]
    main = LRScheduler("step", base_lr=peak, niters=total - warm, step_iter=[s for s in steps if s > 0],
                       step_factor=cfg["lr_factor"])
    if warm <= 0:
        return LRSequential([main])
    return LRSequential([LRScheduler("linear", base_lr=0.0, target_lr=peak, niters=warm), main])


def set_param_multipliers(backbone, head, cfg):
    """Weight decay and lr multipliers relative to the optimizer's ``wd`` (returned).

    Backbone weights: ``cfg['wd']``; fc7 weight: ``cfg['fc7_wd']`` and ``fc7_lr_mult``; BatchNorm, PReLU
    and biases: no decay.
    """
    base_wd = cfg["wd"] if cfg["wd"] > 0 else cfg["fc7_wd"]
    for name, param in backbone.collect_params().items():
        no_decay = name.endswith(NO_DECAY_SUFFIXES) or base_wd == 0
        param.wd_mult = 0.0 if no_decay else cfg["wd"] / base_wd
    for name, param in head.collect_params().items():
        param.wd_mult = 0.0 if base_wd == 0 else cfg["fc7_wd"] / base_wd
        param.lr_mult = cfg["fc7_lr_mult"]
    return base_wd


def build_trainer(backbone, head, cfg, iters_per_epoch, kvstore=None, horovod=None, global_batch=None):
    """Gluon Trainer over backbone + head parameters (SGD momentum by default), lr from
    :func:`build_lr_scheduler`. ``kvstore``: a KVStore object, a type name, or None (single device).

    ``update_on_kvstore=False``: every worker/device applies the same update to summed gradients, so the
    optimizer state lives in the Trainer and can be saved and reloaded on any number of devices.
    ``horovod``: the ``horovod.mxnet`` module: a ``DistributedTrainer`` (allreduce-averaged gradients) instead.
    """
    base_wd = set_param_multipliers(backbone, head, cfg)
    scheduler = build_lr_scheduler(cfg, iters_per_epoch, global_batch)
    params = dict(backbone.collect_params().items())
    params.update(head.collect_params().items())
    opt_args = {"wd": base_wd, "lr_scheduler": scheduler}
    if cfg["optimizer"] in ("sgd", "nag"):
        opt_args["momentum"] = cfg["momentum"]
    if cfg.get("amp"):
        opt_args["multi_precision"] = True
    try:
        optimizer = mx.optimizer.create(cfg["optimizer"], **opt_args)
    except (ValueError, mx.base.MXNetError) as err:
        raise ValueError(f"optimizer {cfg['optimizer']!r}: {err}") from None
    if horovod is not None:
        return horovod.DistributedTrainer(params, optimizer)
    return mx.gluon.Trainer(params, optimizer, kvstore=kvstore, update_on_kvstore=False)


def current_lr(trainer):
    """The lr the optimizer will use for its next update."""
    opt = trainer.optimizer
    return opt.lr_scheduler(opt.num_update + 1) if opt.lr_scheduler is not None else opt.lr
