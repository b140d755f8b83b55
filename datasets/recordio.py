"""Indexed RecordIO (docs/formats.md): a fork-safe reader, the MS1MV2-layout writer and the ``property`` file.

The reader is plain Python over ``os.pread`` so that every worker process opens its own file descriptor
lazily (handles are reopened when the process id changes) and every malformed byte gives an error naming
the file. It understands dmlc's multi-part records (a payload that contains the magic number at an aligned
offset is split by the writer). Writing goes through MXNet's own ``mx.recordio.MXIndexedRecordIO``.
"""
import copy
import mmap
import os
import struct

import numpy as np

from .errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)


def read_index(idx_path, rec_path=None):
    """Parse an ``.idx`` file (``key<TAB>offset`` lines) into ``(keys int64 (M,), offsets int64 (M,))``."""
    if not os.path.isfile(idx_path):
        hint = f" (index of {rec_path}; rebuild it with tools/pack_rec.py)" if rec_path else ""
        raise DataError(f"{idx_path}: index file not found{hint}")
    keys, offsets = [], []
    with open(idx_path, "r") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("\t")
            try:
                if len(parts) != 2:
                    raise ValueError
                keys.append(int(parts[0]))
                offsets.append(int(parts[1]))
            except ValueError:
                raise DataError(f"{idx_path}: line {lineno} is not 'key<TAB>offset': {line[:60]!r}") from None
    if not keys:
        raise DataError(f"{idx_path}: index file is empty")
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def unpack_header(record, where="record"):
    """Split a record payload into ``(flag, label, id, id2, body)``; ``label`` is a float or float32 array.

    Same layout as ``mx.recordio.unpack``: an ``IRHeader`` (``<IfQQ``), then ``flag`` float32 labels when
    ``flag > 0``, then the body.
    """
    if len(record) < _IR_SIZE:
        raise DataError(f"{where}: {len(record)} bytes, too short for a record header")
    flag, label, id1, id2 = struct.unpack_from(_IR_FORMAT, record, 0)
    start = _IR_SIZE
    if flag > 0:
        end = start + 4 * flag
        if end > len(record):
            raise DataError(f"{where}: header announces {flag} labels but the record holds {len(record)} bytes")
        label = np.frombuffer(record, dtype=np.float32, count=flag, offset=start)
        start = end
    return flag, label, id1, id2, record[start:]


class RecordReader:
    """Random access to the raw records of an indexed ``.rec`` file; safe across ``fork``.

    ``reader.read(key)`` returns the record bytes (header included). The file descriptor is opened on first
    use in each process and reopened after a fork.
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = os.fspath(idx_path) if idx_path else os.path.splitext(self.rec_path)[0] + ".idx"
        if not os.path.isfile(self.rec_path):
            raise DataError(f"{self.rec_path}: record file not found")
        keys, offsets = read_index(self.idx_path, self.rec_path)
        self.file_size = os.path.getsize(self.rec_path)
        bad = offsets[(offsets < 0) | (offsets + 8 > self.file_size)]
        if bad.size:
            raise DataError(f"{self.rec_path}: truncated or wrong index: {bad.size} offsets in {self.idx_path} "
                            f"point past the end of the file ({self.file_size} bytes), e.g. {int(bad[0])}")
        self.keys = keys
        self.offsets = offsets
        self._offset = dict(zip(keys.tolist(), offsets.tolist()))
        self._fd = None
        self._pid = None
        self._map = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"], state["_pid"], state["_map"] = None, None, None
        return state

    def _handle(self):
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._pid = pid
            self._map = None  # a mapping inherited over fork belongs to the parent's descriptor
        return self._fd

    def mapping(self):
        """The file mapped read-only through this reader's descriptor: records are sliced from it without a read
        call (so without releasing and re-taking the GIL for each)."""
        fd = self._handle()
        if self._map is None:
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        return self._map

    def clone(self):
        """A reader of the same file and index with its own descriptor (opened on first read), e.g. one per thread."""
        other = copy.copy(self)
        other._fd, other._pid, other._map = None, None, None
        return other

    def close(self):
        """Close this process's descriptor (reopened on the next read)."""
        if self._map is not None and self._pid == os.getpid():
            try:
                self._map.close()
            except BufferError:  # an array still views it: the mapping goes when that array does
                pass
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid, self._map = None, None, None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __contains__(self, key):
        return key in self._offset

    def read(self, key):
        """Raw payload of record ``key``; :class:`DataError` for a missing key or a damaged record."""
        try:
            pos = self._offset[key]
        except KeyError:
            raise DataError(f"{self.rec_path}: key {key} is not in the index {self.idx_path}") from None
        fd = self._handle()
        parts = []
        while True:
            head = os.pread(fd, 8, pos)
            if len(head) < 8:
                raise DataError(f"{self.rec_path}: truncated file: record {key} at byte {pos} "
                                f"ends past the end of the file ({self.file_size} bytes)")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DataError(f"{self.rec_path}: record {key} at byte {pos} does not start with the RecordIO "
                                f"magic number (corrupt file or an index that does not belong to it)")
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            body = os.pread(fd, length, pos + 8)
            if len(body) < length:
                raise DataError(f"{self.rec_path}: truncated file: record {key} needs {length} bytes at byte "
                                f"{pos + 8}, only {len(body)} remain")
            parts.append(body)
            pos += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                break
            if cflag not in (1, 2):
                raise DataError(f"{self.rec_path}: record {key} has an invalid continuation flag {cflag}")
        return parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts)

    def read_header(self, key):
        """``(flag, label, id, id2)`` of record ``key`` (label as in :func:`unpack_header`)."""
        flag, label, id1, id2, _ = unpack_header(self.read(key), f"{self.rec_path}: record {key}")
        return flag, label, id1, id2


