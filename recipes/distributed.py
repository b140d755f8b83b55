"""Devices and processes of a training run: the execution engine, the kvstore or Horovod, rank and worker count."""
import os
from types import SimpleNamespace

import mxnet as mx

from deploy.devices import parse_gpus

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
    """Pick MXNet's execution engine (before the first operator runs; the engine is created then).

    One CPU device and no kvstore between processes: ``NaiveEngine``, which runs every operator in the calling
    thread (the threaded engine's workers only compete with the operators' OpenMP threads for the cores there).
    GPUs, several devices or a distributed kvstore keep the threaded engine, which overlaps devices and
    communication. ``MXNET_ENGINE_TYPE`` set by the user always wins. Returns the engine's name.
    """
    chosen = os.environ.get("MXNET_ENGINE_TYPE")
    if chosen:
        return chosen
    if len(contexts) == 1 and contexts[0].device_type == "cpu" and not distributed:
        os.environ["MXNET_ENGINE_TYPE"] = "NaiveEngine"
        return "NaiveEngine"
    return "ThreadedEnginePerDevice"


def setup_devices(cfg):
    """``contexts``, ``engine``, ``kvstore`` (for the Trainer), ``rank``, ``num_workers`` and ``horovod`` of a run."""
    if cfg["horovod"]:  # one device per process
        hvd = _horovod()
        contexts = [mx.gpu(hvd.local_rank())] if mx.context.num_gpus() > 0 else [mx.cpu()]
        return SimpleNamespace(contexts=contexts, engine=os.environ.get("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice"),
                               kvstore=None, rank=hvd.rank(), num_workers=hvd.size(), horovod=hvd)
    contexts = parse_gpus(cfg["gpus"], cfg["cpu_devices"])
    kind = cfg["kvstore"]
    engine = choose_engine(contexts, kind.startswith("dist"))
    if kind.startswith("dist"):
        kv = mx.kv.create(kind)
        return SimpleNamespace(contexts=contexts, engine=engine, kvstore=kv, rank=kv.rank, num_workers=kv.num_workers,
                               horovod=None)
    return SimpleNamespace(contexts=contexts, engine=engine, kvstore=kind if len(contexts) > 1 else None, rank=0,
                           num_workers=1, horovod=None)


def sync_initial_parameters(trainer):
    """Distributed runs: give every worker rank 0's initial parameters before the first step.

    MXNet 1.9.1's Trainer does this lazily inside the first ``step()`` and fails in two ways: rank 0's init push
    of a weight that oneDNN holds in its own layout fails silently (the server aborts with "init N first"), and
    a pull may be answered after the first gradients were merged. Here: init every key from plain-layout copies,
    wait until rank 0's pushes are acknowledged, barrier, then pull and wait.
    """
    trainer._init_kvstore()
    kv = trainer._kvstore
    params = [p for p in trainer._params_to_init if not p._deferred_init]
    if kv is None or not params:
        return
    keys = [trainer._param2idx[p.name] for p in params]
    kv.init(keys, [mx.nd.array(p.list_data()[0].asnumpy(), dtype=p.dtype) for p in params])
    mx.nd.waitall()
    kv._barrier()
    pulled = [mx.nd.zeros(p.shape, dtype=p.dtype) for p in params]
    kv.pull(keys, out=pulled)
    mx.nd.waitall()
    for param, value in zip(params, pulled):
        param.set_data(value)
    trainer._params_to_init = [p for p in trainer._params_to_init if p._deferred_init]


def broadcast_initial_parameters(devices, trainer, backbone, head):
    """Before the first step, every worker takes rank 0's parameters (kvstore or Horovod)."""
    if devices.horovod is not None:
        params = dict(backbone.collect_params().items())
        params.update(head.collect_params().items())
        devices.horovod.broadcast_parameters(params, root_rank=0)
    elif isinstance(devices.kvstore, mx.kv.KVStore) and devices.kvstore.type.startswith("dist"):
        sync_initial_parameters(trainer)
