"""fc7 memory per device vs number of devices and sample rate (recipes/partial_fc.py), figure and table.

    python tools/bench/fc7_memory.py --out-dir runs/fc7_memory              # MS1MV2 size, measured + model
    python tools/bench/fc7_memory.py --num-classes 360232 --no-measure      # Glint360K, model only

Per device, fp32, per-device batch B (global batch B·k on k devices), shard size n = ceil(C/k), sampled
rows s = ceil(r·n):

- persistent: weight, gradient and momentum of the shard plus the row mask: ``4·(3·n·D + n)`` bytes,
  exactly what ``PartialFC.memory_per_device()`` reports;
- step: the normalised (sampled) weight with its gradients, the gathered embeddings, and the (B·k) × s
  logit-sized buffers of the margin softmax and its backward.

Measurement (default; ``--no-measure`` skips it): each configuration runs in a fresh process holding one shard
(the largest) on one CPU context and the global batch; after a warm-up step on a tiny instance, the step's peak
is read from the kernel's peak-RSS counter (reset after construction), persistent bytes from the arrays
themselves. GPUs hold the same arrays, so the
figures carry over (CUDA context and allocator slack aside). The model's count of logit-sized buffers is fitted
to the measurements and then used for the class counts one machine cannot measure (Glint360K, WebFace42M).
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root

from deploy.process import run_cli  # noqa: E402

DATASETS = {"MS1MV2": 85742, "Glint360K": 360232, "WebFace42M": 2059906}
MB = 1024.0 * 1024.0
# Logit-sized (global batch × sampled rows) fp32 buffers alive at the step's peak; fitted by --measure runs.
LOGIT_BUFFERS = 6.0


def estimate(num_classes, emb_size, devices, sample_rate, batch_per_device, logit_buffers=LOGIT_BUFFERS):
    """Model of the fc7 bytes on the busiest device: dict with persistent, weight_step, logits, total (bytes)."""
    shard = math.ceil(num_classes / devices)
    sampled = shard if sample_rate >= 1.0 else max(1, math.ceil(sample_rate * shard))
    batch = batch_per_device * devices
    persistent = 4 * (3 * shard * emb_size + shard)
    # normalised weight + its gradient, plus the gathered copy and gradient when rows are sampled
    weight_step = 4 * sampled * emb_size * (2 if sample_rate >= 1.0 else 4) + 4 * 3 * batch * emb_size
    logits = 4 * logit_buffers * batch * sampled
    return {"shard": shard, "sampled": sampled, "persistent": persistent, "weight_step": weight_step,
            "logits": logits, "total": persistent + weight_step + logits}


def _status(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def measure_one(num_classes, emb_size, devices, sample_rate, batch_per_device):
    """In this process: one shard of a ``devices``-way split, one training step; returns bytes measured."""
    import mxnet as mx
    import numpy as np
    from mxnet import autograd
    from recipes.partial_fc import PartialFC

    shard = math.ceil(num_classes / devices)
    batch = batch_per_device * devices
    rng = np.random.RandomState(0)
    # warm-up on a tiny instance: one-time runtime allocations (operator set-up, thread pools) off the books
    tiny = PartialFC(200, emb_size, [mx.cpu()], sample_rate=sample_rate)
    tiny_x = mx.nd.array(rng.randn(8, emb_size))
    tiny_x.attach_grad()
    with autograd.record():
        tiny_loss = tiny(tiny_x, mx.nd.arange(8))
    tiny_loss.backward()
    tiny.step(0.1, 0.125)
    mx.nd.waitall()
    del tiny, tiny_x, tiny_loss
    embeddings = mx.nd.array(rng.randn(batch, emb_size))
    labels = mx.nd.array(rng.randint(0, shard, batch))
    pfc = PartialFC(shard, emb_size, [mx.cpu()], sample_rate=sample_rate)
    embeddings.attach_grad()
    mx.nd.waitall()
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak-RSS counter
    with autograd.record():
        loss = pfc(embeddings, labels)
    loss.backward()
    pfc.step(0.1, 1.0 / batch)
    mx.nd.waitall()
    peak = _status("VmHWM")
    persistent = sum(pfc.memory_per_device())
    return {"persistent": persistent, "step": max(0, peak - before), "total": persistent + max(0, peak - before)}


def measure(num_classes, emb_size, devices, sample_rate, batch_per_device, timeout=600):
    """Run :func:`measure_one` in a fresh process (clean peak counter); returns its dict."""
    argv = [sys.executable, os.path.abspath(__file__), "--measure-one", json.dumps(
        [num_classes, emb_size, devices, sample_rate, batch_per_device])]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"measurement {devices} devices, rate {sample_rate} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def fit_logit_buffers(rows):
    """Least-squares count of logit-sized buffers that explains the measured step memory."""
    num, den = 0.0, 0.0
    for row in rows:
        logit_bytes = 4.0 * row["batch"] * row["sampled"]
        rest = row["measured_step"] - row["estimate_weight_step"]
        num += logit_bytes * rest
        den += logit_bytes * logit_bytes
    return num / den if den else LOGIT_BUFFERS


def plot(rows, model_rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    rates = sorted({r["sample_rate"] for r in rows}, reverse=True)
    for rate in rates:
        sel = [r for r in rows if r["sample_rate"] == rate]
        line = axes[0].plot([r["devices"] for r in sel], [r["estimate_total_mb"] for r in sel], "-",
                            label=f"rate {rate:g} (model)")[0]
        measured = [r for r in sel if r.get("measured_total_mb") is not None]
        if measured:
            axes[0].plot([r["devices"] for r in measured], [r["measured_total_mb"] for r in measured], "o",
                         color=line.get_color(), label=f"rate {rate:g} (measured)")
    first = rows[0]
    axes[0].set_title(f"fc7 per device, {first['num_classes']:,} classes (MS1MV2), "
                      f"emb {first['emb_size']}, batch {first['batch_per_device']}/device")
    for name, classes in DATASETS.items():
        for rate, style in ((1.0, "-"), (0.1, "--")):
            sel = [r for r in model_rows if r["num_classes"] == classes and r["sample_rate"] == rate]
            axes[1].plot([r["devices"] for r in sel], [r["estimate_total_mb"] / 1024 for r in sel], style,
                         marker=".", label=f"{name} rate {rate:g}")
    axes[1].set_title("model: larger class counts")
    axes[0].set_ylabel("MB per device")
    axes[1].set_ylabel("GB per device")
    for ax, ticks in zip(axes, (sorted({r["devices"] for r in rows}), sorted({r["devices"] for r in model_rows}))):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("devices (fc7 shards); global batch = batch/device × devices")
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser():
    parser = argparse.ArgumentParser(description="fc7 memory per device vs devices and sample rate.")
    parser.add_argument("--num-classes", type=int, default=DATASETS["MS1MV2"])
    parser.add_argument("--emb-size", type=int, default=512)
    parser.add_argument("--batch-per-device", type=int, default=128)
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--sample-rates", default="1.0,0.5,0.2,0.1")
    parser.add_argument("--no-measure", action="store_true", help="model only (no measuring processes)")
    parser.add_argument("--out-dir", default="runs/fc7_memory", help="writes fc7_memory.{png,csv,md} here")
    parser.add_argument("--measure-one", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.measure_one:
        print(json.dumps(measure_one(*json.loads(args.measure_one))))
        return 0
    devices = [int(v) for v in args.devices.split(",")]
    rates = [float(v) for v in args.sample_rates.split(",")]
    if any(not 0.0 < r <= 1.0 for r in rates) or any(d < 1 for d in devices):
        raise ValueError("--sample-rates must lie in (0, 1] and --devices be positive integers")
    rows = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(items, **_):
            return items
    configs = [(d, r) for r in rates for d in devices]
    for d, r in tqdm(configs, desc="fc7 memory", disable=args.no_measure):
        est = estimate(args.num_classes, args.emb_size, d, r, args.batch_per_device)
        row = {"num_classes": args.num_classes, "emb_size": args.emb_size, "batch_per_device": args.batch_per_device,
               "devices": d, "sample_rate": r, "shard": est["shard"], "sampled": est["sampled"],
               "batch": args.batch_per_device * d, "estimate_weight_step": est["weight_step"]}
        if not args.no_measure:
            got = measure(args.num_classes, args.emb_size, d, r, args.batch_per_device)
            row.update(measured_persistent_mb=got["persistent"] / MB, measured_step=got["step"],
                       measured_total_mb=got["total"] / MB)
        rows.append(row)
    buffers = fit_logit_buffers(rows) if not args.no_measure else LOGIT_BUFFERS
    for row in rows:
        est = estimate(args.num_classes, args.emb_size, row["devices"], row["sample_rate"], args.batch_per_device,
                       logit_buffers=buffers)
        row.update(persistent_mb=est["persistent"] / MB, estimate_total_mb=est["total"] / MB)
    model_rows = []
    for classes in DATASETS.values():
        for d in (1, 2, 4, 8, 16, 32):
            for r in (1.0, 0.1):
                est = estimate(classes, args.emb_size, d, r, args.batch_per_device, logit_buffers=buffers)
                model_rows.append({"num_classes": classes, "devices": d, "sample_rate": r,
                                   "estimate_total_mb": est["total"] / MB, "persistent_mb": est["persistent"] / MB})
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "fc7_memory.csv"), "w", newline="") as handle:
        fields = ["num_classes", "devices", "sample_rate", "shard", "sampled", "persistent_mb",
                  "measured_total_mb", "estimate_total_mb"]
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows + model_rows)
    lines = [f"fc7 memory per device (MB), {args.num_classes:,} classes, emb {args.emb_size}, "
             f"batch {args.batch_per_device}/device, fp32; logit-sized buffers at peak: {buffers:.2f}", "",
             "| devices | sample rate | shard rows | sampled rows | persistent (w+grad+mom) | measured total | "
             "model total |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        measured = f"{row['measured_total_mb']:.0f}" if "measured_total_mb" in row else "—"
        lines.append(f"| {row['devices']} | {row['sample_rate']:g} | {row['shard']:,} | {row['sampled']:,} | "
                     f"{row['persistent_mb']:.0f} | {measured} | {row['estimate_total_mb']:.0f} |")
    lines += ["", "Model, GB per device (rate 1.0 / rate 0.1):", "",
              "| classes | " + " | ".join(f"{d} dev" for d in (1, 2, 4, 8, 16, 32)) + " |",
              "|---|" + "---|" * 6]
    for name, classes in DATASETS.items():
        cells = []
        for d in (1, 2, 4, 8, 16, 32):
            full, sampled = (next(r["estimate_total_mb"] for r in model_rows if r["num_classes"] == classes
                                  and r["devices"] == d and r["sample_rate"] == rate) / 1024 for rate in (1.0, 0.1))
            cells.append(f"{full:.2f} / {sampled:.2f}")
        lines.append(f"| {name} ({classes:,}) | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out_dir, "fc7_memory.md"), "w") as handle:
        handle.write(table)
    plot(rows, model_rows, os.path.join(args.out_dir, "fc7_memory.png"))
    print(table)
    print(f"wrote {args.out_dir}/fc7_memory.png, .csv, .md")
    return 0


if __name__ == "__main__":
    run_cli(main)
