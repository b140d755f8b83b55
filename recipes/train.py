"""Train a face embedding network with a margin softmax head: the one training entry point.

    python recipes/train.py --network seesaw_shuffle                        # generated data, short CPU run
    python recipes/train.py --network seesaw_shuffle --data-dir faces_emore --gpus 0,1,2,3   # the paper

:func:`run` reads as the run goes: settings → devices → output → data → network, head and trainer → resume →
verification and callbacks → epochs → summary. The pieces live in :mod:`recipes.setup` (building),
:mod:`recipes.loop` (steps and epochs), :mod:`recipes.distributed` (engine, kvstore, Horovod),
:mod:`recipes.verifier` and :mod:`recipes.callbacks`.
"""
import os
import sys
import time

if __name__ == "__main__":  # python recipes/train.py, from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from deploy.process import use_all_cores

    use_all_cores()  # before mxnet loads: MXNet 1.9.1 otherwise computes on one core

import numpy as np  # noqa: E402
from mxnet import gluon  # noqa: E402

import symbols  # noqa: E402
from recipes import callbacks as cb  # noqa: E402
from recipes import checkpoint as ckpt  # noqa: E402
from recipes import config as config_mod  # noqa: E402
from recipes import setup  # noqa: E402
from recipes.cpu_share import CpuShare, shares_cpu  # noqa: E402
from recipes.distributed import broadcast_initial_parameters, setup_devices  # noqa: E402
from recipes.loop import TrainState, evaluate, train_one_epoch  # noqa: E402
from recipes.verifier import Verifier  # noqa: E402


def run(cli, extra_callbacks=()):
    """Train with explicitly given options ``cli`` (dict; see :func:`recipes.config.build_parser`).

    Returns a summary dict (output paths, final and best accuracies, wall time). ``extra_callbacks`` are
    added to the run's callbacks (tests use this).
    """
    start = time.time()
    resume_path, resume_meta = setup.prepare_resume(cli)
    cfg = setup.resolve_settings(cli, resume_meta)
    devices = setup_devices(cfg)
    setup.fit_global_batch(cfg, cli, resume_meta, devices)
    logger = setup.prepare_output(cfg, devices.rank)
    amp = setup.enable_amp(cfg, devices.contexts)

    data = setup.build_data(cfg, devices, logger)
    setup.check_resume(resume_path, resume_meta, cfg, data)
    backbone, head, trainer = setup.build_model(cfg, devices, data.num_classes, data.iters_per_epoch, logger, amp)
    state = TrainState(cfg, devices.contexts, backbone, head, trainer, data.iters_per_epoch, data.num_classes,
                       devices.rank, devices.num_workers, logger, data.data_dir, amp=amp, horovod=devices.horovod)
    broadcast_initial_parameters(devices, trainer, backbone, head)
    manager = ckpt.CheckpointManager(cfg["output_dir"], cfg["prefix"])
    start_epoch, start_batch = 0, 0
    if resume_path:
        sampling = ckpt.sampling_state(head)
        start_epoch = setup.restore(state, resume_path, cfg["output_dir"])
        start_batch = int(resume_meta.get("batch", 0))  # > 0: a step checkpoint inside epoch start_epoch
        if start_batch:
            state.log(f"continuing epoch {start_epoch + 1} at batch {start_batch + 1}/{data.iters_per_epoch} "
                      "(the batches before it are skipped undecoded, their flips replayed)")
        if devices.num_workers > 1:  # the file holds rank 0's class-sampling stream: each worker keeps its own
            ckpt.set_sampling_state(head, sampling)
    check_max_steps(state)

    sets = setup.load_eval_sets(cfg, data.data_dir, devices.rank)
    state.verifier = Verifier(cfg, sets, devices.contexts[0]) if sets else None
    state.callbacks = cb.standard_callbacks(cfg, list(sets), manager) + list(extra_callbacks)
    if shares_cpu(devices):
        state.callbacks.append(CpuShare())
    describe(state, data, devices, sets)

    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    state.fire("on_train_begin")
    last = {}
    for epoch in range(start_epoch, cfg["num_epochs"]):
        state.epoch = epoch
        train_metrics = train_one_epoch(state, data.loader, loss_fn, start_batch if epoch == start_epoch else 0)
        epoch_done = state.batch == state.iters_per_epoch
        what = "done" if epoch_done else f"stopped at batch {state.batch}/{state.iters_per_epoch}, --max-steps"
        state.log(f"Epoch[{epoch + 1}] {what}: loss {train_metrics['loss']:.4f}  acc {train_metrics['accuracy']:.4f}  "
                  f"{train_metrics['samples_per_sec']:.1f} samples/s  {train_metrics['seconds']:.0f} s")
        last = dict(evaluate(state), train=train_metrics)
        state.fire("on_eval", last)
        state.fire("on_epoch_end" if epoch_done else "on_stop", last)
        if state.stopped:
            break
    state.fire("on_train_end")
    return summarize(state, manager, last, time.time() - start)


