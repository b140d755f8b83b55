"""--max-steps: a run stops after N optimizer steps with a checkpoint, verification and its summary; --resume
continues from that step checkpoint inside an epoch exactly as an uninterrupted run (same data order, flips,
lr, class sampling): N steps + resume to M steps == M steps straight."""
import os

import mxnet as mx
import numpy as np
import pytest

from datasets import synthetic
from recipes import checkpoint as ckpt
from recipes import config, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny_faces"))
    synthetic.generate_dataset(folder, num_identities=6, images_per_identity=4, pairs_per_set=20,
                               eval_identities=6, workers=1)
    return folder


@pytest.fixture(scope="module")
def many_classes(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("twenty_ids"))
    synthetic.generate_dataset(folder, num_identities=20, images_per_identity=2, pairs_per_set=20,
                               eval_identities=4, workers=1, sets=(), renderer="cheap", base_faces=5)
    return folder


def _options(data_dir, out, **extra):  # 24 images, batch 8: 3 steps per epoch, 6 in all
    options = {"network": "seesaw_shuffle", "data_dir": data_dir, "output_dir": str(out), "batch_size": 8,
               "num_epochs": 2, "lr_steps": "1", "warmup_epochs": 0.5, "num_workers": 0, "log_interval": 1,
               "eval_sets": "none", "plot": False, "lr": 0.05, "margin_s": 16.0, "margin_warmup_epochs": 1.5}
    options.update(extra)
    return options


def _params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(path).items()}


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _lrs(folder):
    return [r.split(",")[4] for r in open(os.path.join(folder, "loss.csv")).read().splitlines()[1:]]


def test_max_steps_stops_with_a_step_checkpoint_and_resume_is_exact(data_dir, tmp_path):
    out = tmp_path / "split"
    summary = train.run(_options(data_dir, out, max_steps=4, eval_sets=None, eval_batch_size=20))
    # stopped inside epoch 2 (batch 1 of 3): step checkpoint, verification ran, summary says where to go on
    assert summary["stopped_at_max_steps"] and summary["step"] == 4
    assert summary["last"] == dict(summary["last"], epoch=1, batch=1, step=4, state="model-step-state-0004.npz",
                                   params="model-step-0004.params", symbol="model-step-symbol.json")
    assert set(summary["final"]) == {"synth_lfw", "synth_cfp_fp", "synth_agedb_30"}

    meta, _ = ckpt.read_state(str(out / "model-step-state-0004.npz"))
    assert (meta["epoch"], meta["batch"], meta["step"]) == (1, 1, 4)
    assert meta["config"]["max_steps"] == 4
    log = open(out / "train.log").read()
    assert "--max-steps 4: stopping at step 4 of 6" in log
    assert "stopped by --max-steps in epoch 2 at batch 1/3" in log and "peak memory" in log
    assert "mx.model.load_checkpoint('" + str(out / "model-step") + "', 4)" in log
    sym, args, auxs = mx.model.load_checkpoint(str(out / "model-step"), 4)  # a deployable embedding network
    assert len(args) > 10 and not any("fc7" in k for k in args)
    rows = open(out / "metrics.csv").read().splitlines()
    assert rows[-1].startswith("4,")  # the verification at the stop step

    # resume: max_steps is not inherited, the run continues at epoch 2 batch 2 and ends like a straight run
    resumed = train.run({"output_dir": str(out), "resume": "auto", "num_workers": 0})
    assert not resumed["stopped_at_max_steps"] and resumed["last"]["epoch"] == 2 and resumed["step"] == 6
    assert "continuing epoch 2 at batch 2/3" in open(out / "train.log").read()
    full = train.run(_options(data_dir, tmp_path / "full"))
    assert full["step"] == 6
    diff = _max_diff(_params(str(out / "model-0002.params")), _params(str(tmp_path / "full" / "model-0002.params")))
    assert diff == 0.0, diff  # bit-identical
    assert _lrs(out) == _lrs(tmp_path / "full")  # same lr at every step (loss.csv has a row per step here)
    a, b = np.load(str(out / "model-state-0002.npz")), np.load(str(tmp_path / "full" / "model-state-0002.npz"))
    assert np.array_equal(a["head/weight"], b["head/weight"])
    assert not os.path.exists(out / "model-step-state-0004.npz")  # pruned: neither last nor best any more
    assert os.path.isfile(out / "model-step-0004.params")  # embedding networks stay


def test_resume_inside_an_epoch_with_sharded_sampled_fc7(many_classes, tmp_path):
    # 40 images, global batch 6 on 2 CPU contexts: 6 steps per epoch; fc7 sharded, half of each shard sampled
    common = {"data_dir": many_classes, "network": "mobilefacenet", "emb_size": 16, "num_workers": 0,
              "hybridize": "none", "plot": False, "log_interval": 1, "fc7_parallel": True, "sample_rate": 0.5,
              "cpu_devices": 2, "batch_size": 3, "num_epochs": 3, "lr_steps": "2", "warmup_epochs": 0.5,
              "eval_sets": "none"}
    straight = train.run(dict(common, output_dir=str(tmp_path / "straight"), max_steps=9))
    assert straight["stopped_at_max_steps"] and straight["last"]["epoch"] == 1 and straight["last"]["batch"] == 3
    first = train.run(dict(common, output_dir=str(tmp_path / "split"), max_steps=4))
    assert first["last"]["epoch"] == 0 and first["last"]["batch"] == 4
    with pytest.raises(ValueError, match="--max-steps 4: the checkpoint is already at step 4"):
        train.run({"output_dir": str(tmp_path / "split"), "resume": "auto", "max_steps": 4})
    second = train.run({"output_dir": str(tmp_path / "split"), "resume": "auto", "max_steps": 9})
    assert second["step"] == 9 and second["last"]["state"] == "model-step-state-0009.npz"
    a = np.load(str(tmp_path / "straight" / "model-step-state-0009.npz"))
    b = np.load(str(tmp_path / "split" / "model-step-state-0009.npz"))
    for key in [k for k in a.files if k.startswith(("backbone/", "head/"))]:
        assert np.array_equal(a[key], b[key]), key  # fc7 weight and momentum too: the same rows were sampled
    assert _lrs(tmp_path / "split") == _lrs(tmp_path / "straight")


def test_max_steps_at_an_epoch_end_and_beyond_the_schedule(data_dir, tmp_path):
    at_end = train.run(_options(data_dir, tmp_path / "end", max_steps=3))
    assert at_end["stopped_at_max_steps"] and at_end["last"] == dict(at_end["last"], epoch=1, step=3)
    assert "batch" not in at_end["last"] and not list((tmp_path / "end").glob("model-step*"))
    beyond = train.run(_options(data_dir, tmp_path / "beyond", max_steps=100, num_epochs=1))
    assert not beyond["stopped_at_max_steps"] and beyond["step"] == 3


def test_max_steps_setting():
    assert config.resolve({"data_dir": "x"})["max_steps"] == 0
    assert config.resolve({"data_dir": "x", "max_steps": 300})["max_steps"] == 300
    with pytest.raises(ValueError, match="max_steps must be >= 0"):
        config.resolve({"data_dir": "x", "max_steps": -1})
    base = dict(config.resolve({"data_dir": "x", "max_steps": 300}))
    assert config.resolve({}, base)["max_steps"] == 0  # each run sets its own
    assert config.resolve({"max_steps": 500}, base)["max_steps"] == 500
    help_text = config.build_parser().format_help()
    assert "--max-steps MAX_STEPS" in help_text or "--max-steps" in help_text
