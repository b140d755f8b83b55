"""Training throughput benchmark: samples/s and peak memory of the recipe's training step on CPU.

    python tools/bench/training.py                                   # mobilefacenet, seesaw_shuffle, seesaw_share
    python tools/bench/training.py --networks seesaw_shuffle --batch-size 64 --steps 8 --hybridize alloc,plain

Each (network, mode) runs in a fresh process (so peak memory is its own): the recipe's backbone, ArcFace head
(``--classes`` identities), SGD trainer and :func:`recipes.loop.train_step` on random batches. Reports
wall-clock samples/s, samples per CPU-second (robust when other processes share the cores) and peak resident
memory (``VmHWM``). Reference figures at batch 64 on a 2-core CPU machine: the authors' PyTorch
implementation ~50 img/s and 3.8 GB peak; a naive MXNet port 32–38 img/s and 8–9 GB.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from deploy.process import use_all_cores  # noqa: E402

use_all_cores()  # threads and their wait policy as the recipe sets them (the measurement's own process too)

DEFAULT_NETWORKS = ("mobilefacenet", "seesaw_shuffle", "seesaw_share")


def peak_rss_gb():
    """Peak resident set size of this process in GB (``VmHWM``; ``ru_maxrss`` as a fallback)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def measure(network, batch_size, steps, warmup, hybridize, classes, fused=True, malloc=True, cpu_share=True):
    """Time ``steps`` training steps after ``warmup`` ones; returns a result dict (runs in this process).
    ``malloc``: tune glibc's malloc after the first step, as ``recipes/train.py`` does for CPU training
    (``--malloc-tuning``; one untimed step is run for it even with ``warmup`` 0). ``cpu_share``: adapt the
    thread count to other processes' load after every step, as the recipe does (:mod:`recipes.cpu_share`)."""
    import resource

    import mxnet as mx
    import numpy as np

    import symbols
    from deploy.process import tune_malloc
    from recipes import config, fused as fused_ops
    from recipes.cpu_share import CpuShare
    from recipes.distributed import choose_engine
    from recipes.heads import build_head
    from recipes.loop import TrainState, train_step
    from recipes.optim import build_trainer
    from recipes.setup import build_backbone, hybridize_backbone

    options = {"network": network, "data_dir": "unused", "batch_size": batch_size}
    if hybridize != "auto":
        options["hybridize"] = hybridize
    cfg = config.resolve(options)
    hybridize = cfg["hybridize"]
    ctx = [mx.cpu()]
    engine = choose_engine(ctx, distributed=False)  # as recipes/train.py
    mx.random.seed(0)
    backbone = build_backbone(cfg)
    symbols.init_model(backbone, ctx)
    if fused:
        fused_ops.enable(backbone)
    head = build_head(cfg, classes, cfg["emb_size"])
    head.initialize(ctx=ctx)
    hybridize_backbone(backbone, hybridize)
    trainer = build_trainer(backbone, head, cfg, iters_per_epoch=1000)
    state = TrainState(cfg, ctx, backbone, head, trainer, 1000, classes)
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(0)
    data = mx.nd.array(rng.uniform(0, 255, (batch_size, 3, 112, 112)).astype(np.float32))
    label = mx.nd.array(rng.randint(0, classes, batch_size).astype(np.float32))
    tuned = None
    share = CpuShare() if cpu_share else None
    if share:
        share.on_train_begin(state)
    for i in range(max(warmup, 1 if malloc else 0)):
        train_step(state, data, label, loss_fn)
        if malloc and i == 0:  # as recipes/train.py: after the first step (tune_malloc_after_first_step)
            tuned = tune_malloc()
        if share:
            share.on_batch_end(state, {})
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        train_step(state, data, label, loss_fn)
        if share:
            share.on_batch_end(state, {})
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    images = steps * batch_size
    return {"network": network, "hybridize": hybridize, "fused": fused, "batch_size": batch_size, "steps": steps,
            "samples_per_sec": images / wall, "samples_per_cpu_sec": images / cpu,
            "system_seconds_per_step": (usage.ru_stime - usage0.ru_stime) / steps,
            "page_faults_per_step": (usage.ru_minflt - usage0.ru_minflt) / steps,
            "malloc": "tuned" if tuned else "default",
            "cores": os.cpu_count(), "peak_rss_gb": peak_rss_gb(), "engine": engine,
            "threads_at_end": share.threads if share else None}


