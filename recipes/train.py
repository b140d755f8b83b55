"""Train a face embedding network with a margin softmax head (SPEC §3–4): the one training entry point.

    python recipes/train.py --network seesaw_shuffle                        # synthetic data, short CPU run
    python recipes/train.py --network seesaw_shuffle --data-dir faces_emore --gpus 0,1,2,3   # the paper

``main()`` wires the pieces: settings (:mod:`recipes.config`), data (``datasets.build_train_loader``),
backbone (``symbols.get_model``), margin head (:mod:`recipes.heads`), optimiser (:mod:`recipes.optim`),
callbacks (:mod:`recipes.callbacks`) and checkpoints (:mod:`recipes.checkpoint`). :func:`train_one_epoch`
and :func:`evaluate` return metric dicts. Output folder: ``config.yaml``, ``train.log``, ``metrics.csv``,
``loss.csv``, ``curves.png``, ``checkpoints.json`` and the checkpoint files.
"""
import logging
import math
import os
import sys
import time
import warnings

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
from tools._cli import tune_malloc, use_all_cores  # noqa: E402

use_all_cores()  # before mxnet: MXNet 1.9.1 otherwise keeps one core busy

import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

import datasets  # noqa: E402
import symbols  # noqa: E402
from recipes import callbacks as cb  # noqa: E402
from recipes import checkpoint as ckpt  # noqa: E402
from recipes import config as config_mod  # noqa: E402
from recipes.heads import build_head, margin_scale_at, margins_of  # noqa: E402
from recipes.partial_fc import ShardedHead  # noqa: E402
from recipes.optim import build_trainer, current_lr  # noqa: E402

LOGGER_NAME = "seesawface.train"


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; raised before the poisoned update is applied."""


class TrainState:
    """Everything the loop and the callbacks share: settings, devices, blocks, trainer and counters."""

    def __init__(self, cfg, contexts, backbone, head, trainer, iters_per_epoch, num_classes, rank=0,
                 num_workers=1, logger=None, data_dir=None):
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
        self.lr = cfg["lr"]
        self.start_time = time.time()
        self.callbacks = []
        self.global_batch = cfg["batch_size"] * len(contexts) * num_workers
        self.malloc_pending = False  # run() sets it for --malloc-tuning on CPU: tune after the first step

    def log(self, message):
        """Log a line (prefixed with the rank when there are several workers)."""
        if self.num_workers > 1:
            message = f"[rank {self.rank}] {message}"
        self.logger.info(message)

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


# ------------------------------------------------------------------------------------------- setup


def parse_contexts(cfg):
    """``--gpus 0,1`` -> GPU contexts; otherwise ``--cpu-devices`` CPU contexts (1 by default)."""
    text = str(cfg.get("gpus") or "").strip()
    if not text:
        return [mx.cpu(i) for i in range(cfg["cpu_devices"])]
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--gpus expects comma-separated ids such as 0,1, got {text!r}") from None
    available = mx.context.num_gpus()
    if any(i < 0 or i >= available for i in ids):
        raise ValueError(f"--gpus {text}: {available} GPU(s) visible; omit --gpus to train on the CPU")
    return [mx.gpu(i) for i in ids]


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


def build_backbone(cfg):
    """The configured network (uninitialised)."""
    kwargs = {}
    if cfg.get("act"):
        if cfg["network"] != "mobilefacenet":
            raise ValueError(f"--act applies to mobilefacenet only (network is {cfg['network']})")
        kwargs["act"] = cfg["act"]
    return symbols.get_model(cfg["network"], emb_size=cfg["emb_size"], **kwargs)


def use_fused_ops(backbone, cfg, contexts, logger=None):
    """``--fused-ops``: switch ``backbone`` to the one-pass CPU training operators of :mod:`symbols.fused`.

    ``auto`` (default): on when every context is a CPU and the library builds, else off (logged); ``on``: the
    same but an error when they cannot be used; ``off``: standard MXNet operators. Returns whether they are on.
    Checkpoints always hold standard operators (recipes/checkpoint.py traces inside ``standard_ops``).
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
    if not symbols.fused.available():
        reason = symbols.fused.unavailable_reason()
        if mode == "on":
            raise ValueError(f"--fused-ops on: the fused operators are unavailable: {reason}")
        if logger:
            logger.warning(f"fused CPU operators unavailable ({reason}); training with standard operators (slower)")
        return False
    count = symbols.fused.enable(backbone)
    if logger:
        logger.info(f"fused CPU operators on ({count} blocks; --fused-ops off to disable)")
    return True


