"""A training step at MS1MV2's shape, split into its parts, with peak memory and the checkpoint's size and cost.

    python tools/make_synthetic.py ms1mv2_shape --identities 85742 --images-per-identity 3 --renderer cheap
    python tools/bench/ms1mv2_shape.py --data-dir ms1mv2_shape                               # fc7 whole, batch 192
    python tools/bench/ms1mv2_shape.py --data-dir ms1mv2_shape --fc7-parallel true --sample-rate 0.1 \\
        --cpu-devices 2 --batch-size 96

The run is built exactly as ``recipes/train.py`` builds it (``recipes.setup``: the network's paper settings,
its data loader, network, head and trainer), then:

1. ``--warmup`` steps of the real step (:func:`recipes.loop.train_step`; the malloc tuning after the first);
2. ``--steps`` real steps timed whole, data included (no extra synchronisation: the step's own loss read-out
   is its only one);
3. ``--steps`` steps split by ``mx.nd.waitall()`` boundaries into: data (next batch from the loader, flips),
   backbone forward, fc7 forward + backward (the margin head on detached embeddings: the whole head per
   device, or the sharded head), backbone backward (from the head's embedding gradients), update (the
   Trainer: backbone, and fc7 when it is whole) and fc7 update (the sharded head's own step). The boundaries
   serialise the engine, so the parts add up to a little more than step 2's time. With fc7 whole its update
   is inside the Trainer's; ``fc7_update_alone`` times that ``sgd_mom_update`` by itself;
4. a step checkpoint (:meth:`recipes.checkpoint.CheckpointManager.save_step`, as ``--max-steps`` writes it),
   twice: sizes of the training state and of the params file, write times; and the time to load the state.

Peak memory is this process's ``VmHWM`` (data-loading worker processes have their own). Writes a JSON file.
"""
import argparse
import json
import os
import shutil
import sys
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from deploy.process import use_all_cores

    use_all_cores()  # before mxnet loads, as recipes/train.py


