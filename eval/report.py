"""Reporting verification results: a text table, JSON, and the ROC curves of every set in one PNG."""
import os

import numpy as np


def _far_label(target):
    return f"{target:.0e}".replace("e-0", "e-")


def format_table(results):
    """One row per set: pairs, accuracy ± std (%), TAR@FAR (achieved FAR), XNorm, images/s."""
    if not results:
        return "(no results)"
    targets = sorted({t for r in results.values() for t in r["tar_at_far"]}, reverse=True)
    header = ["set", "pairs", "accuracy (%)"] + [f"TAR@FAR={_far_label(t)} (FAR)" for t in targets]
    header += ["XNorm", "images/s"]
    rows = []
    for name, r in results.items():
        row = [name, str(r["num_pairs"]), f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}"]
        for t in targets:
            entry = r["tar_at_far"].get(t)
            row.append("-" if entry is None else f"{100 * entry['tar']:.2f} ({entry['far']:.1e})")
        row.append(f"{r['xnorm']:.4g}")
        row.append(f"{r['images_per_sec']:.1f}" if "images_per_sec" in r else "-")
        rows.append(row)
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def results_to_json(results):
    """JSON-ready copy of :func:`verify_sets` results (arrays to lists, FAR keys to strings)."""
    def convert(value):
        if isinstance(value, dict):
            return {(_far_label(k) if isinstance(k, float) else str(k)): convert(v) for k, v in value.items()}
        if isinstance(value, (np.ndarray, list, tuple)):
            return [convert(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
        if isinstance(value, np.generic):
            return value.item()
        return value
    return convert(results)


def plot_roc(results, path):
    """Draw the ROC curve (TPR vs FPR, log FPR) of every set into one PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, r in results.items():
        fpr, tpr = np.asarray(r["roc"]["fpr"]), np.asarray(r["roc"]["tpr"])
        keep = fpr > 0
        ax.plot(fpr[keep], tpr[keep], label=f"{name} (acc {100 * r['accuracy']:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FPR)")
    ax.set_ylabel("true accept rate (TPR)")
    ax.set_title("Verification ROC (mean over folds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