def hybridize_backbone(backbone, mode):
    """``none``: imperative; ``plain``: cached graph; ``alloc`` (default): cached graph with ``static_alloc``;
    ``static``: static_alloc + static_shape.

    Measured in MXNet 1.9.1 on CPU, where MXNet does not pool host memory: a plain cached graph allocates
    every activation afresh each step and glibc's heap fragments (seesaw_shuffle, batch 64: resident memory
    after a step grows 2.8 → 4.0 GB over five steps, peak 4.6 GB); ``static_alloc`` plans the buffers once
    and reuses them (peak 3.8 GB against 4.6 then, 3.25 GB with the data-flow fused operators; same or better
    speed; MobileFaceNet ran ~8% slower with it under glibc's default malloc, as fast and with 0.2–0.7 GB
    less under the recipe's malloc tuning, :func:`tools._cli.tune_malloc`). ``alloc``,
    ``static`` and ``plain`` give bit-identical gradients and BatchNorm statistics to the imperative network
    (checked over three steps for every
    network family, fused operators on and off; tests/test_train.py checks whole runs); ``static`` needs
    ~1.6× the memory. oneDNN graph fusion (``backend='MKLDNN'``) folds BatchNorm into the convolutions and
    gives zero gradients, so it is used for verification only (:class:`Verifier`).
    """
    if mode == "plain":
        backbone.hybridize()
    elif mode == "alloc":
        backbone.hybridize(static_alloc=True)
    elif mode == "static":
        backbone.hybridize(static_alloc=True, static_shape=True)


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


def check_data(dataset, num_classes, cfg, data_dir):
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


# ------------------------------------------------------------------------------------------- loop


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
    """``--malloc-tuning`` (CPU training): :func:`tools._cli.tune_malloc` once the first step has run.

    The first step allocates the graph's static buffers (``static_alloc``) and the optimizer state; glibc
    still maps those apart from its heap, so the heap that then serves the per-operator copies does not
    fragment around them (measured, seesaw_shuffle at batch 64, four alternating rounds: peak memory
    3.30–3.38 GB this way, 3.47–3.54 GB tuned before the first step, 3.25–3.27 GB untuned; samples/s
    59.2 / 59.1 / 57.1 / 55.3, 58.5 / 60.5 / 60.7 / 53.9 and 51.9 / 54.5 / 47.5 / 52.7).
    """
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
    hvd = getattr(state, "horovod", None)
    # Horovod's DistributedTrainer already divides by the number of workers
    state.trainer.step(samples * (1 if hvd is not None else state.num_workers))
    if sharded:
        allreduce = None if hvd is None else (lambda name, array: hvd.allreduce_(array, average=False, name=name))
        state.head.step(state.lr, samples * state.num_workers, kvstore=state.trainer._kvstore, allreduce=allreduce)
        accuracy = state.head.last_accuracy
    else:
        accuracy = sum(float(c.asscalar()) for c in correct) / samples
    return loss_value, accuracy, samples


def train_one_epoch(state, loader, loss_fn):
    """Run epoch ``state.epoch`` (all its batches); returns ``{'loss', 'accuracy', 'samples_per_sec', ...}``."""
    cfg = state.cfg
    seed = epoch_seed(cfg["seed"], state.epoch, state.rank)
    mx.random.seed(seed)
    rng = np.random.RandomState(seed)
    loader.batch_sampler.set_epoch(state.epoch)
    losses, accuracies, seen = [], [], 0
    tic = time.perf_counter()
    state.batch = 0
    for data, label in loader:
        if data.shape[0] != state.global_batch // state.num_workers:
            raise ValueError(f"the loader gave a batch of {data.shape[0]}, expected "
                             f"{state.global_batch // state.num_workers}")
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
    seconds = time.perf_counter() - tic
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accuracies)),
            "samples_per_sec": seen * state.num_workers / max(seconds, 1e-9), "seconds": seconds,
            "steps": state.batch}