def build_parser():
    parser = argparse.ArgumentParser(prog="python tools/bench/training.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default=",".join(DEFAULT_NETWORKS), help="comma-separated network names")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (one CPU device)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (graph building)")
    parser.add_argument("--hybridize", default="auto",
                        help="comma-separated modes: auto (the recipe's default for the network), none, plain, "
                             "alloc, static")
    parser.add_argument("--fused", default="on", help="comma-separated: on (recipes/fused operators), off")
    parser.add_argument("--engine", default="auto",
                        help="comma-separated: auto (as train.py: NaiveEngine on one CPU device), threaded")
    parser.add_argument("--malloc", default="tuned",
                        help="comma-separated: tuned (glibc malloc as recipes/train.py sets it for CPU training, "
                             "--malloc-tuning), default (glibc's own settings)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration this many times, alternating (the machine drifts)")
    parser.add_argument("--classes", type=int, default=1000, help="identities of the ArcFace head")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="OMP_NUM_THREADS and MXNET_CPU_WORKER_NTHREADS unless already set (as train.py)")
    parser.add_argument("--out", help="also write the results as json")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args._one:
        network, mode, fused, malloc, *share = args._one.split(":")
        print(json.dumps(measure(network, args.batch_size, args.steps, args.warmup, mode, args.classes,
                                 fused == "on", malloc == "tuned", share != ["off"])))
        return 0
    import symbols
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in networks if n not in symbols.list_models()]
    if unknown:
        raise ValueError(f"unknown network(s) {unknown}; valid: {', '.join(symbols.list_models())}")
    modes = [m.strip() for m in args.hybridize.split(",") if m.strip()]
    from recipes.config import HYBRIDIZE
    if set(modes) - {"auto", *HYBRIDIZE}:
        raise ValueError(f"--hybridize takes auto, {', '.join(HYBRIDIZE)}, got {args.hybridize!r}")
    fused_modes = [m.strip() for m in args.fused.split(",") if m.strip()]
    if set(fused_modes) - {"on", "off"}:
        raise ValueError(f"--fused takes on and/or off, got {args.fused!r}")
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    if set(engines) - {"auto", "threaded"}:
        raise ValueError(f"--engine takes auto and/or threaded, got {args.engine!r}")
    mallocs = [m.strip() for m in args.malloc.split(",") if m.strip()]
    if set(mallocs) - {"tuned", "default"}:
        raise ValueError(f"--malloc takes tuned and/or default, got {args.malloc!r}")
    if args.repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {args.repeat}")
    results = []
    print(f"{'network':<16} {'mode':<7} {'fused':<5} {'malloc':<7} {'engine':<24} {'batch':>5} {'samples/s':>10} "
          f"{'per CPU-s':>10} {'sys s/step':>10} {'peak GB':>8}",
          flush=True)
    configs = [(n, m, f, e, a) for n in networks for m in modes for f in fused_modes for e in engines for a in mallocs]
    for network, mode, fused, engine, malloc in configs * args.repeat:
        cmd = [sys.executable, os.path.abspath(__file__), "--_one", f"{network}:{mode}:{fused}:{malloc}",
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--classes", str(args.classes)]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(args.threads))  # as recipes/train.py sets them
        env.setdefault("MXNET_CPU_WORKER_NTHREADS", str(args.threads))
        if engine == "threaded":
            env["MXNET_ENGINE_TYPE"] = "ThreadedEnginePerDevice"
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{network}/{mode} failed: {proc.stderr.strip().splitlines()[-1:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{network:<16} {result['hybridize']:<7} {fused:<5} {result['malloc']:<7} {result['engine']:<24} "
              f"{args.batch_size:>5} {result['samples_per_sec']:>10.1f} {result['samples_per_cpu_sec']:>10.1f} "
              f"{result['system_seconds_per_step']:>10.2f} {result['peak_rss_gb']:>8.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    from deploy.process import run_cli

    run_cli(main)
