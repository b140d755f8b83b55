"""Setting up a training run: settings and resume, output folder and log, data, network, head and trainer.

Each function builds one thing of :func:`recipes.train.run` and checks it before the first step, so that a
mismatch (class count, network, image size, batch) fails with a message instead of mid-epoch.
"""
import logging
import os
import sys
import warnings
from types import SimpleNamespace

import mxnet as mx
import numpy as np

import datasets
import symbols
from eval.sets import load_sets

from . import checkpoint as ckpt
from . import config as config_mod
from . import fused
from .callbacks import truncate_after_step
from .heads import build_head, margins_of
from .loop import LOGGER_NAME
from .optim import base_lr, build_trainer, current_lr
from .partial_fc import ShardedHead


# ------------------------------------------------------------------------------------------- settings
def prepare_resume(cli):
    """Find the state file of ``--resume`` and its saved settings: ``(path, meta)`` or ``(None, None)``."""
    spec = cli.get("resume")
    if spec is None:
        return None, None
    output_dir = cli.get("output_dir")
    if output_dir is None and spec == "auto":
        output_dir = os.path.join("outputs", cli.get("network") or config_mod.DEFAULTS["network"])
    path = ckpt.find_resume_state(spec, output_dir)
    meta, _ = ckpt.read_state(path)
    return path, meta


def resolve_settings(cli, resume_meta=None):
    """The run's settings: the config layers, or a resumed checkpoint's settings under the command line."""
    base = resume_meta["config"] if resume_meta else None
    return config_mod.resolve(cli, base)


def fit_global_batch(cfg, cli, resume_meta, devices):
    """When resuming without ``--batch-size``: the per-device batch that keeps the checkpoint's global batch on
    this run's devices (so the schedule, counted in steps, continues exactly)."""
    if not resume_meta or "batch_size" in cli or not resume_meta.get("global_batch"):
        return
    global_batch = resume_meta["global_batch"]
    per_device, rest = divmod(global_batch, len(devices.contexts) * devices.num_workers)
    if rest or per_device == 0:
        raise ValueError(f"the checkpoint was trained with a global batch of {global_batch}, which does not "
                         f"split over {len(devices.contexts) * devices.num_workers} device(s); pass --batch-size "
                         "explicitly")
    cfg["batch_size"] = per_device


# ------------------------------------------------------------------------------------------- output
def setup_logging(output_dir, is_main):
    """Log lines to stdout and (rank 0) to ``output_dir/train.log``."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if is_main:
        handler = logging.FileHandler(os.path.join(output_dir, "train.log"))
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def prepare_output(cfg, rank):
    """Create the output folder, start the log, write ``config.yaml`` (rank 0); returns the logger."""
    cfg["output_dir"] = cfg["output_dir"] or os.path.join("outputs", cfg["network"])
    os.makedirs(cfg["output_dir"], exist_ok=True)
    logger = setup_logging(cfg["output_dir"], rank == 0)
    if rank == 0:
        config_mod.save_yaml(cfg, os.path.join(cfg["output_dir"], "config.yaml"))
    return logger


def enable_amp(cfg, contexts):
    """``--amp``: MXNet's mixed precision on GPUs (a warning and float32 elsewhere); returns whether it is on."""
    if not cfg["amp"]:
        return False
    if not all(c.device_type == "gpu" for c in contexts):
        warnings.warn("--amp: mixed precision needs GPUs here; training in float32")
        return False
    from mxnet.contrib import amp
    amp.init()
    return True


# ------------------------------------------------------------------------------------------- data
def resolve_data(cfg, logger=None):
    """Data folder of the run: ``--data-dir`` or the cached synthetic dataset (generated on first use)."""
    if cfg["data_dir"]:
        data_dir = cfg["data_dir"]
        if not os.path.isdir(data_dir):
            raise ValueError(f"--data-dir {data_dir} is not a folder (expected train.rec, train.idx, property, *.bin)")
        return data_dir
    root = cfg["synthetic_root"]
    if logger:
        logger.info(f"no --data-dir: using the synthetic dataset in {root} (generated once, then cached)")
    return datasets.synthetic.ensure_default_dataset(root)


