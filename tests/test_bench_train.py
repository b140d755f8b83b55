"""tools/bench/training.py: the recipe's own training step, in the graph mode the recipe would use."""
import platform

import pytest

from tools.bench import training as bench_train


@pytest.mark.parametrize("network,mode", [("seesaw_shuffle", "alloc"), ("mobilefacenet", "alloc")])
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


_PROBE = r"""
import ctypes, json, platform, sys
sys.path.insert(0, sys.argv[1])
from deploy.process import tune_malloc
tuned = tune_malloc() if sys.argv[2] == "tuned" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
address = libc.malloc(48 << 20)  # a 48 MB buffer: a fresh mapping under glibc's defaults
heap = []
with open("/proc/self/maps") as f:
    for line in f:
        if line.rstrip().endswith("[heap]"):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            heap.append((start, end))
print(json.dumps({"tuned": tuned, "in_heap": any(s <= address < e for s, e in heap)}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_tuned_malloc_serves_large_buffers_from_the_heap():
    """tune_malloc (recipes/train.py --malloc-tuning, on for CPU training): a large buffer comes from the
    reusable heap instead of a fresh mapping that faults page by page on every use."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = {mode: json.loads(subprocess.run([sys.executable, "-c", _PROBE, root, mode], capture_output=True,
                                               text=True, check=True).stdout)
               for mode in ("default", "tuned")}
    assert results["default"] == {"tuned": None, "in_heap": False}
    assert results["tuned"]["in_heap"] is True
    assert results["tuned"]["tuned"]["mmap_max"] == 0


def test_measure_reports_the_malloc_setting():
    result = bench_train.measure("mobilefacenet", batch_size=2, steps=1, warmup=1, hybridize="plain", classes=10,
                                 malloc=False)
    assert result["malloc"] == "default" and result["hybridize"] == "plain"  # the explicit mode, not the network's
    assert result["system_seconds_per_step"] >= 0 and result["page_faults_per_step"] >= 0
