"""Training checkpoints: the deployable embedding network every epoch and the full training state, atomically.

In ``output_dir`` with prefix P:

- ``P-symbol.json`` + ``P-%04d.params`` (``arg:``/``aux:`` names, input ``data``): the embedding network
  only, loadable by ``mx.model.load_checkpoint(P, epoch)`` and ``gluon.SymbolBlock.imports``; one params
  file per epoch (a few MB each);
- ``P-state-%04d.npz``: everything needed to continue — backbone and fc7 parameters (from one device),
  trainer/optimizer state, epoch, global step, the resolved config and the RNG states; kept for the last
  and the best epoch only (fc7 and its momentum make it large);
- ``P-step-symbol.json`` + ``P-step-%04d.params`` and ``P-step-state-%04d.npz`` (numbered by global step): the
  same at a step inside an epoch, where ``--max-steps`` stopped the run; its state's ``epoch`` is the epoch in
  progress (0-based: the epochs completed) and ``batch`` the batches of it done, where ``--resume`` continues;
- ``checkpoints.json``: which checkpoint is ``last`` and which is ``best`` (by mean verification accuracy).

Every file is written to a temporary name and moved into place with ``os.replace``; ``checkpoints.json`` is
replaced last, so a run killed at any moment leaves the previous checkpoint complete and referenced.
"""
import json
import os
import pickle
import random

import mxnet as mx
import numpy as np

from deploy.checkpoint import temporary_path, atomic_write, atomic_write_bytes, save_embedding

from . import fused

STATE_VERSION = 1
POINTER = "checkpoints.json"


def _structural_params(block, ctx):
    """``{structural name: numpy}`` of a block's parameters, taken from ``ctx`` (device-count independent)."""
    return {name: p.data(ctx).asnumpy() for name, p in block._collect_params_with_prefix().items()}


def export_embedding(backbone, prefix, epoch, ctx):
    """Write the deployable ``prefix-symbol.json`` + ``prefix-%04d.params`` of the training backbone, traced with
    the standard blocks (no training-only operators: any MXNet loads it)."""
    with fused.standard_layers(backbone):
        return save_embedding(backbone, prefix, epoch, ctx)


def _sampling_rng(head):
    """The numpy RandomState of a sharded head's class sampling (``--fc7-parallel``), or None."""
    return getattr(getattr(head, "pfc", None), "_rng", None)


def sampling_state(head):
    """The state of a sharded head's class-sampling RNG (None for other heads)."""
    sampling = _sampling_rng(head)
    return None if sampling is None else sampling.get_state()


def set_sampling_state(head, state):
    """Put back what :func:`sampling_state` returned."""
    if state is not None:
        _sampling_rng(head).set_state(state)


def rng_state(head=None):
    """numpy and python global RNG states, and the class-sampling RNG of a sharded ``head``, as bytes (MXNet's
    own RNG is reseeded per epoch from the seed; the training step draws nothing from it)."""
    states = {"numpy": np.random.get_state(), "python": random.getstate()}
    sampling = _sampling_rng(head)
    if sampling is not None:
        states["head_sampling"] = sampling.get_state()
    return pickle.dumps(states)


def set_rng_state(blob, head=None):
    """Restore what :func:`rng_state` saved (the head's sampling RNG when both the file and ``head`` have one)."""
    state = pickle.loads(blob)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    sampling = _sampling_rng(head)
    if sampling is not None and "head_sampling" in state:
        sampling.set_state(state["head_sampling"])