def _vm(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


class Clock:
    """Wall time of named parts, each closed by ``mx.nd.waitall()``."""

    def __init__(self):
        import mxnet as mx
        self._mx = mx
        self.parts = {}
        self.tic = time.perf_counter()

    def lap(self, name):
        self._mx.nd.waitall()
        now = time.perf_counter()
        self.parts.setdefault(name, []).append(now - self.tic)
        self.tic = now


def split_step(state, batches, loss_fn, clock):
    """One training step with its parts timed (see the module docstring); the same updates as train_step."""
    from mxnet import autograd, gluon

    from recipes.heads import margin_scale_at
    from recipes.optim import current_lr

    cfg = state.cfg
    clock.tic = time.perf_counter()
    data, label = next(batches)
    if cfg["mirror"]:
        data = state.mirror(data)
    clock.lap("data")
    fraction = state.epoch + state.batch / state.iters_per_epoch
    state.head.set_margin_scale(margin_scale_at(cfg, fraction))
    state.lr = current_lr(state.trainer)
    data_parts = gluon.utils.split_and_load(data, state.contexts, even_split=True)
    label_parts = gluon.utils.split_and_load(label, state.contexts, even_split=True)
    with autograd.record():
        embeddings = [state.backbone(x) for x in data_parts]
    clock.lap("backbone_forward")
    detached = [e.detach() for e in embeddings]
    for e in detached:
        e.attach_grad()
    sharded = getattr(state.head, "sharded", False)
    with autograd.record():
        if sharded:
            losses = [state.head.loss(detached, label_parts)]
        else:
            losses = [loss_fn(state.head(e, y), y) for e, y in zip(detached, label_parts)]
    autograd.backward(losses)
    samples = sum(int(l.shape[0]) for l in losses)
    loss_value = sum(float(l.sum().asscalar()) for l in losses) / samples
    clock.lap("fc7_forward_backward")
    autograd.backward(embeddings, head_grads=[e.grad for e in detached])
    clock.lap("backbone_backward")
    state.trainer.step(samples)
    clock.lap("update")
    if sharded:
        state.head.step(state.lr, samples)
        clock.lap("fc7_update")
    state.batch += 1
    state.step += 1
    return loss_value


def fc7_update_alone(num_classes, emb_size, repeats=5):
    """Seconds of one SGD-momentum update of a whole (num_classes, emb) fc7 weight on one CPU (median)."""
    import mxnet as mx
    import numpy as np
    weight = mx.nd.random.normal(shape=(num_classes, emb_size))
    grad, mom = mx.nd.random.normal(shape=weight.shape), mx.nd.zeros(weight.shape)
    times = []
    for _ in range(repeats + 1):
        mx.nd.waitall()
        tic = time.perf_counter()
        mx.nd.sgd_mom_update(weight, grad, mom, out=weight, lr=0.1, momentum=0.9, wd=4e-4, rescale_grad=1 / 192)
        mx.nd.waitall()
        times.append(time.perf_counter() - tic)
    return float(np.median(times[1:]))


def measure(cli, steps, warmup, out_dir, checkpoint_repeats=2):
    import mxnet as mx
    import numpy as np

    from recipes import checkpoint as ckpt
    from recipes import setup
    from recipes.distributed import setup_devices
    from recipes.loop import TrainState, epoch_batches, mirror_batch, epoch_seed, train_step, \
        tune_malloc_after_first_step

    cfg = setup.resolve_settings(dict(cli, output_dir=os.path.join(out_dir, "run"), eval_sets="none", plot=False))
    devices = setup_devices(cfg)
    logger = setup.prepare_output(cfg, devices.rank)
    tic = time.perf_counter()
    data = setup.build_data(cfg, devices, logger)
    data_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    backbone, head, trainer = setup.build_model(cfg, devices, data.num_classes, data.iters_per_epoch, logger)
    model_seconds = time.perf_counter() - tic
    state = TrainState(cfg, devices.contexts, backbone, head, trainer, data.iters_per_epoch, data.num_classes,
                       devices.rank, devices.num_workers, logger, data.data_dir)
    rng = np.random.RandomState(epoch_seed(cfg["seed"], 0))
    state.mirror = lambda batch: mirror_batch(batch, rng)
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    batches = epoch_batches(data.loader, 0)
    global_batch = state.global_batch

    def real_step():
        data_, label = next(batches)
        if cfg["mirror"]:
            data_ = state.mirror(data_)
        loss, _, _ = train_step(state, data_, label, loss_fn)
        if state.malloc_pending:
            tune_malloc_after_first_step(state)
        state.batch += 1
        state.step += 1
        return loss

    losses = []
    for _ in range(warmup):
        losses.append(real_step())
    mx.nd.waitall()
    whole = []
    for _ in range(steps):
        tic = time.perf_counter()
        losses.append(real_step())
        mx.nd.waitall()
        whole.append(time.perf_counter() - tic)
    clock = Clock()
    for _ in range(steps):
        losses.append(split_step(state, batches, loss_fn, clock))
    peak_training = _vm("VmHWM")
    parts = {name: float(np.median(values)) for name, values in clock.parts.items()}
    result = {
        "config": {k: cfg[k] for k in ("network", "batch_size", "cpu_devices", "fc7_parallel", "sample_rate", "loss",
                                       "margin_s", "margin_m", "hybridize", "fused_ops", "num_workers")},
        "num_classes": data.num_classes, "images": len(data.dataset), "iters_per_epoch": data.iters_per_epoch,
        "global_batch": global_batch, "data_setup_seconds": round(data_seconds, 2),
        "model_setup_seconds": round(model_seconds, 2), "warmup": warmup, "steps": steps,
        "losses": [round(v, 4) for v in losses],
        "step_seconds_median": float(np.median(whole)), "step_seconds": [round(v, 3) for v in whole],
        "samples_per_sec": global_batch / float(np.median(whole)),
        "split_seconds_median": parts, "split_sum_seconds": sum(parts.values()),
        "peak_memory_training_gb": peak_training / 1e9,
    }
    if not cfg["fc7_parallel"]:
        result["fc7_update_alone_seconds"] = fc7_update_alone(data.num_classes, cfg["emb_size"])
    else:
        result["fc7_bytes_per_device"] = head.pfc.memory_per_device()
    os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
    manager = ckpt.CheckpointManager(os.path.join(out_dir, "checkpoints"), cfg["prefix"])
    writes = []
    for k in range(checkpoint_repeats):
        mx.nd.waitall()
        tic = time.perf_counter()
        manager.save_step(0, state.batch, state.step + k, backbone, head, trainer, state.checkpoint_meta(),
                          devices.contexts[0])
        writes.append(time.perf_counter() - tic)
    last = manager.step_state_path(state.step + checkpoint_repeats - 1)
    tic = time.perf_counter()
    ckpt.load_state(last, backbone, head, trainer)
    mx.nd.waitall()
    load_seconds = time.perf_counter() - tic
    arrays = np.load(last)
    result.update({
        "checkpoint_state_mb": os.path.getsize(last) / 1e6,
        "checkpoint_params_mb": os.path.getsize(manager.step_params_path(state.step)) / 1e6,
        "checkpoint_fc7_mb": sum(arrays[k].nbytes for k in arrays.files if k.startswith("head/")) / 1e6,
        "checkpoint_trainer_states_mb": arrays["trainer_states"].nbytes / 1e6,
        "checkpoint_write_seconds": [round(v, 2) for v in writes], "checkpoint_load_seconds": round(load_seconds, 2),
        "peak_memory_gb": _vm("VmHWM") / 1e9,
    })
    return result


def table(result):
    parts = result["split_seconds_median"]
    lines = [f"{result['config']['network']}, {result['num_classes']} classes, global batch {result['global_batch']} "
             f"({result['config']['batch_size']} x {result['config']['cpu_devices']} CPU context(s)), fc7 "
             + (f"sharded, sample rate {result['config']['sample_rate']}" if result["config"]["fc7_parallel"]
                else "whole"),
             f"  step {result['step_seconds_median']:.2f} s ({result['samples_per_sec']:.1f} samples/s); "
             f"split (sum {result['split_sum_seconds']:.2f} s): "
             + ", ".join(f"{k} {v:.3f}" for k, v in parts.items())]
    if "fc7_update_alone_seconds" in result:
        lines.append(f"  fc7 update alone {result['fc7_update_alone_seconds']:.3f} s")
    lines.append(f"  peak memory {result['peak_memory_training_gb']:.2f} GB training, {result['peak_memory_gb']:.2f} GB "
                 f"with the checkpoint; checkpoint: state {result['checkpoint_state_mb']:.0f} MB (fc7 "
                 f"{result['checkpoint_fc7_mb']:.0f} MB, trainer states {result['checkpoint_trainer_states_mb']:.0f} MB), "
                 f"params {result['checkpoint_params_mb']:.1f} MB, written in "
                 f"{' / '.join(f'{v:.1f}' for v in result['checkpoint_write_seconds'])} s, loaded in "
                 f"{result['checkpoint_load_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="an MS1MV2-layout folder (tools/make_synthetic.py)")
    parser.add_argument("--network", default="seesaw_shuffle")
    parser.add_argument("--batch-size", type=int, default=None, help="per device (default: the network's yaml)")
    parser.add_argument("--cpu-devices", type=int, default=1)
    parser.add_argument("--fc7-parallel", default="false", choices=("true", "false"))
    parser.add_argument("--sample-rate", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=5, help="timed steps, whole and split each")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out-dir", default="runs/ms1mv2_shape", help="scratch folder (checkpoints written here)")
    parser.add_argument("--json", default=None, help="write the result here (default: OUT_DIR/result.json)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints written")
    args = parser.parse_args(argv)
    cli = {"network": args.network, "data_dir": args.data_dir, "cpu_devices": args.cpu_devices,
           "fc7_parallel": args.fc7_parallel == "true", "sample_rate": args.sample_rate}
    if args.batch_size:
        cli["batch_size"] = args.batch_size
    os.makedirs(args.out_dir, exist_ok=True)
    result = measure(cli, args.steps, args.warmup, args.out_dir)
    path = args.json or os.path.join(args.out_dir, "result.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    if not args.keep:
        shutil.rmtree(os.path.join(args.out_dir, "checkpoints"), ignore_errors=True)
    print(table(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from deploy.process import run_cli

    run_cli(main)