class Verifier:
    """Per-epoch verification on the ``.bin`` sets with ``eval.verification`` (SPEC §6).

    Two backends (``--eval-backend``; ``auto`` resolves with ``eval.verification.resolve_backend``):

    - ``onnxruntime``: at each evaluation the live backbone's current parameters are lowered to the folded
      deploy graph (``symbols.deploy``: BatchNorm folded, shuffle absorbed), converted to ONNX in memory and
      run by ONNX Runtime with one intra-op thread per core of the run (not busy-waiting: robust to a competing
      process). At the first evaluation, and whenever the lowering emits a different graph (another PReLU form,
      say), the model is checked against an imperative copy of the network (same parameters) on a few of the
      set's images; a network the lowering cannot handle, or a relative difference above
      ``eval.verification.PARITY_TOLERANCE``, switches the run to ``mxnet`` with one warning line in the log.
    - ``mxnet``: a second instance of the network, hybridized for inference (oneDNN-fused on CPU), into
      which the training parameters are copied before each evaluation.

    Either way the training graph is left alone and ``verify_sets`` does the flip-summing, folds and
    TAR@FAR. ``last`` holds the backend and the preparation seconds of the latest evaluation.
    """

    PROBE_IMAGES = 4

    def __init__(self, cfg, sets, context, logger=None):
        from eval.verification import resolve_backend
        self.cfg, self.sets, self.context = cfg, sets, context
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.backend = resolve_backend(cfg.get("eval_backend", "auto"), [context])
        self.net = None        # oneDNN-fused MXNet copy (mxnet backend)
        self.reference = None  # imperative CPU copy (the onnxruntime parity check)
        self.checked_graph = None  # graph signature the last parity check passed with
        self.last = {}

    def _copy_params(self, backbone, net):
        source = backbone._collect_params_with_prefix()
        target = net._collect_params_with_prefix()
        for name, param in source.items():
            target[name].set_data(param.data(self.context))

    def _eval_net(self, backbone):
        from eval.verification import prepare_for_inference
        if self.net is None:
            self.net = build_backbone(self.cfg)
            self.net.initialize(ctx=self.context)
            prepare_for_inference(self.net, [self.context])
        self._copy_params(backbone, self.net)
        return self.net

    def _onnx_embedder(self, backbone):
        """ONNX Runtime embedder of the backbone's current parameters, checked against the network when its
        graph is new."""
        from datasets import normalize
        from eval.verification import PARITY_TOLERANCE, OnnxEmbedder, default_threads, parity_difference
        with self.context:  # parameters on several devices are read from this one
            embedder = OnnxEmbedder.from_network(backbone, threads=default_threads(), spinning=False)
        self.last.update(lower_seconds=embedder.lower_seconds, session_seconds=embedder.session_seconds)
        if embedder.graph_signature == self.checked_graph:
            return embedder
        tic = time.perf_counter()
        if self.reference is None:
            self.reference = build_backbone(self.cfg)
            self.reference.initialize(ctx=mx.cpu())
        self._copy_params(backbone, self.reference)
        probe = normalize(next(iter(self.sets.values()))[0][:self.PROBE_IMAGES])
        with autograd.predict_mode():
            expected = self.reference(mx.nd.array(probe, ctx=mx.cpu())).asnumpy()
        difference = parity_difference(expected, embedder(probe))
        if not difference <= PARITY_TOLERANCE:
            raise ValueError(f"its embeddings differ from the network's by {difference:.3g} (relative, "
                             f"tolerance {PARITY_TOLERANCE:g})")
        self.checked_graph = embedder.graph_signature
        self.last.update(check_seconds=time.perf_counter() - tic, check_difference=difference)
        return embedder

    def embedder(self, backbone):
        """What embeds with the backbone's current parameters (an ``OnnxEmbedder`` or the fused MXNet copy).

        A failure of the onnxruntime backend (lowering, conversion, session or parity check) logs one warning
        line and switches this and every later evaluation to the mxnet backend.
        """
        tic = time.perf_counter()
        self.last = {}
        net = None
        if self.backend == "onnxruntime":
            try:
                net = self._onnx_embedder(backbone)
            except Exception as err:  # any failure of the lowering or of ONNX Runtime: fall back, loudly
                reason = (str(err).strip().splitlines() or [""])[0]
                self.logger.warning(f"warning: verification cannot use onnxruntime for {self.cfg['network']} "
                                    f"({type(err).__name__}: {reason}); using the mxnet backend from now on "
                                    "(--eval-backend mxnet avoids this attempt)")
                self.backend = "mxnet"
                self.last = {}
        if net is None:
            net = self._eval_net(backbone)
        self.last.update(backend=self.backend, prepare_seconds=time.perf_counter() - tic)
        return net

    def __call__(self, backbone):
        from eval.verification import verify_sets
        return verify_sets(self.embedder(backbone), self.sets, ctx=[self.context],
                           batch_size=self.cfg["eval_batch_size"], flip=self.cfg["eval_flip"])


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


