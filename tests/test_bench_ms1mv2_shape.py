"""tools/bench/ms1mv2_shape.py on a tiny cheap-rendered dataset: the step split, memory and checkpoint figures."""
import pytest

from datasets import synthetic
from tools.bench import ms1mv2_shape


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("shape"))
    synthetic.generate_dataset(folder, num_identities=30, images_per_identity=2, pairs_per_set=20,
                               eval_identities=4, workers=1, sets=(), renderer="cheap", base_faces=6)
    return folder


@pytest.mark.parametrize("sharded", [False, True])
def test_measures_split_memory_and_checkpoint(data_dir, tmp_path, sharded):
    cli = {"network": "mobilefacenet", "data_dir": data_dir, "batch_size": 4, "emb_size": 16, "num_workers": 0,
           "hybridize": "none"}
    if sharded:
        cli.update(fc7_parallel=True, sample_rate=0.5, cpu_devices=2, batch_size=2)
    result = ms1mv2_shape.measure(cli, steps=2, warmup=1, out_dir=str(tmp_path))
    parts = result["split_seconds_median"]
    expected = {"data", "backbone_forward", "fc7_forward_backward", "backbone_backward", "update"}
    assert set(parts) == (expected | {"fc7_update"} if sharded else expected)
    assert result["num_classes"] == 30 and result["global_batch"] == 4 and len(result["losses"]) == 5
    assert result["checkpoint_fc7_mb"] == pytest.approx(2 * 30 * 16 * 4 / 1e6 if sharded else 30 * 16 * 4 / 1e6)
    assert result["checkpoint_state_mb"] > result["checkpoint_fc7_mb"] and result["checkpoint_params_mb"] > 0
    assert result["peak_memory_gb"] >= result["peak_memory_training_gb"] > 0.1
    assert ("fc7_update_alone_seconds" in result) != sharded
    assert "fc7 " in ms1mv2_shape.table(result)
