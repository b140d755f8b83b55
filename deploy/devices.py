"""Devices: ``--gpus 0,1`` and CPU contexts as MXNet context lists (training and evaluation read them alike)."""
import mxnet as mx


def parse_gpus(text, cpu_devices=1):
    """``''`` → ``cpu_devices`` CPU contexts; ``'0,1'`` → ``[mx.gpu(0), mx.gpu(1)]`` (checked against the GPUs
    this machine has, so a typo fails with the count instead of a CUDA error later)."""
    text = str(text or "").strip()
    if not text:
        return [mx.cpu(i) for i in range(int(cpu_devices))]
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--gpus expects comma-separated GPU ids such as 0,1, got {text!r}") from None
    available = mx.context.num_gpus()
    missing = [i for i in ids if i < 0 or i >= available]
    if missing:
        raise ValueError(f"--gpus {text}: GPU id(s) {missing} requested but {available} GPU(s) are visible; "
                         "omit --gpus to run on the CPU")
    return [mx.gpu(i) for i in ids]


def as_ctx_list(ctx=None):
    """``None`` → ``[mx.cpu()]``; a single Context → ``[ctx]``; a list stays a list."""
    if ctx is None:
        return [mx.cpu()]
    if isinstance(ctx, mx.Context):
        return [ctx]
    return list(ctx) or [mx.cpu()]


def all_cpu(ctxs):
    """True when every context of ``ctxs`` is a CPU."""
    return all(c.device_type == "cpu" for c in as_ctx_list(ctxs))