# ------------------------------------------------------------------------------------------- wiring


def _default_output_dir(cli):
    return cli.get("output_dir") or os.path.join("outputs", cli.get("network") or config_mod.DEFAULTS["network"])


def prepare_resume(cli):
    """Find the state file of ``--resume`` and its saved settings: ``(path, meta)`` or ``(None, None)``."""
    spec = cli.get("resume")
    if spec is None:
        return None, None
    output_dir = cli.get("output_dir")
    if output_dir is None and spec == "auto":
        output_dir = _default_output_dir(cli)
    path = ckpt.find_resume_state(spec, output_dir)
    meta, _ = ckpt.read_state(path)
    return path, meta


HOROVOD_MISSING = ("--horovod needs Horovod built with MXNet support. Install it after MXNet, without build "
                   "isolation: HOROVOD_WITH_MXNET=1 pip install --no-build-isolation horovod (GPU: add "
                   "HOROVOD_GPU_OPERATIONS=NCCL). Or use the parameter-server path: tools/launch.py ... -- python "
                   "recipes/train.py --kvstore dist_sync")


def _horovod():
    """``horovod.mxnet``, initialised; an actionable error when it is not installed."""
    try:
        import horovod.mxnet as hvd
    except ImportError:
        raise RuntimeError(HOROVOD_MISSING) from None
    hvd.init()
    return hvd


def choose_engine(contexts, distributed):
    """Pick MXNet's execution engine for this run (before the first operator runs; the engine is created then).

    One CPU device and no kvstore between processes: ``NaiveEngine``, which runs every operator in the calling
    thread. The threaded engine's worker threads only compete with the operators' own OpenMP threads for the
    cores there (measured, seesaw_shuffle batch 32 on 2 cores: 30–31 → 38–39 samples/s, system time 8.8 → 3.8 s
    per 20 steps). GPUs, several devices or a distributed kvstore keep the threaded engine, which overlaps
    devices and communication. ``MXNET_ENGINE_TYPE`` set by the user always wins. Returns the engine's name.
    """
    chosen = os.environ.get("MXNET_ENGINE_TYPE")
    if chosen:
        return chosen
    if len(contexts) == 1 and contexts[0].device_type == "cpu" and not distributed:
        os.environ["MXNET_ENGINE_TYPE"] = "NaiveEngine"
        return "NaiveEngine"
    return "ThreadedEnginePerDevice"


def _kvstore(cfg, contexts):
    """(kvstore for the Trainer, rank, number of workers)."""
    kind = cfg["kvstore"]
    if kind.startswith("dist"):
        kv = mx.kv.create(kind)
        return kv, kv.rank, kv.num_workers
    return (kind if len(contexts) > 1 else None), 0, 1


