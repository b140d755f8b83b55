"""CPU training on a shared machine: compute on the cores other processes leave free.

MXNet's kernels, oneDNN and the fused operators split every operator's work evenly over their OpenMP threads and
wait for the slowest; a thread that shares its core with another busy process makes every operator wait for it,
so two threads on two cores beside one CPU-bound process run far below half speed. :class:`CpuShare` measures,
every second, how many cores other (not niced) processes keep busy and computes on the rest (at least one
thread), going back to every core when they are free again. One-device CPU training only: there the operators
run in the training thread (MXNet's NaiveEngine), whose thread count this sets; and not when the user fixed the
thread count with ``OMP_NUM_THREADS``.
"""
import os
import time

from deploy.process import cores_used_by_others, cpu_sample, set_cpu_threads, threads_chosen_by_user

from .callbacks import Callback


class CpuShare(Callback):
    """Every ``interval`` seconds (checked at batch ends): threads = cores − cores busy with other processes,
    rounded with a margin of ``margin`` core, at least 1. Logs each change."""

    def __init__(self, cores=None, interval=1.0, margin=0.4):
        self.cores = int(cores or os.cpu_count() or 1)
        self.threads = self.cores
        self.interval, self.margin = float(interval), float(margin)
        self.last = None

    def on_train_begin(self, state):
        self.last = cpu_sample()

    def wanted(self, others):
        """Threads for ``others`` cores busy elsewhere."""
        return max(1, min(self.cores, self.cores - int(others + self.margin)))

    def on_batch_end(self, state, batch):
        if self.last is None:
            self.last = cpu_sample()
            return
        if time.monotonic() - self.last[0] < self.interval:  # /proc is read once an interval, not every batch
            return
        now = cpu_sample()
        others = cores_used_by_others(self.last, now)
        self.last = now
        threads = self.wanted(others)
        if threads != self.threads:
            set_cpu_threads(threads)
            self.threads = threads
            state.log(f"cpu: other processes keep {others:.1f} core(s) busy; computing on {threads} thread(s)")


def shares_cpu(devices):
    """Whether a run adapts its CPU threads: one CPU device, one process, threads not fixed by the user."""
    contexts = devices.contexts
    return (len(contexts) == 1 and contexts[0].device_type == "cpu" and devices.num_workers == 1
            and devices.horovod is None and not threads_chosen_by_user())
