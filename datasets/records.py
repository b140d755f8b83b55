"""Training records (docs/formats.md): a Gluon ``Dataset`` over indexed RecordIO and the training loader builder.

Both layouts are read: the MS1MV2 layout (record 0 has ``flag > 0`` and label ``[N+1, N+1+K]``, identity
records give each identity's key range) and the flat im2rec layout (every key an image). Labels may be a
float or a float array (its first element is the class). A ``property`` file next to the records is
checked against the labels found.
"""
import logging
import math
import os
import struct
import threading
import warnings

import cv2
import numpy as np
from mxnet import gluon

from .errors import DataError
from .loader import TrainLoader
from .recordio import MAGIC, RecordReader, read_property, unpack_header
from .transforms import BatchAugment
from .verification_bin import IMAGE_SIZE

logger = logging.getLogger("seesawface.datasets")

MAX_CONSECUTIVE_SKIPS = 16
MAX_SINGLE_READ = 1 << 20  # larger records (and multi-part ones) go through RecordReader.read
_HEAD = struct.Struct("<IIIf")  # RecordIO magic, length word, then IRHeader flag and label


def _class_of(label, where):
    value = float(label[0]) if isinstance(label, np.ndarray) else float(label)
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise DataError(f"{where}: label {value} is not a non-negative integer class")
    return int(value)


