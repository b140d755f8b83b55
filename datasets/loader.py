"""The training loader: threads decode each batch into a reused float32 array, handed to MXNet uncopied.

OpenCV's decode and flip, and one numpy cast per chunk of images (a per-image copy is too short to gain from
releasing the GIL), run without the GIL, so decoding threads run in parallel while the training process keeps
each batch where it was written (no pickling, no copy between processes). What a batch holds depends only on
the sampler's index list and the augmentation plan of (seed, epoch, rank, batch index), never on which thread
wrote which image.
"""
import collections
import itertools
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .verification_bin import IMAGE_SIZE

CHUNK = 32  # images per task: ~4 ms of decoding against ~20 microseconds of task overhead


class _BufferPool:
    """Batch arrays handed out as views and taken back once MXNet lets go of them, so batch memory is written
    again where it already is instead of faulting in fresh pages for every batch."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self._free = collections.deque()

    def get(self, n):
        """A float32 ``(n, *shape[1:])`` view of a free buffer; its buffer returns to the pool when it dies."""
        try:
            base = self._free.pop()
        except IndexError:
            base = np.empty(self.shape, dtype=np.float32)
        view = base[:n]
        weakref.finalize(view, self._free.append, base).atexit = False
        return view


class _Batch:
    """One batch on its way: the array being filled, its labels, and how many of its chunks are still to come
    (``done`` is set by the last one, so the consumer wakes once per batch, not once per chunk)."""

    __slots__ = ("data", "labels", "left", "errors", "done", "lock")

    def __init__(self, data, labels, chunks=0):
        self.data, self.labels, self.left, self.errors = data, labels, chunks, {}
        self.done, self.lock = threading.Event(), threading.Lock()
        if chunks == 0:
            self.done.set()

    def finish(self, lo, error=None):
        """Chunk starting at row ``lo`` is written (or failed with ``error``)."""
        with self.lock:
            if error is not None:
                self.errors[lo] = error
            self.left -= 1
            if self.left == 0:
                self.done.set()


class TrainLoader:
    """Iterates ``(data, label)`` NDArrays on ``mx.cpu()``: data float32 ``(B, 3, 112, 112)`` RGB 0–255, label
    float32 ``(B,)``, batches in the order of ``batch_sampler``.

    ``num_workers`` threads decode ``CHUNK``-image pieces of up to ``prefetch + 1`` batches at a time, each
    thread through its own RecordIO descriptor; ``num_workers=0`` decodes in the calling thread on demand.
    Errors of a thread (:class:`DataError`) are raised by the iteration; leaving an iteration early (``break``,
    an exception) cancels what is queued and joins the threads. ``loader.batch_sampler`` is the sampler
    (``set_epoch``, ``len``); :meth:`iterate` starts an epoch part-way (a resumed run).
    """

    def __init__(self, dataset, batch_sampler, augment, num_workers=1, prefetch=2):
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        self.dataset, self.batch_sampler, self.augment = dataset, batch_sampler, augment
        self.num_workers, self.prefetch = int(num_workers), max(0, int(prefetch))
        self._buffers = _BufferPool((batch_sampler.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE))

    def __len__(self):
        return len(self.batch_sampler)

    def _fill(self, batch, indices, plan, lo, hi, reader, stage):
        """Decode items ``indices[lo:hi]`` into rows ``lo:hi`` of ``batch`` through ``stage`` (uint8, at least
        ``hi - lo`` images): short OpenCV copies per image, then one cast for all, long enough to run in
        parallel without the GIL."""
        labels = batch.labels
        for j in range(lo, hi):
            image, labels[j] = self.dataset.read_bgr(indices[j], reader)
            self.augment.stage(image, stage[j - lo], plan, j)
        self.augment.write_staged(stage[:hi - lo], batch.data[lo:hi], plan, lo)

    @staticmethod
    def _stage(n):
        return np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)

    def _start(self, epoch, rank, k, indices, chunks=0):
        n = len(indices)
        batch = _Batch(self._buffers.get(n), np.empty(n, dtype=np.float32), chunks)
        return batch, self.augment.plan(n, epoch, rank, k)

    @staticmethod
    def _hand_over(batch):
        import mxnet as mx

        batch.done.wait()
        if batch.errors:
            raise batch.errors[min(batch.errors)]  # the first failing chunk's error, whatever the timing
        return mx.nd.from_numpy(batch.data, zero_copy=True), mx.nd.from_numpy(batch.labels, zero_copy=True)

    def __iter__(self):
        return self.iterate()

    def iterate(self, start_batch=0):
        """The sampler's batches from index ``start_batch`` on, exactly as in a whole epoch (same items, same
        augmentation); the batches before it are not decoded."""
        sampler = self.batch_sampler
        epoch, rank = getattr(sampler, "epoch", 0), getattr(sampler, "rank", 0)
        batches = itertools.islice(enumerate(iter(sampler)), int(start_batch), None)
        if self.num_workers == 0:
            yield from self._inline(batches, epoch, rank)
        else:
            yield from self._threaded(batches, epoch, rank)

    def _inline(self, batches, epoch, rank):
        stage = self._stage(self.batch_sampler.batch_size)
        for k, indices in batches:
            batch, plan = self._start(epoch, rank, k, indices)
            self._fill(batch, indices, plan, 0, len(indices), self.dataset.reader, stage)
            yield self._hand_over(batch)

    def _threaded(self, batches, epoch, rank):
        local = threading.local()  # per thread: a RecordReader (file descriptor, closed when its thread ends), a stage

        def task(batch, indices, plan, lo, hi):
            try:
                reader = getattr(local, "reader", None)
                if reader is None:
                    reader = local.reader = self.dataset.open_reader()
                    local.stage = self._stage(CHUNK)
                if len(local.stage) < hi - lo:
                    local.stage = self._stage(hi - lo)
                self._fill(batch, indices, plan, lo, hi, reader, local.stage)
            except BaseException as error:  # handed to the consumer by _hand_over
                batch.finish(lo, error)
            else:
                batch.finish(lo)

        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="seesawface-loader")
        pending = collections.deque()
        try:
            for k, indices in batches:
                starts = range(0, len(indices), CHUNK)
                batch, plan = self._start(epoch, rank, k, indices, len(starts))
                for lo in starts:
                    pool.submit(task, batch, indices, plan, lo, min(lo + CHUNK, len(indices)))
                pending.append(batch)
                if len(pending) > self.prefetch:
                    yield self._hand_over(pending.popleft())
            while pending:
                yield self._hand_over(pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
