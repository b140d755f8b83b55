"""recipes/train.py with --fc7-parallel: fc7 sharded over 2 CPU contexts with class sampling trains, saves a
device-count-free state, and resumes on 1 context."""
import numpy as np


def test_train_sharded_sampled_fc7_and_resume_on_other_device_count(tmp_path):
    from datasets import synthetic
    from recipes import train
    data = tmp_path / "data"
    synthetic.generate_dataset(str(data), num_identities=6, images_per_identity=2, pairs_per_set=20,
                               eval_identities=4, workers=1, sets=())
    out = tmp_path / "run"
    common = {"data_dir": str(data), "network": "mobilefacenet", "emb_size": 16, "num_workers": 0,
              "hybridize": "none", "plot": False, "log_interval": 1, "output_dir": str(out)}
    train.run(dict(common, fc7_parallel=True, sample_rate=0.5, cpu_devices=2, batch_size=3, num_epochs=1))
    state = np.load(str(out / "model-state-0001.npz"))
    assert state["head/weight"].shape == (6, 16) and np.abs(state["head/momentum"]).max() > 0
    summary = train.run({"resume": "auto", "output_dir": str(out), "cpu_devices": 1, "num_epochs": 2})
    assert summary["last"]["epoch"] == 2
    resumed = np.load(str(out / "model-state-0002.npz"))
    assert not np.array_equal(resumed["head/weight"], state["head/weight"])