class FaceRecordDataset(gluon.data.Dataset):
    """Face images of an indexed RecordIO file (either layout of docs/formats.md).

    ``dataset[i]`` -> ``(float32 (3, 112, 112) RGB 0–255, int label)`` with optional random mirror and
    colour jitter; ``dataset.read_image(i)`` -> ``(uint8 (112, 112, 3) RGB, int label)`` without augmentation;
    ``dataset.read_bgr(i, reader)`` is the loader's path (OpenCV's BGR, through a reader of the calling thread).
    Attributes: ``num_classes``, ``labels`` (int32 per item), ``layout`` ('ms1mv2' or 'flat'),
    ``num_skipped`` (corrupt records skipped so far). The RecordIO file is opened lazily in each process
    (:meth:`open_reader` gives a thread its own descriptor). Records of another size are resized (with one
    warning per process).
    """

    def __init__(self, rec_path, idx_path=None, mirror=False, color_jitter=0.0, property_path=None):
        self.rec_path = os.fspath(rec_path)
        self.reader = RecordReader(self.rec_path, idx_path)
        self.mirror = mirror
        self.color_jitter = color_jitter
        self._augment = BatchAugment(mirror=mirror, color_jitter=color_jitter, seed=None)
        self._skipped = 0
        self._skip_lock = threading.Lock()
        self._warned_resize = None
        self._check_tail()
        if 0 in self.reader:
            flag, label, _, _, body = unpack_header(self.reader.read(0), f"{self.rec_path}: record 0")
        else:
            flag, label, body = 0, None, b""
        if flag > 0 and len(body) == 0 and isinstance(label, np.ndarray) and len(label) >= 2:
            self.layout = "ms1mv2"
            self._init_ms1mv2(label)
        else:
            self.layout = "flat"
            self._init_flat()
        if len(self.keys) == 0:
            raise DataError(f"{self.rec_path}: holds no image records")
        self._locate()
        self._check_property(property_path)

    # ---------------------------------------------------------------- structure
    def _check_tail(self):
        """Detect a truncated file at open time: the record with the highest offset must be complete."""
        last = int(self.reader.keys[np.argmax(self.reader.offsets)])
        self.reader.read(last)

    def _init_ms1mv2(self, header_label):
        rec = self.rec_path
        first_id, end_id = int(header_label[0]), int(header_label[1])
        num_images, num_ids = first_id - 1, end_id - first_id
        if num_images <= 0 or num_ids <= 0:
            raise DataError(f"{rec}: MS1MV2 header record announces {num_images} images and {num_ids} identities")
        missing = [k for k in (1, num_images, first_id, end_id - 1) if k not in self.reader]
        if missing:
            raise DataError(f"{rec}: MS1MV2 header announces keys 1..{end_id - 1} but key {missing[0]} is not in "
                            f"{self.reader.idx_path}")
        keys, labels = [], []
        for identity in range(num_ids):
            key = first_id + identity
            flag, label, _, _ = self.reader.read_header(key)
            if flag < 2:
                raise DataError(f"{rec}: identity record {key} has no [start, end) label")
            start, end = int(label[0]), int(label[1])
            if not 1 <= start < end <= num_images + 1:
                raise DataError(f"{rec}: identity record {key} has range [{start}, {end}) outside images "
                                f"1..{num_images}")
            _, first_label, _, _ = self.reader.read_header(start)
            found = _class_of(first_label, f"{rec}: record {start}")
            if found != identity:
                raise DataError(f"{rec}: image {start} (first of identity record {key}) has label {found}, "
                                f"expected {identity}")
            keys.append(np.arange(start, end, dtype=np.int64))
            labels.append(np.full(end - start, identity, dtype=np.int32))
        self.keys = np.concatenate(keys)
        self.labels = np.concatenate(labels)
        self.num_classes = num_ids

    def _init_flat(self):
        keys = np.sort(self.reader.keys)
        labels = np.empty(len(keys), dtype=np.int32)
        fd = self.reader._handle()
        for i, key in enumerate(keys.tolist()):
            pos = self.reader._offset[key]
            head = os.pread(fd, 8 + 28, pos)
            if len(head) < 8 + 24:
                raise DataError(f"{self.rec_path}: truncated file: record {key} header at byte {pos}")
            magic, lrec, flag, label = struct.unpack_from("<IIIf", head, 0)
            if magic != 0xCED7230A:
                raise DataError(f"{self.rec_path}: record {key} at byte {pos} does not start with the RecordIO "
                                "magic number")
            if flag > 0:
                if (lrec >> 29) != 0 or len(head) < 36:
                    label = self.reader.read_header(key)[1]
                else:
                    label = struct.unpack_from("<f", head, 32)[0]
            labels[i] = _class_of(label, f"{self.rec_path}: record {key}")
        self.keys = keys
        self.labels = labels
        self.num_classes = int(labels.max()) + 1

    def _locate(self):
        """Byte position of every item and how far the next record starts, so one ``pread`` fetches a record."""
        keys, offsets = self.reader.keys, self.reader.offsets
        order = np.argsort(keys, kind="stable")
        last = np.searchsorted(keys[order], self.keys, side="right") - 1  # a repeated key: its last line wins
        self._pos = offsets[order[last]]
        bounds = np.unique(np.append(offsets, self.reader.file_size))
        following = bounds[np.minimum(np.searchsorted(bounds, self._pos, side="right"), len(bounds) - 1)]
        self._span = np.minimum(following - self._pos, MAX_SINGLE_READ)

    def _check_property(self, property_path):
        path = property_path or os.path.join(os.path.dirname(os.path.abspath(self.rec_path)), "property")
        if not os.path.isfile(path):
            return
        num_classes, height, width = read_property(path)
        if num_classes != self.num_classes:
            raise DataError(f"{path}: property says {num_classes} classes but {self.rec_path} holds "
                            f"{self.num_classes} ({self.layout} layout); fix or delete the property file")
        if (height, width) != (IMAGE_SIZE, IMAGE_SIZE):
            warnings.warn(f"{path}: images are {height}x{width}; they will be resized to "
                          f"{IMAGE_SIZE}x{IMAGE_SIZE}", stacklevel=3)

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_skip_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._skip_lock = threading.Lock()

    # ---------------------------------------------------------------- access
    def __len__(self):
        return len(self.keys)

    @property
    def num_skipped(self):
        """Number of corrupt records skipped so far (by any thread)."""
        return self._skipped

    def open_reader(self):
        """A :class:`RecordReader` of this file with its own descriptor (opened on first read): one per thread."""
        return self.reader.clone()

    def _record(self, i, reader):
        """``(label, body uint8 array)`` of item ``i``, sliced from the reader's mapping of the file; multi-part or
        damaged records go through :meth:`RecordReader.read` (which names what is wrong)."""
        pos, span = int(self._pos[i]), int(self._span[i])
        if span >= _HEAD.size:
            buf = reader.mapping()
            magic, lrec, flag, label = _HEAD.unpack_from(buf, pos)
            end = 8 + (lrec & ((1 << 29) - 1))
            start = 32 + 4 * flag
            if magic == MAGIC and lrec >> 29 == 0 and end <= span and start <= end:
                if flag > 0:
                    label = struct.unpack_from("<f", buf, pos + 32)[0]
                return label, np.frombuffer(buf, np.uint8, end - start, pos + start)
        key = int(self.keys[i])
        flag, label, _, _, body = unpack_header(reader.read(key), f"{self.rec_path}: record {key}")
        return (float(label[0]) if flag > 0 else label), np.frombuffer(body, np.uint8)

    def _decode(self, i, reader):
        label, body = self._record(i, reader)
        expected = int(self.labels[i])
        if label != expected:
            where = f"{self.rec_path}: record {int(self.keys[i])}"
            raise DataError(f"{where}: label {_class_of(label, where)} disagrees with its identity record "
                            f"({expected})")
        image = cv2.imdecode(body, cv2.IMREAD_COLOR) if body.size else None
        if image is None:
            raise DataError(f"{self.rec_path}: record {int(self.keys[i])}: not a decodable image ({body.size} bytes)")
        if image.shape[0] != IMAGE_SIZE or image.shape[1] != IMAGE_SIZE:
            image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
            if self._warned_resize != os.getpid():
                self._warned_resize = os.getpid()
                warnings.warn(f"{self.rec_path}: records are not {IMAGE_SIZE}x{IMAGE_SIZE}; resizing them")
        return image, expected

    def read_bgr(self, i, reader=None):
        """``(uint8 (112, 112, 3) BGR, int label)`` of item ``i`` as OpenCV decodes it, read through ``reader``
        (default: this dataset's own).

        A record whose payload is not a decodable image is skipped (counted in ``num_skipped``, logged) and
        the next item is returned instead; structural damage (truncation, bad magic) raises :class:`DataError`.
        """
        reader = self.reader if reader is None else reader
        n = len(self.keys)
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            j = (i + attempt) % n
            try:
                return self._decode(j, reader)
            except DataError as err:
                if "not a decodable image" not in str(err):
                    raise
                with self._skip_lock:
                    self._skipped += 1
                    skipped = self._skipped
                logger.warning("skipping corrupt training record (%d skipped so far): %s", skipped, err)
        raise DataError(f"{self.rec_path}: {MAX_CONSECUTIVE_SKIPS} consecutive records from item {i} are not "
                        "decodable images; the file looks corrupt")

    def read_image(self, i):
        """``(uint8 (112, 112, 3) RGB, int label)`` of item ``i`` (corrupt records skipped as in :meth:`read_bgr`)."""
        image, label = self.read_bgr(i)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), label

    def __getitem__(self, i):
        image, label = self.read_bgr(i)
        data = np.empty((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        self._augment.write(image, data, self._augment.plan(1, rng=np.random.default_rng()), 0)
        return data, label


class ShardedBatchSampler(gluon.data.Sampler):
    """Batches of indices for one rank: a disjoint ``1/num_parts`` slice of a per-epoch seeded shuffle.

    Every rank gets ``floor(length / num_parts)`` indices and so the same number of batches. ``last_batch``:
    'discard' drops a short final batch, 'keep' keeps it. The epoch advances on each iteration (or use
    :meth:`set_epoch`); the permutation depends only on ``(seed, epoch)``, so ranks agree without talking.
    """

    def __init__(self, length, batch_size, shuffle=True, last_batch="discard", rank=0, num_parts=1, seed=0):
        if not 0 <= rank < num_parts:
            raise ValueError(f"rank {rank} is outside 0..{num_parts - 1}")
        if last_batch not in ("discard", "keep"):
            raise ValueError(f"last_batch must be 'discard' or 'keep', got {last_batch!r}")
        self.length, self.batch_size = int(length), int(batch_size)
        self.shuffle, self.last_batch = shuffle, last_batch
        self.rank, self.num_parts, self.seed = rank, num_parts, seed
        self.per_rank = self.length // num_parts
        if self.per_rank == 0 or (last_batch == "discard" and self.per_rank < self.batch_size):
            raise ValueError(f"{self.length} items split over {num_parts} parts leave {self.per_rank} per part, "
                             f"fewer than one batch of {self.batch_size}")
        self.epoch = 0

    def set_epoch(self, epoch):
        """Use the shuffle of ``epoch`` on the next iteration."""
        self.epoch = int(epoch)

    def indices(self, epoch):
        """This rank's item indices for ``epoch``."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        return order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def __iter__(self):
        idx = self.indices(self.epoch)
        self.epoch += 1
        for start in range(0, len(self), 1):
            yield idx[start * self.batch_size:(start + 1) * self.batch_size].tolist()

    def __len__(self):
        if self.last_batch == "discard":
            return self.per_rank // self.batch_size
        return (self.per_rank + self.batch_size - 1) // self.batch_size


def build_train_loader(rec_path, batch_size, num_workers=2, shuffle=True, last_batch="discard", rank=0,
                       num_parts=1, mirror=True, color_jitter=0.0, seed=0, idx_path=None, prefetch=2):
    """Training loader over ``rec_path``; returns ``(loader, dataset)``.

    Batches are ``(data float32 (B, 3, 112, 112) RGB 0–255, label float32 (B,))`` NDArrays on ``mx.cpu()``.
    Decoding runs in ``num_workers`` threads (0 = in the calling thread), ``prefetch`` batches ahead
    (:class:`datasets.loader.TrainLoader`); a batch is the same for a seed whatever ``num_workers``, its mirror
    and jitter drawn from ``(seed, epoch, rank, batch index)``. With ``num_parts > 1`` this rank reads a
    disjoint shard (see :class:`ShardedBatchSampler`); ``loader.batch_sampler.set_epoch(e)`` selects an
    epoch's shuffle (e.g. when resuming).
    """
    dataset = FaceRecordDataset(rec_path, idx_path=idx_path, mirror=mirror, color_jitter=color_jitter)
    sampler = ShardedBatchSampler(len(dataset), batch_size, shuffle=shuffle, last_batch=last_batch, rank=rank,
                                  num_parts=num_parts, seed=seed)
    augment = BatchAugment(mirror=mirror, color_jitter=color_jitter, seed=seed)
    loader = TrainLoader(dataset, sampler, augment, num_workers=num_workers, prefetch=prefetch)
    return loader, dataset
