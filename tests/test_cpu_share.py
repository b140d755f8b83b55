"""CPU training on a shared machine (recipes.cpu_share): threads follow the cores other processes leave free."""
import ctypes
import types

import mxnet as mx
import pytest

from deploy import process
from recipes import cpu_share
from recipes.cpu_share import CpuShare


class Log:
    def __init__(self):
        self.lines = []

    def log(self, line):
        self.lines.append(line)


def test_threads_follow_the_load_of_other_processes(monkeypatch):
    clock = iter(range(100))
    loads = iter([0.1, 1.0, 1.1, 0.2, 0.7, 0.5])
    monkeypatch.setattr(cpu_share, "cpu_sample", lambda: (float(next(clock)), 0, 0))
    monkeypatch.setattr(cpu_share, "cores_used_by_others", lambda before, after: next(loads))
    chosen = []
    monkeypatch.setattr(cpu_share, "set_cpu_threads", chosen.append)
    share, state = CpuShare(cores=2, interval=1.0), Log()
    share.on_train_begin(state)
    for _ in range(6):
        share.on_batch_end(state, {})
    assert chosen == [1, 2, 1, 2] and share.threads == 2  # 0.1: 2; 1.0: 1; 1.1: 1; 0.2: 2; 0.7: 1; 0.5: 2
    assert len(state.lines) == 4 and "1.0 core(s) busy; computing on 1 thread(s)" in state.lines[0]
    assert CpuShare(cores=8).wanted(2.7) == 5 and CpuShare(cores=2).wanted(5.0) == 1


def test_other_processes_are_measured_from_the_kernels_counters():
    """A child's busy loop counts as another process; this process's own work does not."""
    import os
    import resource
    import subprocess
    import sys
    import time

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = process.cpu_sample()
    subprocess.run([sys.executable, "-c", "import time\nend = time.time() + 1.0\nwhile time.time() < end: pass"],
                   check=True)
    cpu0, end = time.process_time(), time.time() + 0.5
    while time.time() < end:  # this process busy too
        pass
    own = time.process_time() - cpu0
    after = process.cpu_sample()
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_seconds = (child.ru_utime - children.ru_utime) + (child.ru_stime - children.ru_stime)
    others_seconds = process.cores_used_by_others(before, after) * (after[0] - before[0])
    assert others_seconds >= 0.8 * child_seconds > 0.4  # everything else on the machine only adds to it
    ticks = os.sysconf("SC_CLK_TCK")
    assert abs((after[2] - before[2]) / ticks - own) < 0.5  # this process's ticks: its own time


def test_setting_threads_reaches_openmp():
    gomp = ctypes.CDLL("libgomp.so.1")
    before = gomp.omp_get_max_threads()
    try:
        process.set_cpu_threads(1)
        assert gomp.omp_get_max_threads() == 1
    finally:
        process.set_cpu_threads(before)
    assert mx.nd.ones((4, 4)).sum().asscalar() == 16


@pytest.mark.parametrize("contexts,workers,user,expected", [
    ([mx.cpu()], 1, False, True), ([mx.cpu(0), mx.cpu(1)], 1, False, False), ([mx.gpu(0)], 1, False, False),
    ([mx.cpu()], 2, False, False), ([mx.cpu()], 1, True, False)])
def test_only_one_device_cpu_runs_adapt(monkeypatch, contexts, workers, user, expected):
    monkeypatch.setattr(cpu_share, "threads_chosen_by_user", lambda: user)
    devices = types.SimpleNamespace(contexts=contexts, num_workers=workers, horovod=None)
    assert cpu_share.shares_cpu(devices) is expected
