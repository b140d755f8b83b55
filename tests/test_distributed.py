"""Distributed training on loopback through tools/launch.py: sharded, sampled fc7 over dist_sync.

Two workers, each with a data-parallel backbone on two CPU contexts and fc7 sharded over them at sample
rate 0.5, train a few steps on different data; both must end with identical backbone and fc7 weights, and
the gathered fc7 checkpoint must load into a run with another device count.
"""
import os
import subprocess
import sys
import uuid

import mxnet as mx
import numpy as np

from tools import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "tools", "launch.py")

WORKER = r'''
import os, sys
sys.path.insert(0, os.environ["REPO_ROOT"])
import numpy as np
import mxnet as mx
from mxnet import autograd, gluon
from recipes.partial_fc import PartialFC

kv = mx.kv.create("dist_sync")
ctxs = [mx.cpu(0), mx.cpu(1)]
mx.random.seed(0)
net = gluon.nn.Dense(8, in_units=6)
net.initialize(mx.init.Xavier(), ctx=ctxs)
trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 5e-4},
                        kvstore=kv, update_on_kvstore=False)
# MXNet 1.9.1 race: the Trainer's first-step broadcast pull can be served after the first gradient merge
# (then a worker's weights become the gradient sum). Initialise the kvstore eagerly and wait.
trainer._init_kvstore()
trainer._init_params()
mx.nd.waitall()
pfc = PartialFC(40, 8, ctxs, sample_rate=0.5, scale=16.0, momentum=0.9, wd=5e-4, seed=0,
                sample_seed=kv.rank)
rng = np.random.RandomState(100 + kv.rank)  # different data and different sampled negatives per worker
per_device = 6
for step in range(4):
    xs = [mx.nd.array(rng.randn(per_device, 6), ctx=c) for c in ctxs]
    ys = [mx.nd.array(rng.randint(0, 40, per_device), ctx=c) for c in ctxs]
    with autograd.record():
        loss = pfc([net(x) for x in xs], ys)
    loss.backward()
    global_batch = per_device * len(ctxs) * kv.num_workers
    trainer.step(global_batch)
    pfc.step(trainer.learning_rate, 1.0 / global_batch, kvstore=kv)
    print("step %d loss %.4f" % (step, loss.mean().asscalar()), flush=True)
    if step == 0:
        rows = np.concatenate([start + pfc._sampled[k] for k, (start, _) in enumerate(pfc.ranges)])
        np.save(os.path.join(os.environ["OUT"], "rows%d.npy" % kv.rank), rows)
        pfc.save(os.path.join(os.environ["OUT"], "fc7-step0-%d.params" % kv.rank))
out = os.environ["OUT"]
net.save_parameters(os.path.join(out, "net%d.params" % kv.rank))
pfc.save(os.path.join(out, "fc7-%d.params" % kv.rank))
'''


def test_two_workers_with_sharded_sampled_fc7_stay_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    launch_id = uuid.uuid4().hex
    env = dict(os.environ, OUT=str(tmp_path), REPO_ROOT=ROOT, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, LAUNCH, "-n", "2", "-s", "1", "--timeout", "60", "--env",
                             f"{launch.LAUNCH_ID_ENV}={launch_id}", "--", sys.executable, str(script)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("step 3 loss") == 2
    nets = [mx.nd.load(str(tmp_path / f"net{r}.params")) for r in (0, 1)]
    fc7s = [mx.nd.load(str(tmp_path / f"fc7-{r}.params")) for r in (0, 1)]
    for name in nets[0]:
        np.testing.assert_array_equal(nets[0][name].asnumpy(), nets[1][name].asnumpy())
    for name in ("fc7_weight", "fc7_momentum"):
        np.testing.assert_array_equal(fc7s[0][name].asnumpy(), fc7s[1][name].asnumpy())
    from recipes.partial_fc import PartialFC, init_weight_rows
    # step 0 updated exactly the rows sampled by either worker (summed masks), on both workers alike
    rows = [set(np.load(str(tmp_path / f"rows{r}.npy")).tolist()) for r in (0, 1)]
    assert rows[0] != rows[1] and len(rows[0]) == len(rows[1]) == 20
    first = mx.nd.load(str(tmp_path / "fc7-step0-0.params"))["fc7_weight"].asnumpy()
    moved = np.flatnonzero(np.abs(first - init_weight_rows(0, 40, 8, seed=0)).max(axis=1) > 0)
    assert set(moved.tolist()) == rows[0] | rows[1]
    resumed = PartialFC(40, 8, [mx.cpu(0), mx.cpu(1), mx.cpu(2)])
    resumed.load(str(tmp_path / "fc7-0.params"))
    np.testing.assert_array_equal(resumed.gather_weight(), fc7s[0]["fc7_weight"].asnumpy())
    assert launch.job_processes(launch_id) == []