def sync_initial_parameters(trainer):
    """Distributed runs: give every worker rank 0's initial parameters before the first step.

    MXNet 1.9.1's Trainer does this lazily inside the first ``step()`` (``kvstore.broadcast`` per key) and
    fails in two ways: rank 0's init push of a weight that oneDNN holds in its own layout fails silently, so
    the server aborts with "init N first" when the others pull it; and a pull may be answered after the first
    gradients were merged (that worker's weights silently become the gradient sum). Here: init every key from
    plain-layout copies, wait until rank 0's pushes are acknowledged, barrier, then pull and wait.
    """
    trainer._init_kvstore()
    kv = trainer._kvstore
    params = [p for p in trainer._params_to_init if not p._deferred_init]
    if kv is None or not params:
        return
    keys = [trainer._param2idx[p.name] for p in params]
    # Plain-layout copies: after an inference forward oneDNN may keep a weight in its own layout, which the
    # kvstore cannot send ("We can't generate TBlob for MKLDNN data").
    kv.init(keys, [mx.nd.array(p.list_data()[0].asnumpy(), dtype=p.dtype) for p in params])
    mx.nd.waitall()
    kv._barrier()
    pulled = [mx.nd.zeros(p.shape, dtype=p.dtype) for p in params]
    kv.pull(keys, out=pulled)
    mx.nd.waitall()
    for param, value in zip(params, pulled):
        param.set_data(value)
    trainer._params_to_init = [p for p in trainer._params_to_init if p._deferred_init]