def read_property(data_dir):
    """Read ``property`` from a folder or a path: ``(num_classes, height, width)`` from its first line
    ``num_classes,height,width``. Later lines (InsightFace's packers add the image count, "shuffled", a date)
    are ignored."""
    path = os.path.join(data_dir, "property") if os.path.isdir(data_dir) else os.fspath(data_dir)
    if not os.path.isfile(path):
        raise DataError(f"{path}: property file not found")
    with open(path) as f:
        lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    try:
        values = tuple(int(v) for v in first.split(","))
        if len(values) != 3 or min(values) <= 0:
            raise ValueError
    except ValueError:
        raise DataError(f"{path}: expected a first line 'num_classes,112,112', got {first[:60]!r}") from None
    return values


def write_property(data_dir, num_classes, height=112, width=112):
    """Write ``data_dir/property`` as ``num_classes,height,width``."""
    path = os.path.join(data_dir, "property")
    with open(path, "w") as f:
        f.write(f"{int(num_classes)},{int(height)},{int(width)}\n")
    return path


class MS1MV2Writer:
    """Write ``train.rec``/``train.idx`` in the MS1MV2 layout (docs/formats.md) with MXNet's RecordIO writer.

    Images must arrive grouped by identity with labels ``0..K-1`` in order. Record 0 is the header
    (label ``[N+1, N+1+K]``), images are keys ``1..N``, identity ``k`` is key ``N+1+k`` with label
    ``[start, end)``. ``close()`` writes the identity records and ``property``.
    """

    def __init__(self, out_dir, num_images, num_identities, prefix="train", image_size=112):
        import mxnet as mx
        self._mx = mx
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.rec_path = os.path.join(out_dir, prefix + ".rec")
        self.idx_path = os.path.join(out_dir, prefix + ".idx")
        self.num_images, self.num_identities = int(num_images), int(num_identities)
        self.image_size = image_size
        self._rec = mx.recordio.MXIndexedRecordIO(self.idx_path, self.rec_path, "w")
        header = mx.recordio.IRHeader(2, [self.num_images + 1, self.num_images + 1 + self.num_identities], 0, 0)
        self._rec.write_idx(0, mx.recordio.pack(header, b""))
        self._next_key = 1
        self._ranges = []

    def add(self, label, encoded):
        """Append one encoded image (bytes) of identity ``label``."""
        label = int(label)
        if self._ranges and label == self._ranges[-1][0]:
            self._ranges[-1][2] = self._next_key + 1
        elif label == len(self._ranges):
            self._ranges.append([label, self._next_key, self._next_key + 1])
        else:
            raise ValueError(f"images must be grouped by identity with labels 0,1,2,...; got label {label} after "
                             f"{len(self._ranges) - 1}")
        header = self._mx.recordio.IRHeader(0, float(label), self._next_key, 0)
        self._rec.write_idx(self._next_key, self._mx.recordio.pack(header, encoded))
        self._next_key += 1

    def close(self):
        """Write identity records and ``property``; checks the announced counts."""
        written = self._next_key - 1
        if written != self.num_images or len(self._ranges) != self.num_identities:
            self._rec.close()
            raise ValueError(f"{self.rec_path}: announced {self.num_images} images / {self.num_identities} "
                             f"identities, wrote {written} / {len(self._ranges)}")
        for label, start, end in self._ranges:
            key = self.num_images + 1 + label
            header = self._mx.recordio.IRHeader(2, [start, end], key, 0)
            self._rec.write_idx(key, self._mx.recordio.pack(header, b""))
        self._rec.close()
        write_property(self.out_dir, self.num_identities, self.image_size, self.image_size)