def save_state(path, backbone, head, trainer, meta, ctx):
    """Write the training state file (npz) atomically.

    ``meta``: JSON-serialisable dict (epoch, step, config, num_classes, ...). Parameters come from ``ctx``
    only, so the file loads on any number of devices.
    """
    arrays = {}
    for name, value in _structural_params(backbone, ctx).items():
        arrays["backbone/" + name] = value
    for name, value in _structural_params(head, ctx).items():
        arrays["head/" + name] = value
    tmp_states = temporary_path(path + ".trainer")
    try:
        trainer.save_states(tmp_states)
        with open(tmp_states, "rb") as f:
            arrays["trainer_states"] = np.frombuffer(f.read(), dtype=np.uint8)
    finally:
        if os.path.exists(tmp_states):
            os.remove(tmp_states)
    arrays["rng_state"] = np.frombuffer(rng_state(head), dtype=np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps(dict(meta, version=STATE_VERSION)).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_state(path):
    """Open a state file: returns ``(meta dict, arrays)`` (arrays is a lazy npz mapping)."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint state {path} does not exist")
    try:
        arrays = np.load(path, allow_pickle=False)
        meta = json.loads(arrays["meta"].tobytes().decode())
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a training state file ({err})") from None
    return meta, arrays


def _load_block(block, arrays, group, path):
    params = block._collect_params_with_prefix()
    stored = {k[len(group) + 1:] for k in arrays.files if k.startswith(group + "/")}
    missing, extra = sorted(set(params) - stored), sorted(stored - set(params))
    if missing or extra:
        raise ValueError(f"{path}: {group} parameters do not match this network (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}); resume with the same --network/--emb-size")
    for name, param in params.items():
        value = arrays[f"{group}/{name}"]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"{path}: {group} parameter {name} has shape {value.shape}, this run needs "
                             f"{param.shape}: the data's class count or --emb-size differs from the checkpoint")
        param.set_data(mx.nd.array(value, dtype=value.dtype))


def load_state(path, backbone, head, trainer, arrays=None, sampling_rng=True):
    """Load parameters (onto every device of the blocks), trainer state and RNG state; returns meta.
    ``sampling_rng``: also the class-sampling RNG of a sharded head (the saving worker's: right for
    single-worker runs)."""
    meta, arrays = read_state(path) if arrays is None else (None, arrays)
    if meta is None:
        meta = json.loads(arrays["meta"].tobytes().decode())
    _load_block(backbone, arrays, "backbone", path)
    _load_block(head, arrays, "head", path)
    tmp = temporary_path(path + ".trainer")
    try:
        with open(tmp, "wb") as f:
            f.write(arrays["trainer_states"].tobytes())
        trainer.load_states(tmp)
    finally:
        os.remove(tmp)
    set_rng_state(arrays["rng_state"].tobytes(), head if sampling_rng else None)
    return meta


class CheckpointManager:
    """Save per-epoch checkpoints in ``output_dir``: every epoch's embedding network, the training state of the
    last and of the best epoch (by mean verification accuracy); and step checkpoints (:meth:`save_step`) where
    a run stops inside an epoch."""

    def __init__(self, output_dir, prefix="model"):
        self.output_dir = output_dir
        self.prefix = os.path.join(output_dir, prefix)
        self.pointer_path = os.path.join(output_dir, POINTER)
        self.pointer = read_pointer(output_dir) or {}

    def state_path(self, epoch):
        return f"{self.prefix}-state-{epoch:04d}.npz"

    def params_path(self, epoch):
        return f"{self.prefix}-{epoch:04d}.params"

    @property
    def step_prefix(self):
        """Prefix of the step checkpoints' embedding network (``mx.model.load_checkpoint(step_prefix, step)``)."""
        return self.prefix + "-step"

    def step_state_path(self, step):
        return f"{self.step_prefix}-state-{step:04d}.npz"

    def step_params_path(self, step):
        return f"{self.step_prefix}-{step:04d}.params"

    def save(self, epoch, step, backbone, head, trainer, meta, ctx, accuracy=None):
        """Write epoch ``epoch`` (number of completed epochs) and move the pointer; returns the pointer."""
        export_embedding(backbone, self.prefix, epoch, ctx)
        save_state(self.state_path(epoch), backbone, head, trainer, dict(meta, epoch=epoch, step=step), ctx)
        entry = {"epoch": epoch, "step": step, "state": os.path.basename(self.state_path(epoch)),
                 "params": os.path.basename(self.params_path(epoch)),
                 "symbol": os.path.basename(self.prefix) + "-symbol.json", "accuracy": accuracy}
        return self._point(entry)

    def save_step(self, epoch, batch, step, backbone, head, trainer, meta, ctx, accuracy=None):
        """Write a checkpoint inside an epoch: global step ``step``, ``batch`` batches into epoch index ``epoch``
        (0-based, the epoch in progress), where ``--resume`` continues; moves the pointer and returns it."""
        if batch <= 0:
            raise ValueError("a step checkpoint is inside an epoch (batch > 0); use save() at an epoch end")
        export_embedding(backbone, self.step_prefix, step, ctx)
        save_state(self.step_state_path(step), backbone, head, trainer,
                   dict(meta, epoch=epoch, batch=batch, step=step), ctx)
        entry = {"epoch": epoch, "batch": batch, "step": step,
                 "state": os.path.basename(self.step_state_path(step)),
                 "params": os.path.basename(self.step_params_path(step)),
                 "symbol": os.path.basename(self.step_prefix) + "-symbol.json", "accuracy": accuracy}
        return self._point(entry)

    def _point(self, entry):
        """Make ``entry`` the last checkpoint (and the best when its accuracy is), write the pointer, prune."""
        pointer = dict(self.pointer, last=entry, prefix=os.path.basename(self.prefix))
        best, accuracy = pointer.get("best"), entry["accuracy"]
        if accuracy is not None and (best is None or best.get("accuracy") is None or accuracy > best["accuracy"]):
            pointer["best"] = entry
        elif best is None:
            pointer["best"] = entry
        atomic_write_bytes(self.pointer_path, json.dumps(pointer, indent=1).encode())
        previous, self.pointer = self.pointer, pointer
        self._prune(previous)
        return pointer

    def _prune(self, previous):
        """Remove the training state files neither last nor best point at any more (params files stay)."""
        keep = {self.pointer[k]["state"] for k in ("last", "best") if k in self.pointer}
        for key in ("last", "best"):
            entry = previous.get(key)
            if entry and entry["state"] not in keep:
                path = os.path.join(self.output_dir, entry["state"])
                if os.path.exists(path):
                    os.remove(path)


def read_pointer(output_dir):
    """``checkpoints.json`` of ``output_dir`` as a dict, or None when there is none."""
    path = os.path.join(output_dir, POINTER)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError:
            raise ValueError(f"{path} is corrupt; point --resume at a state file instead") from None


def embedding_of(entry, prefix):
    """``(prefix, number)`` for ``mx.model.load_checkpoint`` of a pointer entry's embedding network (``prefix``
    the folder's checkpoint prefix path): the epoch, or for a step checkpoint the step with the step prefix."""
    if entry.get("batch"):
        return prefix + "-step", int(entry["step"])
    return prefix, int(entry["epoch"])


def describe_entry(entry):
    """``epoch 3`` or ``step 200 (epoch 1, batch 200)`` for a checkpoints.json entry."""
    if entry.get("batch"):
        return f"step {entry['step']} (epoch {entry['epoch'] + 1}, batch {entry['batch']})"
    return f"epoch {entry['epoch']}"


def find_resume_state(spec, output_dir):
    """Resolve ``--resume``: 'auto' (the output folder's last checkpoint), a folder, or a state file."""
    if spec in (None, "", "auto"):
        folder = output_dir
    elif os.path.isdir(spec):
        folder = spec
    else:
        return spec
    pointer = read_pointer(folder)
    if not pointer or "last" not in pointer:
        raise ValueError(f"--resume: {folder} holds no checkpoint (no {POINTER}); train without --resume first")
    return os.path.join(folder, pointer["last"]["state"])