def run(cli, extra_callbacks=()):
    """Train with explicitly given options ``cli`` (dict; see :func:`recipes.config.build_parser`).

    Returns a summary dict (output paths, final and best accuracies, wall time). ``extra_callbacks`` are
    added to the run's callbacks (tests use this).
    """
    start = time.time()
    resume_path, resume_meta = prepare_resume(cli)
    base = resume_meta["config"] if resume_meta else None
    if resume_meta and "batch_size" not in cli and resume_meta.get("global_batch"):
        cli = dict(cli, _global_batch=resume_meta["global_batch"])
    global_batch = cli.pop("_global_batch", None)
    cfg = config_mod.resolve(cli, base)
    hvd = _horovod() if cfg["horovod"] else None
    if hvd is not None:  # one device per process
        contexts = [mx.gpu(hvd.local_rank())] if mx.context.num_gpus() > 0 else [mx.cpu()]
        kv, rank, num_workers = None, hvd.rank(), hvd.size()
        engine = os.environ.get("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice")
    else:
        contexts = parse_contexts(cfg)
        engine = choose_engine(contexts, cfg["kvstore"].startswith("dist"))
        kv, rank, num_workers = _kvstore(cfg, contexts)
    if global_batch is not None:
        per_device, rest = divmod(global_batch, len(contexts) * num_workers)
        if rest or per_device == 0:
            raise ValueError(f"the checkpoint was trained with a global batch of {global_batch}, which does not "
                             f"split over {len(contexts) * num_workers} device(s); pass --batch-size explicitly")
        cfg["batch_size"] = per_device
    output_dir = cfg["output_dir"] or os.path.join("outputs", cfg["network"])
    cfg["output_dir"] = output_dir
    os.makedirs(output_dir, exist_ok=True)
    logger = setup_logging(output_dir, rank == 0)
    amp_on = bool(cfg["amp"])
    if amp_on and not all(c.device_type == "gpu" for c in contexts):
        warnings.warn("--amp: mixed precision needs GPUs here; training in float32")
        amp_on = False
    if amp_on:
        from mxnet.contrib import amp
        amp.init()
    if rank == 0:
        config_mod.save_yaml(cfg, os.path.join(output_dir, "config.yaml"))

    data_dir = resolve_data(cfg, logger)
    num_classes = datasets.read_property(data_dir)
    num_classes = num_classes[0] if isinstance(num_classes, (tuple, list)) else num_classes
    num_classes = int(num_classes)
    per_worker_batch = cfg["batch_size"] * len(contexts)
    loader, dataset = datasets.build_train_loader(
        os.path.join(data_dir, "train.rec"), per_worker_batch, num_workers=cfg["num_workers"], shuffle=True,
        rank=rank, num_parts=num_workers, mirror=False, color_jitter=cfg["color_jitter"], seed=cfg["seed"])
    check_data(dataset, num_classes, cfg, data_dir)
    iters_per_epoch = len(loader)
    if resume_meta:
        if resume_meta.get("num_classes") != num_classes:
            raise ValueError(f"the checkpoint {resume_path} has {resume_meta.get('num_classes')} classes, the data in "
                             f"{data_dir} has {num_classes}: resume on the same data")
        if resume_meta.get("network") != cfg["network"]:
            raise ValueError(f"the checkpoint {resume_path} is a {resume_meta.get('network')}, not {cfg['network']}")
        if resume_meta.get("iters_per_epoch") not in (None, iters_per_epoch):
            raise ValueError(f"the checkpoint ran {resume_meta['iters_per_epoch']} steps per epoch, this run would "
                             f"run {iters_per_epoch}: keep the same global batch size and data")

    mx.random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    backbone = build_backbone(cfg)
    symbols.init_model(backbone, contexts)
    if cfg["fc7_parallel"]:
        head = ShardedHead(num_classes, cfg["emb_size"], contexts, sample_rate=cfg["sample_rate"],
                           scale=cfg["margin_s"], margins=margins_of(cfg), momentum=cfg["momentum"],
                           wd=cfg["fc7_wd"], lr_mult=cfg["fc7_lr_mult"], seed=cfg["seed"], rank=rank)
    else:
        head = build_head(cfg, num_classes, cfg["emb_size"])
        head.initialize(ctx=contexts)
    use_fused_ops(backbone, cfg, contexts, logger)
    probe = backbone(mx.nd.zeros((2, 3, 112, 112), ctx=contexts[0]))
    if probe.shape != (2, cfg["emb_size"]):
        raise ValueError(f"{cfg['network']} gives embeddings of shape {probe.shape[1:]}, expected ({cfg['emb_size']},)")
    hybridize_backbone(backbone, cfg["hybridize"])
    trainer = build_trainer(backbone, head, cfg, iters_per_epoch, kvstore=kv, horovod=hvd)

    state = TrainState(cfg, contexts, backbone, head, trainer, iters_per_epoch, num_classes, rank, num_workers,
                       logger, data_dir)
    state.amp = amp_on
    state.malloc_pending = bool(cfg["malloc_tuning"]) and all(c.device_type == "cpu" for c in contexts)
    if amp_on:
        amp.init_trainer(trainer)
    if cfg["kvstore"].startswith("dist"):
        sync_initial_parameters(trainer)
    state.horovod = hvd
    if hvd is not None:
        params = dict(backbone.collect_params().items())
        params.update(head.collect_params().items())
        hvd.broadcast_parameters(params, root_rank=0)
    manager = ckpt.CheckpointManager(output_dir, cfg["prefix"])
    start_epoch = 0
    if resume_path:
        fresh = trainer.optimizer
        meta = ckpt.load_state(resume_path, backbone, head, trainer)
        start_epoch, state.step = int(meta["epoch"]), int(meta["step"])
        # the pickled optimizer brings back its update counts; schedule and decay follow this run's settings
        trainer.optimizer.lr_scheduler = fresh.lr_scheduler
        trainer.optimizer.wd = fresh.wd
        if trainer.optimizer.num_update != state.step:
            trainer.optimizer.num_update = state.step
            trainer.optimizer.begin_num_update = state.step
        for path in ("loss.csv", "metrics.csv"):
            cb.truncate_after_step(os.path.join(output_dir, path), state.step)
        state.log(f"resumed from {resume_path}: epoch {start_epoch}, step {state.step}, "
                  f"next lr {current_lr(trainer):g}")

    sets = {}
    no_eval = isinstance(cfg["eval_sets"], str) and cfg["eval_sets"].strip().lower() == "none"
    if rank == 0 and not no_eval:
        from eval.verification import load_sets
        if datasets.find_bins(data_dir) or cfg["eval_sets"]:
            sets = load_sets(data_dir, cfg["eval_sets"])
    state.verifier = Verifier(cfg, sets, contexts[0]) if sets else None
    loss_csv = os.path.join(output_dir, "loss.csv")
    metrics_csv = os.path.join(output_dir, "metrics.csv")
    state.callbacks = [cb.SpeedLogger(cfg["log_interval"], loss_csv), cb.MetricsWriter(metrics_csv, list(sets))]
    if cfg["plot"]:
        state.callbacks.append(cb.CurvePlotter(os.path.join(output_dir, "curves.png"), loss_csv, metrics_csv))
    state.callbacks += [cb.CheckpointSaver(manager)] + list(extra_callbacks)

    n_params = sum(int(np.prod(p.shape)) for p in backbone.collect_params().values())
    state.log(f"{cfg['network']}: {n_params / 1e6:.2f}M backbone parameters, {num_classes} classes, "
              f"{len(dataset)} images, {iters_per_epoch} steps/epoch of {state.global_batch} "
              f"({cfg['batch_size']} x {len(contexts)} device(s) x {num_workers} worker(s)), "
              f"{cfg['num_epochs']} epochs, loss {cfg['loss']}, devices {contexts}, engine {engine}")
    if rank == 0 and sets:
        state.log(f"verification sets: {', '.join(f'{n} ({len(s[1])} pairs)' for n, s in sets.items())}")
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    state.fire("on_train_begin")
    last = {}
    for epoch in range(start_epoch, cfg["num_epochs"]):
        state.epoch = epoch
        train_metrics = train_one_epoch(state, loader, loss_fn)
        state.log(f"Epoch[{epoch + 1}] done: loss {train_metrics['loss']:.4f}  acc {train_metrics['accuracy']:.4f}  "
                  f"{train_metrics['samples_per_sec']:.1f} samples/s  {train_metrics['seconds']:.0f} s")
        metrics = evaluate(state)
        metrics["train"] = train_metrics
        state.fire("on_eval", metrics)
        state.fire("on_epoch_end", metrics)
        last = metrics
    state.fire("on_train_end")
    summary = summarize(state, manager, last, time.time() - start)
    return summary


