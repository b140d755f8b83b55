"""tools/bench_train.py: the recipe's own training step, in the graph mode the recipe would use."""
import pytest

from tools import bench_train


@pytest.mark.parametrize("network,mode", [("seesaw_shuffle", "alloc"), ("mobilefacenet", "plain")])
def test_measures_the_recipe_default_graph_mode(network, mode):
    result = bench_train.measure(network, batch_size=4, steps=1, warmup=1, hybridize="auto", classes=10)
    assert result["hybridize"] == mode  # recipes/configs/<network>.yaml, as train.py resolves it
    assert result["samples_per_sec"] > 0 and result["samples_per_cpu_sec"] > 0
    assert result["peak_rss_gb"] > 0.1


def test_rejects_unknown_options():
    with pytest.raises(ValueError, match="--hybridize"):
        bench_train.main(["--hybridize", "fast"])
    with pytest.raises(ValueError, match="unknown network"):
        bench_train.main(["--networks", "resnet"])
