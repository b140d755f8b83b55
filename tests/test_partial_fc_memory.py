"""tools/bench/fc7_memory.py: the memory model agrees with what PartialFC allocates; the CLI writes its outputs."""
import mxnet as mx

from recipes.partial_fc import PartialFC
from tools.bench import fc7_memory as bench


def test_persistent_model_equals_allocated_arrays():
    for devices in (1, 3):
        pfc = PartialFC(1000, 16, [mx.cpu(i) for i in range(devices)], sample_rate=0.2)
        est = bench.estimate(1000, 16, devices, 0.2, batch_per_device=8)
        assert max(pfc.memory_per_device()) == est["persistent"]
        assert est["sampled"] == -(-est["shard"] // 5)


def test_memory_per_device_falls_with_devices_and_sample_rate():
    totals = {(d, r): bench.estimate(360232, 512, d, r, 128)["total"] for d in (1, 2, 4, 8) for r in (1.0, 0.1)}
    for r in (1.0, 0.1):
        assert totals[(1, r)] > totals[(2, r)] > totals[(4, r)] > totals[(8, r)]
    for d in (1, 2, 4, 8):
        assert totals[(d, 0.1)] < totals[(d, 1.0)]


def test_cli_model_only_writes_table_figure_and_csv(tmp_path, capsys):
    assert bench.main(["--no-measure", "--num-classes", "5000", "--devices", "1,2", "--sample-rates", "1.0,0.5",
                       "--out-dir", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"fc7_memory.png", "fc7_memory.csv", "fc7_memory.md"}
    table = (tmp_path / "fc7_memory.md").read_text()
    assert "| 2 | 0.5 | 2,500 | 1,250 |" in table and "WebFace42M" in table