def summarize(state, manager, last, seconds):
    """Log where everything is and return it as a dict."""
    out = state.cfg["output_dir"]
    pointer = manager.pointer
    summary = {"output_dir": out, "config": os.path.join(out, "config.yaml"), "log": os.path.join(out, "train.log"),
               "metrics": os.path.join(out, "metrics.csv"), "curves": os.path.join(out, "curves.png"),
               "seconds": round(seconds, 1), "final": last.get("sets", {}),
               "mean_accuracy": last.get("mean_accuracy"), "last": pointer.get("last"), "best": pointer.get("best"),
               "prefix": manager.prefix, "data_dir": state.data_dir}
    if not state.is_main:
        return summary
    state.log("=" * 78)
    state.log(f"done in {cb.format_seconds(seconds)} ({state.step} steps)")
    for name, result in summary["final"].items():
        state.log(f"  final {name}: {result['accuracy'] * 100:.2f}% ± {result['accuracy_std'] * 100:.2f}")
    if pointer.get("last"):
        last_epoch, best = pointer["last"]["epoch"], pointer["best"]
        state.log(f"  embedding network: {manager.prefix}-symbol.json + {manager.prefix}-{last_epoch:04d}.params "
                  f"(mx.model.load_checkpoint('{manager.prefix}', {last_epoch}))")
        state.log(f"  best: epoch {best['epoch']} (mean accuracy {best['accuracy']})")
        state.log(f"  resume: python recipes/train.py --output-dir {out} --resume")
        state.log(f"  evaluate: python eval/verification.py --model {manager.prefix},{last_epoch} "
                  f"--data-dir {state.data_dir}")
    state.log(f"  settings {summary['config']}, log {summary['log']}, metrics {summary['metrics']}, "
              f"curves {summary['curves']}")
    return summary


def main(argv=None):
    """Command line entry point (see ``--help``)."""
    parser = config_mod.build_parser(symbols.list_models())
    args = vars(parser.parse_args(argv))
    run(args)
    return 0


if __name__ == "__main__":
    from tools._cli import run_cli
    run_cli(main)