def check_data(dataset, num_classes, data_dir):
    """Catch data/class-count problems before the first step."""
    if num_classes < 2:
        raise ValueError(f"{data_dir}: {num_classes} classes; a softmax head needs at least 2")
    dataset_classes = getattr(dataset, "num_classes", None)
    if dataset_classes is not None and int(dataset_classes) != num_classes:
        raise ValueError(f"{data_dir}: property says {num_classes} classes but train.rec holds {dataset_classes}; "
                         "fix the property file")
    image, label = dataset[0]
    shape = tuple(np.asarray(image).shape)
    if shape != (3, 112, 112):
        raise ValueError(f"{data_dir}/train.rec: images decode to {shape}, the networks need (3, 112, 112)")
    if not 0 <= int(label) < num_classes:
        raise ValueError(f"{data_dir}/train.rec: label {label} outside [0, {num_classes})")


def build_data(cfg, devices, logger):
    """The training loader of this rank: ``data_dir``, ``loader``, ``dataset``, ``num_classes``,
    ``iters_per_epoch``."""
    data_dir = resolve_data(cfg, logger)
    loader, dataset = datasets.build_train_loader(
        os.path.join(data_dir, "train.rec"), cfg["batch_size"] * len(devices.contexts), num_workers=cfg["num_workers"],
        shuffle=True, rank=devices.rank, num_parts=devices.num_workers, mirror=False, color_jitter=cfg["color_jitter"],
        seed=cfg["seed"])
    if os.path.isfile(os.path.join(data_dir, "property")):
        num_classes = int(datasets.read_property(data_dir)[0])
    else:
        num_classes = int(dataset.num_classes)
        logger.info(f"no property file in {data_dir}: {num_classes} classes, taken from the records ("
                    + ("the header record's identity ranges)" if dataset.layout == "ms1mv2" else "the largest label + 1)"))
    check_data(dataset, num_classes, data_dir)
    return SimpleNamespace(data_dir=data_dir, loader=loader, dataset=dataset, num_classes=num_classes,
                           iters_per_epoch=len(loader))


def check_resume(path, meta, cfg, data):
    """A checkpoint resumes only on the same data, network and steps per epoch."""
    if not meta:
        return
    if meta.get("num_classes") != data.num_classes:
        raise ValueError(f"the checkpoint {path} has {meta.get('num_classes')} classes, the data in {data.data_dir} "
                         f"has {data.num_classes}: resume on the same data")
    if meta.get("network") != cfg["network"]:
        raise ValueError(f"the checkpoint {path} is a {meta.get('network')}, not {cfg['network']}")
    if meta.get("iters_per_epoch") not in (None, data.iters_per_epoch):
        raise ValueError(f"the checkpoint ran {meta['iters_per_epoch']} steps per epoch, this run would run "
                         f"{data.iters_per_epoch}: keep the same global batch size and data")


# ------------------------------------------------------------------------------------------- model
def build_backbone(cfg):
    """The configured network (uninitialised, standard blocks)."""
    kwargs = {}
    if cfg.get("act"):
        if cfg["network"] != "mobilefacenet":
            raise ValueError(f"--act applies to mobilefacenet only (network is {cfg['network']})")
        kwargs["act"] = cfg["act"]
    return symbols.get_model(cfg["network"], emb_size=cfg["emb_size"], **kwargs)


def use_fused_ops(backbone, cfg, contexts, logger=None):
    """``--fused-ops``: switch ``backbone`` to the one-pass CPU training operators of :mod:`recipes.fused`.

    ``auto`` (default): on when every context is a CPU and the library builds, else off (logged); ``on``: the
    same but an error when they cannot be used; ``off``: standard MXNet operators. Returns whether they are on.
    """
    mode = cfg.get("fused_ops", "auto")
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--fused-ops must be auto, on or off, got {mode!r}")
    if mode == "off":
        return False
    if any(c.device_type != "cpu" for c in contexts):
        if mode == "on":
            raise ValueError("--fused-ops on: the fused operators run on CPU only; use --fused-ops auto with --gpus")
        return False
    if not fused.available():
        reason = fused.unavailable_reason()
        if mode == "on":
            raise ValueError(f"--fused-ops on: the fused operators are unavailable: {reason}")
        if logger:
            logger.warning(f"fused CPU operators unavailable ({reason}); training with standard operators (slower)")
        return False
    count = fused.enable(backbone)
    if logger:
        logger.info(f"fused CPU operators on ({count} blocks; --fused-ops off to disable)")
    return True


