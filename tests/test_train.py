"""The training recipe end to end on a tiny generated dataset: heads, networks, resume, kills, NaN, export."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from datasets import synthetic
from deploy import process
from recipes import checkpoint as ckpt
from recipes import config, fused, train
from recipes.callbacks import Callback
from recipes.distributed import choose_engine
from recipes.loop import TrainingDiverged


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny_faces"))
    synthetic.generate_dataset(folder, num_identities=6, images_per_identity=4, pairs_per_set=20,
                               eval_identities=6, workers=1)
    return folder


def _options(data_dir, out, **extra):
    options = {"network": "seesaw_shuffle", "data_dir": data_dir, "output_dir": str(out), "batch_size": 8,
               "num_epochs": 2, "lr_steps": "1", "warmup_epochs": 0.5, "num_workers": 0, "log_interval": 1,
               "eval_sets": "none", "plot": False, "lr": 0.05, "margin_s": 16.0}
    options.update(extra)
    return options


class StopAfter(Callback):
    """Simulate a kill: raise after epoch ``epoch`` ended (checkpoint written) or at a given batch."""

    class Killed(Exception):
        pass

    def __init__(self, epoch=None, step=None):
        self.epoch, self.step = epoch, step

    def on_batch_end(self, state, batch):
        if self.step is not None and state.step == self.step:
            raise self.Killed()

    def on_epoch_end(self, state, metrics):
        if self.epoch is not None and state.epoch + 1 == self.epoch:
            raise self.Killed()


class Capture(Callback):
    def on_train_end(self, state):
        self.state = state


def _params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(path).items()}


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.parametrize("loss", ["softmax", "arcface", "cosface", "combined"])
def test_every_head_trains_a_short_run(data_dir, tmp_path, loss):
    summary = train.run(_options(data_dir, tmp_path, loss=loss, num_epochs=1, margin_m1=1.2, margin_m2=0.2,
                                 margin_m3=0.1))
    assert summary["last"]["epoch"] == 1 and summary["last"]["step"] == 3
    rows = open(tmp_path / "loss.csv").read().splitlines()
    assert len(rows) == 4 and all("nan" not in r for r in rows)
    assert os.path.isfile(tmp_path / "model-0001.params") and os.path.isfile(tmp_path / "config.yaml")


def test_mobilefacenet_with_verification_and_plot(data_dir, tmp_path):
    capture = Capture()
    summary = train.run(_options(data_dir, tmp_path, network="mobilefacenet", num_epochs=1, eval_sets=None,
                                 plot=True, eval_batch_size=20), extra_callbacks=[capture])
    assert set(summary["final"]) == {"synth_lfw", "synth_cfp_fp", "synth_agedb_30"}
    assert 0.0 <= summary["mean_accuracy"] <= 1.0
    metrics = open(tmp_path / "metrics.csv").read().splitlines()
    assert len(metrics) == 2 and "synth_lfw_accuracy" in metrics[0]
    assert os.path.getsize(tmp_path / "curves.png") > 1000
    log = open(tmp_path / "train.log").read()
    assert "[synth_lfw]" in log and "samples/s" in log and "ETA" in log
    tuned = process.tune_malloc() is not None  # what --malloc-tuning (on by default) could do on this system
    assert ("malloc: mmap_max 0, trim_threshold 2147483647 (after the first step)" in log) == tuned
    assert ("malloc: not tuned" in log) == (not tuned)

    # the exported embedding network loads with mx.model.load_checkpoint and matches the live network
    # (trained with the fused CPU operators when they build; the saved graph holds standard operators only)
    assert fused.available() == any(type(b).__module__ == "recipes.fused.layers"
                                    for b in capture.state.backbone.stem.conv._children.values())
    ops = {node["op"] for node in json.load(open(tmp_path / "model-symbol.json"))["nodes"]}
    assert "LeakyReLU" in ops and not any(op.startswith("seesaw_") for op in ops)
    sym, arg_params, aux_params = mx.model.load_checkpoint(str(tmp_path / "model"), 1)
    assert not any("fc7" in name for name in arg_params)
    x = mx.nd.array(np.random.RandomState(0).uniform(0, 255, (3, 3, 112, 112)).astype(np.float32))
    executor = sym.bind(mx.cpu(), dict(arg_params, data=x), aux_states=aux_params, grad_req="null")
    exported = executor.forward(is_train=False)[0].asnumpy()
    live = capture.state.backbone(x).asnumpy()
    np.testing.assert_allclose(exported, live, rtol=1e-4, atol=1e-4)


def test_resume_equals_uninterrupted_run(data_dir, tmp_path):
    full = train.run(_options(data_dir, tmp_path / "full"))
    with pytest.raises(StopAfter.Killed):
        train.run(_options(data_dir, tmp_path / "split"), extra_callbacks=[StopAfter(epoch=1)])
    pointer = ckpt.read_pointer(str(tmp_path / "split"))
    assert pointer["last"]["epoch"] == 1 and pointer["last"]["step"] == 3
    resumed = train.run({"output_dir": str(tmp_path / "split"), "resume": "auto", "num_workers": 0})
    assert resumed["last"]["step"] == full["last"]["step"] == 6
    a = _params(str(tmp_path / "full" / "model-0002.params"))
    b = _params(str(tmp_path / "split" / "model-0002.params"))
    assert _max_diff(a, b) < 1e-4
    full_loss = open(tmp_path / "full" / "loss.csv").read().splitlines()
    split_loss = open(tmp_path / "split" / "loss.csv").read().splitlines()
    lr_full = [r.split(",")[4] for r in full_loss]
    lr_split = [r.split(",")[4] for r in split_loss]
    assert lr_full == lr_split  # same lr at every step, including the step after the resume


def test_default_graph_mode_trains_like_the_imperative_network(data_dir, tmp_path):
    # static_alloc (the default) plans its buffers once and reuses them from step to step
    assert config.resolve({"network": "seesaw_shuffle", "data_dir": data_dir})["hybridize"] == "alloc"
    train.run(_options(data_dir, tmp_path / "alloc"))
    train.run(_options(data_dir, tmp_path / "none", hybridize="none"))
    a = _params(str(tmp_path / "alloc" / "model-0002.params"))
    b = _params(str(tmp_path / "none" / "model-0002.params"))
    assert _max_diff(a, b) < 1e-5


def test_killed_run_resumes_from_last_complete_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_replace = os.replace

    def dying_replace(src, dst):
        if str(dst).endswith("-state-0002.npz"):
            raise StopAfter.Killed()  # killed while writing epoch 2's state: temp file written, not renamed
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", dying_replace)
    with pytest.raises(StopAfter.Killed):
        train.run(_options(data_dir, out))
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    pointer = ckpt.read_pointer(str(out))
    assert pointer["last"]["epoch"] == 1
    meta, _ = ckpt.read_state(str(out / pointer["last"]["state"]))
    assert meta["step"] == 3
    with pytest.raises(StopAfter.Killed):  # a second kill in the middle of epoch 2
        train.run({"output_dir": str(out), "resume": "auto", "num_workers": 0},
                  extra_callbacks=[StopAfter(step=5)])
    resumed = train.run({"output_dir": str(out), "resume": "auto", "num_workers": 0})
    assert resumed["last"]["epoch"] == 2 and resumed["last"]["step"] == 6
    reference = train.run(_options(data_dir, tmp_path / "reference"))
    assert _max_diff(_params(str(out / "model-0002.params")),
                     _params(str(tmp_path / "reference" / "model-0002.params"))) < 1e-4
    assert reference["last"]["step"] == 6
    steps = [int(r.split(",")[0]) for r in open(out / "loss.csv").read().splitlines()[1:]]
    assert steps == list(range(1, 7))  # rows of the killed attempts after the checkpoint were dropped


def test_resume_on_two_devices(data_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(StopAfter.Killed):
        train.run(_options(data_dir, out), extra_callbacks=[StopAfter(epoch=1)])
    capture = Capture()
    summary = train.run({"output_dir": str(out), "resume": "auto", "num_workers": 0, "cpu_devices": 2},
                        extra_callbacks=[capture])
    state = capture.state
    assert len(state.contexts) == 2 and state.cfg["batch_size"] == 4 and state.global_batch == 8
    assert summary["last"]["step"] == 6
    assert state.trainer.optimizer.num_update == 6
    weights = [state.head.weight.data(c).asnumpy() for c in state.contexts]
    np.testing.assert_allclose(weights[0], weights[1])


class PoisonWeights(Callback):
    def on_batch_end(self, state, batch):
        if state.step == 4:
            for ctx in state.contexts:
                state.head.weight.data(ctx)[:] = np.nan


def test_nan_loss_stops_with_checkpoint_intact(data_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2, step 5"):
        train.run(_options(data_dir, out), extra_callbacks=[PoisonWeights()])
    pointer = ckpt.read_pointer(str(out))
    assert pointer["last"]["epoch"] == 1
    state_path = str(out / pointer["last"]["state"])
    _, arrays = ckpt.read_state(state_path)
    assert all(np.isfinite(arrays[k]).all() for k in arrays.files if k.startswith(("backbone/", "head/")))
    assert np.isfinite(np.concatenate([v.ravel() for v in _params(str(out / "model-0001.params")).values()])).all()


def test_mismatches_are_caught_before_training(data_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(StopAfter.Killed):
        train.run(_options(data_dir, out), extra_callbacks=[StopAfter(epoch=1)])
    with pytest.raises(ValueError, match="is a seesaw_shuffle, not mobilefacenet"):
        train.run({"output_dir": str(out), "resume": "auto", "network": "mobilefacenet", "num_workers": 0})
    other = str(tmp_path / "other_data")
    synthetic.generate_dataset(other, num_identities=5, images_per_identity=4, pairs_per_set=20,
                               eval_identities=6, workers=1)
    with pytest.raises(ValueError, match="6 classes, the data in .* has 5"):
        train.run({"output_dir": str(out), "resume": "auto", "data_dir": other, "num_workers": 0})
    with open(os.path.join(other, "property"), "w") as f:
        f.write("7,112,112\n")
    with pytest.raises(ValueError, match="property says 7 classes"):
        train.run(_options(other, tmp_path / "bad"))
    with open(os.path.join(out, "checkpoints.json")) as f:
        assert json.load(f)["last"]["epoch"] == 1


def test_command_line_reports_bad_input_without_traceback(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "recipes", "train.py"), "--data-dir",
                           str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=root)
    assert proc.returncode == 2
    assert "error: --data-dir" in proc.stderr and "Traceback" not in proc.stderr


def test_engine_choice():
    env = os.environ
    env.pop("MXNET_ENGINE_TYPE", None)  # restored by conftest
    assert choose_engine([mx.cpu()], distributed=False) == "NaiveEngine"
    assert env["MXNET_ENGINE_TYPE"] == "NaiveEngine"
    for contexts, distributed in (([mx.cpu(0), mx.cpu(1)], False), ([mx.gpu(0)], False), ([mx.cpu()], True)):
        env.pop("MXNET_ENGINE_TYPE", None)
        assert choose_engine(contexts, distributed) == "ThreadedEnginePerDevice"
        assert "MXNET_ENGINE_TYPE" not in env
    env["MXNET_ENGINE_TYPE"] = "ThreadedEngine"  # the user's choice wins
    assert choose_engine([mx.cpu()], distributed=False) == "ThreadedEngine"


ENGINE_PROBE = """
import sys
sys.path.insert(0, {root!r})
import mxnet as mx
from recipes import train  # imports everything train.py's run() has imported before it chooses
from recipes.distributed import choose_engine
print(choose_engine([mx.cpu()], distributed={distributed}))
try:
    y = mx.nd.take(mx.nd.ones((3, 2)), mx.nd.array([5]), mode="raise")  # fails inside the operator
    print("deferred")  # the threaded engine reports the failure at the next wait
    y.wait_to_read()
except mx.MXNetError:
    print("raised")
"""


@pytest.mark.parametrize("distributed", [False, True])
def test_chosen_engine_is_the_one_mxnet_uses(distributed):
    """The engine is created lazily: importing the recipe must not create it before choose_engine runs."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "MXNET_ENGINE_TYPE"}
    proc = subprocess.run([sys.executable, "-c", ENGINE_PROBE.format(root=root, distributed=distributed)],
                          capture_output=True, text=True, env=env, cwd=root)
    lines = proc.stdout.split()
    if distributed:
        assert lines == ["ThreadedEnginePerDevice", "deferred", "raised"], proc.stdout + proc.stderr
    else:
        assert lines == ["NaiveEngine", "raised"], proc.stdout + proc.stderr
