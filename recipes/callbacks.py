"""Periodic work of the training loop as small callbacks: speed log, metrics.csv, curves, checkpoints.

Every callback may implement ``on_train_begin(state)``, ``on_batch_end(state, batch)`` (``batch``: dict
with loss, accuracy, lr, samples) and ``on_epoch_end(state, metrics)`` / ``on_eval(state, metrics)``
(``metrics``: the dict returned by ``train_one_epoch``/``evaluate``, which a callback may extend), and
``on_stop(state, metrics)`` in place of ``on_epoch_end`` when ``--max-steps`` stops the run inside an epoch.
``state`` is the :class:`recipes.loop.TrainState` of the run.
"""
import csv
import datetime
import os
import time

import numpy as np

from .checkpoint import describe_entry


class Callback:
    """No-op base class."""

    def on_train_begin(self, state):
        pass

    def on_batch_end(self, state, batch):
        pass

    def on_eval(self, state, metrics):
        pass

    def on_epoch_end(self, state, metrics):
        pass

    def on_stop(self, state, metrics):
        pass

    def on_train_end(self, state):
        pass


def format_seconds(seconds):
    """``3725.2`` -> ``'1:02:05'``."""
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class SpeedLogger(Callback):
    """Every ``log_interval`` batches: samples/s, mean loss and accuracy since the last line, lr, ETA.

    Also appends ``step,epoch,loss,accuracy,lr,samples_per_sec`` to ``loss.csv`` (rank 0) for the curves.
    """

    def __init__(self, log_interval, csv_path=None):
        self.log_interval = int(log_interval)
        self.csv_path = csv_path
        self._reset()

    def _reset(self):
        self.tic = time.perf_counter()
        self.samples = 0
        self.losses, self.accuracies = [], []

    def on_train_begin(self, state):
        self._reset()
        self.run_tic, self.run_steps = time.perf_counter(), 0

    def on_batch_end(self, state, batch):
        self.samples += batch["samples"]
        self.losses.append(batch["loss"])
        self.accuracies.append(batch["accuracy"])
        self.run_steps += 1
        if (state.batch % self.log_interval != 0 and state.batch != state.iters_per_epoch
                and state.step != state.max_steps):
            return
        elapsed = time.perf_counter() - self.tic
        speed = self.samples / max(elapsed, 1e-9)
        per_step = (time.perf_counter() - self.run_tic) / max(self.run_steps, 1)
        remaining = state.last_step - state.step
        loss, acc = float(np.mean(self.losses)), float(np.mean(self.accuracies))
        state.log(f"Epoch[{state.epoch + 1}/{state.cfg['num_epochs']}] Batch[{state.batch}/{state.iters_per_epoch}] "
                  f"step {state.step}  {speed:.1f} samples/s  loss {loss:.4f}  acc {acc:.4f}  "
                  f"lr {batch['lr']:.6f}  margin x{batch['margin_scale']:.2f}  ETA {format_seconds(remaining * per_step)}")
        if self.csv_path and state.is_main:
            append_rows(self.csv_path, ["step", "epoch", "loss", "accuracy", "lr", "samples_per_sec"],
                        [[state.step, round(state.step / state.iters_per_epoch, 4), round(loss, 5), round(acc, 5),
                          readable(batch["lr"]), round(speed, 2)]])
        self._reset()


def readable(value, digits=6):
    """``0.010000000000000002`` → ``0.01``: a float rounded to ``digits`` significant digits for the csv files."""
    return float(f"{value:.{digits}g}")