def check_max_steps(state):
    """``--max-steps`` must lie ahead of the step the run starts at."""
    if state.max_steps is not None and state.max_steps <= state.step:
        raise ValueError(f"--max-steps {state.max_steps}: the checkpoint is already at step {state.step}; give a "
                         "later step (or 0 to train to the end)")


def describe(state, data, devices, sets):
    """Log what is about to run: network, classes, images, steps, batch split, loss, devices, engine, sets."""
    cfg = state.cfg
    n_params = sum(int(np.prod(p.shape)) for p in state.backbone.collect_params().values())
    state.log(f"{cfg['network']}: {n_params / 1e6:.2f}M backbone parameters, {data.num_classes} classes, "
              f"{len(data.dataset)} images, {data.iters_per_epoch} steps/epoch of {state.global_batch} "
              f"({cfg['batch_size']} x {len(devices.contexts)} device(s) x {devices.num_workers} worker(s)), "
              f"{cfg['num_epochs']} epochs, loss {cfg['loss']}, devices {devices.contexts}, engine {devices.engine}")
    if state.max_steps is not None and state.max_steps < state.total_steps:
        state.log(f"--max-steps {state.max_steps}: stopping at step {state.max_steps} of {state.total_steps} "
                  f"(epoch {state.max_steps / state.iters_per_epoch:.2f} of {cfg['num_epochs']}) with a checkpoint")
    if state.is_main and sets:
        state.log(f"verification sets: {', '.join(f'{n} ({len(s[1])} pairs)' for n, s in sets.items())}")


def summarize(state, manager, last, seconds):
    """Log where everything is and return it as a dict."""
    out = state.cfg["output_dir"]
    pointer = manager.pointer
    summary = {"output_dir": out, "config": os.path.join(out, "config.yaml"), "log": os.path.join(out, "train.log"),
               "metrics": os.path.join(out, "metrics.csv"), "curves": os.path.join(out, "curves.png"),
               "seconds": round(seconds, 1), "final": last.get("sets", {}),
               "mean_accuracy": last.get("mean_accuracy"), "last": pointer.get("last"), "best": pointer.get("best"),
               "prefix": manager.prefix, "data_dir": state.data_dir, "step": state.step,
               "stopped_at_max_steps": state.stopped, "peak_memory_gb": peak_memory_gb()}
    if not state.is_main:
        return summary
    state.log("=" * 78)
    stop = (f", stopped by --max-steps in epoch {state.epoch + 1} at batch {state.batch}/{state.iters_per_epoch}"
            if state.stopped and state.batch < state.iters_per_epoch else "")
    memory = f", peak memory {summary['peak_memory_gb']:.2f} GB" if summary["peak_memory_gb"] else ""
    state.log(f"done in {cb.format_seconds(seconds)} ({state.step} steps{stop}{memory})")
    for name, result in summary["final"].items():
        state.log(f"  final {name}: {result['accuracy'] * 100:.2f}% ± {result['accuracy_std'] * 100:.2f}")
    if pointer.get("last"):
        emb_prefix, number = ckpt.embedding_of(pointer["last"], manager.prefix)
        best = pointer["best"]
        state.log(f"  embedding network: {emb_prefix}-symbol.json + {emb_prefix}-{number:04d}.params "
                  f"(mx.model.load_checkpoint('{emb_prefix}', {number}))")
        state.log(f"  best: {ckpt.describe_entry(best)} (mean accuracy {best['accuracy']})")
        state.log(f"  resume: python recipes/train.py --output-dir {out} --resume"
                  + (" (continues at the exact batch)" if pointer["last"].get("batch") else ""))
        state.log(f"  evaluate: python eval/verification.py --model {emb_prefix},{number} "
                  f"--data-dir {state.data_dir}")
    state.log(f"  settings {summary['config']}, log {summary['log']}, metrics {summary['metrics']}, "
              f"curves {summary['curves']}")
    return summary


def peak_memory_gb():
    """Peak resident memory of this process in GB (``VmHWM``), or None where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def main(argv=None):
    """Command line entry point (see ``--help``)."""
    parser = config_mod.build_parser(symbols.list_models())
    run(vars(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    from deploy.process import run_cli

    run_cli(main)
