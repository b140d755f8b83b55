"""End to end on loopback: tools/launch.py runs recipes/train.py --kvstore dist_sync with 1 server, 2 workers.

Each worker trains on its own shard of a tiny generated dataset; both must end with identical backbone and
fc7 weights, only rank 0 writes the checkpoint, which loads and evaluates; no process of the job survives.
The workers run ``recipes.train.run`` through a three-line wrapper that adds a callback saving each rank's
final weights (the command line itself saves on rank 0 only).
"""
import os
import subprocess
import sys
import uuid

import mxnet as mx
import numpy as np
import pytest

from tools import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "tools", "launch.py")

WRAPPER = r'''
import os, sys
sys.path.insert(0, os.environ["REPO_ROOT"])
import symbols
from recipes import config, train

class SaveEveryRank:
    def on_train_begin(self, state): pass
    def on_batch_end(self, state, batch): pass
    def on_eval(self, state, metrics): pass
    def on_epoch_end(self, state, metrics): pass
    def on_train_end(self, state):
        out = os.environ["WEIGHTS_DIR"]
        state.backbone.save_parameters(os.path.join(out, "backbone-rank%d.params" % state.rank))
        state.head.save_parameters(os.path.join(out, "head-rank%d.params" % state.rank))

args = vars(config.build_parser(symbols.list_models()).parse_args(sys.argv[1:]))
train.run(args, extra_callbacks=[SaveEveryRank()])
'''


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from datasets import synthetic
    out = tmp_path_factory.mktemp("tiny_data")
    synthetic.generate_dataset(str(out), num_identities=4, images_per_identity=2, pairs_per_set=20,
                               eval_identities=4, workers=1, sets=("synth_lfw",))
    return out


def test_launcher_trains_recipe_on_two_workers(tmp_path, tiny_data):
    wrapper = tmp_path / "train_worker.py"
    wrapper.write_text(WRAPPER)
    weights, output = tmp_path / "weights", tmp_path / "run"
    weights.mkdir()
    launch_id = uuid.uuid4().hex
    env = dict(os.environ, REPO_ROOT=ROOT, WEIGHTS_DIR=str(weights), OMP_NUM_THREADS="1")
    command = [sys.executable, str(wrapper), "--kvstore", "dist_sync", "--data-dir", str(tiny_data),
               "--network", "mobilefacenet", "--emb-size", "16", "--batch-size", "2", "--num-workers", "0",
               "--num-epochs", "1", "--hybridize", "none", "--plot", "false", "--eval-flip", "false",
               "--log-interval", "1", "--output-dir", str(output)]
    result = subprocess.run([sys.executable, LAUNCH, "-n", "2", "-s", "1", "--timeout", "150", "--env",
                             f"{launch.LAUNCH_ID_ENV}={launch_id}", "--", *command],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # every worker trained its own shard (4 of the 8 images: 2 steps of 2) and says which rank it is
    for rank in (0, 1):
        assert f"[rank {rank}] " in log
    assert "steps/epoch of 4 (2 x 1 device(s) x 2 worker(s))" in log
    backbones = [mx.nd.load(str(weights / f"backbone-rank{r}.params")) for r in (0, 1)]
    heads = [mx.nd.load(str(weights / f"head-rank{r}.params")) for r in (0, 1)]
    for first, second in ((backbones[0], backbones[1]), (heads[0], heads[1])):
        trainable = [name for name in first if not name.endswith(("running_mean", "running_var"))]
        assert len(trainable) > 10 or first is heads[0]
        for name in trainable:
            np.testing.assert_array_equal(first[name].asnumpy(), second[name].asnumpy(), err_msg=name)
    # BatchNorm running statistics are not synchronised: each worker keeps those of its own shard
    stats = [name for name in backbones[0] if name.endswith("running_mean")]
    assert stats and any(not np.array_equal(backbones[0][n].asnumpy(), backbones[1][n].asnumpy()) for n in stats)
    # rank 0 alone wrote the checkpoint; it loads and evaluates
    assert sorted(p.name for p in output.glob("model-*.params")) == ["model-0001.params"]
    assert (output / "train.log").read_text().count("[rank 1]") == 0
    import datasets
    from deploy.checkpoint import load_model
    from eval.embeddings import extract_embeddings
    from eval.metrics import evaluate
    net = load_model(f"{output}/model,1", [mx.cpu()])
    images, issame = datasets.load_bin(str(tiny_data / "synth_lfw.bin"))
    embeddings = extract_embeddings(net, images, ctx=[mx.cpu()], batch_size=20)
    assert embeddings.shape == (40, 16) and np.isfinite(embeddings).all()
    assert 0.0 <= evaluate(embeddings, issame)["accuracy"] <= 1.0
    assert launch.job_processes(launch_id) == []