def append_rows(path, header, rows):
    """Append rows to a csv file, writing the header first when the file is new."""
    new = not os.path.isfile(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(header)
        writer.writerows(rows)


def read_rows(path):
    """Rows of a csv file as dicts (empty list when absent)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def truncate_after_step(path, step):
    """Drop rows with ``step`` > ``step`` (work of a killed run after its last checkpoint) from a csv."""
    rows = read_rows(path)
    if not rows:
        return
    header = list(rows[0].keys())
    kept = [r for r in rows if float(r["step"]) <= step]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, path)


class MetricsWriter(Callback):
    """One row in ``metrics.csv`` per evaluation: step, epoch, lr, train loss/accuracy, each set's accuracy."""

    def __init__(self, path, set_names):
        self.path = path
        self.header = (["step", "epoch", "lr", "train_loss", "train_accuracy", "samples_per_sec"]
                       + [f"{n}_accuracy" for n in set_names] + [f"{n}_std" for n in set_names]
                       + ["mean_accuracy", "elapsed_seconds"])

    def on_eval(self, state, metrics):
        if not state.is_main:
            return
        train = metrics.get("train", {})
        row = {"step": state.step, "epoch": round(state.step / state.iters_per_epoch, 4), "lr": readable(state.lr),
               "train_loss": train.get("loss", ""), "train_accuracy": train.get("accuracy", ""),
               "samples_per_sec": train.get("samples_per_sec", ""),
               "mean_accuracy": metrics.get("mean_accuracy", ""), "elapsed_seconds": round(state.elapsed(), 1)}
        for name, result in metrics.get("sets", {}).items():
            row[f"{name}_accuracy"] = round(result["accuracy"], 5)
            row[f"{name}_std"] = round(result["accuracy_std"], 5)
        append_rows(self.path, self.header, [[row.get(k, "") for k in self.header]])


class CurvePlotter(Callback):
    """``curves.png``: training loss (from loss.csv) and verification accuracy (from metrics.csv) vs epoch."""

    def __init__(self, path, loss_csv, metrics_csv, loss_name="softmax"):
        self.path, self.loss_csv, self.metrics_csv = path, loss_csv, metrics_csv
        self.loss_name = loss_name

    def on_eval(self, state, metrics):
        if state.is_main:
            plot_curves(self.path, self.loss_csv, self.metrics_csv, self.loss_name)


def plot_curves(path, loss_csv, metrics_csv, loss_name="softmax"):
    """Draw the two panels into ``path`` (atomically); silently skips when there is nothing to plot.
    ``loss_name`` (the ``--loss`` of the run) labels the loss axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    losses, evals = read_rows(loss_csv), read_rows(metrics_csv)
    if not losses and not evals:
        return
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if losses:
        ax_loss.plot([float(r["epoch"]) for r in losses], [float(r["loss"]) for r in losses], label="loss")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel(f"training loss ({loss_name})")
        ax_loss.grid(alpha=0.3)
    if evals:
        epochs = [float(r["epoch"]) for r in evals]
        for key in evals[0]:
            if key.endswith("_accuracy") and key not in ("train_accuracy",):
                values = [float(r[key]) if r[key] not in ("", None) else np.nan for r in evals]
                ax_acc.plot(epochs, values, marker="o", label=key[:-len("_accuracy")])
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("verification accuracy")
        ax_acc.grid(alpha=0.3)
        ax_acc.legend(fontsize=8)
    save_figure(fig, path)


def save_figure(fig, path):
    """Write a matplotlib figure to ``path`` atomically (a reader never sees half a PNG) and close it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


class CheckpointSaver(Callback):
    """At each epoch end (rank 0): export the embedding network, save the training state, keep last and best;
    the same at the step where ``--max-steps`` stops a run inside an epoch (a step checkpoint)."""

    def __init__(self, manager):
        self.manager = manager

    def on_epoch_end(self, state, metrics):
        if not state.is_main:
            return
        pointer = self.manager.save(state.epoch + 1, state.step, state.backbone, state.head, state.trainer,
                                    state.checkpoint_meta(), state.contexts[0],
                                    accuracy=metrics.get("mean_accuracy"))
        metrics["checkpoint"] = pointer["last"]
        best = pointer["best"]
        state.log(f"checkpoint epoch {state.epoch + 1}: {self.manager.params_path(state.epoch + 1)}, training state "
                  f"{self.manager.state_path(state.epoch + 1)} (best: {describe_entry(best)}, mean accuracy "
                  f"{best['accuracy']}; training states are kept for the last and the best epoch)")

    def on_stop(self, state, metrics):
        if not state.is_main:
            return
        tic = time.perf_counter()
        pointer = self.manager.save_step(state.epoch, state.batch, state.step, state.backbone, state.head,
                                         state.trainer, state.checkpoint_meta(), state.contexts[0],
                                         accuracy=metrics.get("mean_accuracy"))
        seconds = time.perf_counter() - tic
        metrics["checkpoint"] = pointer["last"]
        state_path, params_path = self.manager.step_state_path(state.step), self.manager.step_params_path(state.step)
        state.log(f"checkpoint at step {state.step} (epoch {state.epoch + 1}, batch {state.batch}/"
                  f"{state.iters_per_epoch}): {params_path} ({os.path.getsize(params_path) / 1e6:.1f} MB), training "
                  f"state {state_path} ({os.path.getsize(state_path) / 1e6:.1f} MB), written in {seconds:.1f} s")


def standard_callbacks(cfg, set_names, manager):
    """The run's callbacks: speed log + loss.csv, metrics.csv, curves.png (``--plot``), checkpoints."""
    out = cfg["output_dir"]
    loss_csv, metrics_csv = os.path.join(out, "loss.csv"), os.path.join(out, "metrics.csv")
    callbacks = [SpeedLogger(cfg["log_interval"], loss_csv), MetricsWriter(metrics_csv, set_names)]
    if cfg["plot"]:
        callbacks.append(CurvePlotter(os.path.join(out, "curves.png"), loss_csv, metrics_csv, cfg["loss"]))
    return callbacks + [CheckpointSaver(manager)]
