"""Finished runs side by side: per-epoch verification table and curves from each output folder's
``metrics.csv`` and ``loss.csv`` (the rehearsal's ArcFace-vs-softmax figure, docs/training.md)."""
import os

from .callbacks import read_rows, save_figure


def load_run(folder):
    """``(metrics rows, loss rows)`` of an output folder; ValueError when it has no verification rows."""
    metrics = read_rows(os.path.join(folder, "metrics.csv"))
    if not metrics:
        raise ValueError(f"{folder}: no metrics.csv rows (not a training output folder, or no verification yet)")
    return metrics, read_rows(os.path.join(folder, "loss.csv"))


def set_names(rows):
    """Verification set names of metrics rows, in column order."""
    return [k[:-len("_accuracy")] for k in rows[0] if k.endswith("_accuracy") and k not in ("train_accuracy",
                                                                                             "mean_accuracy")]


def table(runs):
    """Markdown table: one row per run and evaluated epoch, accuracy (%) per set and their mean.
    ``runs``: ``[(label, metrics rows)]``; every run must verify on the same sets."""
    names = set_names(runs[0][1])
    lines = ["| run | epoch | lr | " + " | ".join(names) + " | mean |", "|---" * (len(names) + 4) + "|"]
    for label, rows in runs:
        if set_names(rows) != names:
            raise ValueError(f"{label}: verified on {set_names(rows)}, the first run on {names}")
        for r in rows:
            cells = [f"{100 * float(r[n + '_accuracy']):.2f}" for n in names]
            lines.append(f"| {label} | {float(r['epoch']):g} | {float(r['lr']):g} | " + " | ".join(cells)
                         + f" | **{100 * float(r['mean_accuracy']):.2f}** |")
    return "\n".join(lines)


def plot(runs, path):
    """Two panels into ``path``: training loss and mean verification accuracy vs epoch, one line per run.
    ``runs``: ``[(label, metrics rows, loss rows)]``. Losses of different heads differ in scale (log axis)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for label, metrics, losses in runs:
        if losses:
            ax_loss.plot([float(r["epoch"]) for r in losses], [float(r["loss"]) for r in losses], label=label)
        epochs = [float(r["epoch"]) for r in metrics]
        ax_acc.plot(epochs, [100 * float(r["mean_accuracy"]) for r in metrics], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (each run's head)", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="mean verification accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)