def hybridize_backbone(backbone, mode):
    """``none``: imperative; ``plain``: cached graph; ``alloc`` (default): cached graph with ``static_alloc``
    (buffers planned once and reused: MXNet does not pool host memory, so a plain graph's heap fragments);
    ``static``: static_alloc + static_shape. All give bit-identical training."""
    if mode == "plain":
        backbone.hybridize()
    elif mode == "alloc":
        backbone.hybridize(static_alloc=True)
    elif mode == "static":
        backbone.hybridize(static_alloc=True, static_shape=True)


def build_model(cfg, devices, num_classes, iters_per_epoch, logger, amp=False):
    """Backbone (initialised, fused operators on CPU, hybridized), margin head and trainer, seeded from
    ``--seed``."""
    contexts = devices.contexts
    mx.random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    backbone = build_backbone(cfg)
    symbols.init_model(backbone, contexts)
    if cfg["fc7_parallel"]:
        head = ShardedHead(num_classes, cfg["emb_size"], contexts, sample_rate=cfg["sample_rate"],
                           scale=cfg["margin_s"], margins=margins_of(cfg), momentum=cfg["momentum"],
                           wd=cfg["fc7_wd"], lr_mult=cfg["fc7_lr_mult"], seed=cfg["seed"], rank=devices.rank)
    else:
        head = build_head(cfg, num_classes, cfg["emb_size"])
        head.initialize(ctx=contexts)
    use_fused_ops(backbone, cfg, contexts, logger)
    probe = backbone(mx.nd.zeros((2, 3, 112, 112), ctx=contexts[0]))
    if probe.shape != (2, cfg["emb_size"]):
        raise ValueError(f"{cfg['network']} gives embeddings of shape {probe.shape[1:]}, expected ({cfg['emb_size']},)")
    hybridize_backbone(backbone, cfg["hybridize"])
    global_batch = cfg["batch_size"] * len(contexts) * devices.num_workers
    trainer = build_trainer(backbone, head, cfg, iters_per_epoch, kvstore=devices.kvstore, horovod=devices.horovod,
                            global_batch=global_batch)
    if base_lr(cfg, global_batch) != cfg["lr"]:
        logger.info(f"lr {base_lr(cfg, global_batch):g}: --lr {cfg['lr']:g} is meant for a global batch of "
                    f"{cfg['lr_batch']}, this run's is {global_batch} (linear scaling, --lr-batch)")
    if amp:
        from mxnet.contrib import amp as mx_amp
        mx_amp.init_trainer(trainer)
    return backbone, head, trainer


def restore(state, path, output_dir):
    """Load a training state file into the run: parameters, optimizer state and counters; the log files lose
    the lines a killed run wrote after that checkpoint. Returns the epoch to start at."""
    trainer = state.trainer
    fresh = trainer.optimizer
    meta = ckpt.load_state(path, state.backbone, state.head, trainer)
    start_epoch, state.step = int(meta["epoch"]), int(meta["step"])
    # the pickled optimizer brings back its update counts; schedule and decay follow this run's settings
    trainer.optimizer.lr_scheduler = fresh.lr_scheduler
    trainer.optimizer.wd = fresh.wd
    if trainer.optimizer.num_update != state.step:
        trainer.optimizer.num_update = state.step
        trainer.optimizer.begin_num_update = state.step
    for name in ("loss.csv", "metrics.csv"):
        truncate_after_step(os.path.join(output_dir, name), state.step)
    state.log(f"resumed from {path}: epoch {start_epoch}, step {state.step}, next lr {current_lr(trainer):g}")
    return start_epoch


def load_eval_sets(cfg, data_dir, rank):
    """The verification sets rank 0 evaluates: ``--eval-sets`` or every ``*.bin`` of the data folder."""
    no_eval = isinstance(cfg["eval_sets"], str) and cfg["eval_sets"].strip().lower() == "none"
    if rank != 0 or no_eval:
        return {}
    if datasets.find_bins(data_dir) or cfg["eval_sets"]:
        return load_sets(data_dir, cfg["eval_sets"])
    return {}
