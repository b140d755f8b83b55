"""The threaded training loader: the same batches whatever the thread count, sharding, errors, clean stops."""
import gc
import os
import threading

import numpy as np
import pytest

from datasets import DataError, FaceRecordDataset, ShardedBatchSampler, build_train_loader, to_input
from datasets import loader as loader_module
from datasets import records
from test_datasets_records import write_ms1mv2


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """60 images of 7 identities (MS1MV2 layout): ``(rec_path, images, labels)``."""
    folder = str(tmp_path_factory.mktemp("faces"))
    images, labels = write_ms1mv2(folder, [9, 8, 9, 8, 9, 8, 9], seed=4)
    return os.path.join(folder, "train.rec"), images, labels


def _epoch(rec, workers, epoch=0, batch_size=12, **kwargs):
    loader, _ = build_train_loader(rec, batch_size, num_workers=workers, seed=kwargs.pop("seed", 7), **kwargs)
    loader.batch_sampler.set_epoch(epoch)
    return [(d.asnumpy(), l.asnumpy()) for d, l in loader]  # every batch held until the end


def _loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("seesawface-loader")]


@pytest.mark.parametrize("mirror,jitter", [(False, 0.0), (True, 0.0), (True, 0.4)])
def test_batches_identical_for_any_worker_count(faces, monkeypatch, mirror, jitter):
    rec = faces[0]
    monkeypatch.setattr(loader_module, "CHUNK", 5)  # batches of 12 in pieces of 5, 5, 2 over the threads
    reference = _epoch(rec, 0, epoch=3, mirror=mirror, color_jitter=jitter)
    assert len(reference) == 5
    for workers in (1, 2, 3):
        batches = _epoch(rec, workers, epoch=3, mirror=mirror, color_jitter=jitter)
        assert len(batches) == len(reference)
        for (d, l), (rd, rl) in zip(batches, reference):
            assert d.tobytes() == rd.tobytes() and l.tobytes() == rl.tobytes()
    other_epoch = _epoch(rec, 2, epoch=4, mirror=mirror, color_jitter=jitter)
    assert other_epoch[0][1].tobytes() != reference[0][1].tobytes()  # another epoch, another shuffle


def test_batches_hold_the_samplers_items_in_order(faces):
    rec, images, labels = faces
    loader, _ = build_train_loader(rec, 12, num_workers=2, mirror=False, seed=1)
    expected = list(ShardedBatchSampler(len(labels), 12, seed=1))
    for (data, label), indices in zip(loader, expected):
        np.testing.assert_array_equal(label.asnumpy(), labels[indices])
        np.testing.assert_array_equal(data.asnumpy(), to_input(images[indices]))


def test_mirror_and_jitter_follow_the_plan(faces):
    rec, images, _ = faces
    batches = _epoch(rec, 2, mirror=True, shuffle=False)
    flips = np.concatenate([[np.array_equal(x, to_input(images[12 * k + i])[0][:, :, ::-1]) for i, x in enumerate(d)]
                            for k, (d, _) in enumerate(batches)])
    plain = np.concatenate([[np.array_equal(x, to_input(images[12 * k + i])[0]) for i, x in enumerate(d)]
                            for k, (d, _) in enumerate(batches)])
    assert (flips | plain).all() and 0 < flips.sum() < len(flips)
    jittered = _epoch(rec, 2, mirror=False, color_jitter=0.4, shuffle=False)
    d = np.concatenate([b for b, _ in jittered])
    ref = to_input(images[:len(d)])
    assert np.array_equal(d, np.floor(d)) and d.min() >= 0 and d.max() <= 255  # as if stored as uint8 again
    assert not np.array_equal(d, ref) and np.corrcoef(d.ravel(), ref.ravel())[0, 1] > 0.5
    reseeded = _epoch(rec, 1, mirror=False, color_jitter=0.4, shuffle=False, seed=8)
    assert not np.array_equal(np.concatenate([b for b, _ in reseeded]), d)  # the jitter follows the seed


def test_rank_shards_are_disjoint_and_as_the_sampler(faces):
    rec, _, labels = faces
    seen = []
    for rank in range(3):
        loader, _ = build_train_loader(rec, 4, num_workers=2, rank=rank, num_parts=3, mirror=False, seed=5)
        shard = [l.asnumpy() for _, l in loader]
        indices = np.concatenate(list(ShardedBatchSampler(len(labels), 4, rank=rank, num_parts=3, seed=5)))
        np.testing.assert_array_equal(np.concatenate(shard), labels[indices])
        seen.append(indices)
    assert len(np.unique(np.concatenate(seen))) == sum(len(s) for s in seen) == 60


@pytest.mark.parametrize("array_labels", [False, True])
def test_fallback_read_path_gives_the_same_pixels(tmp_path, monkeypatch, array_labels):
    """Records too long for one read go through RecordReader.read (also the path of multi-part records)."""
    images, labels = write_ms1mv2(str(tmp_path), [3, 2, 3], array_labels=array_labels)
    monkeypatch.setattr(records, "MAX_SINGLE_READ", 64)
    ds = FaceRecordDataset(str(tmp_path / "train.rec"))
    assert ds._span.max() == 64
    for i in range(len(ds)):
        image, label = ds.read_image(i)
        np.testing.assert_array_equal(image, images[i])
        assert label == labels[i]


def test_undecodable_record_is_skipped_by_the_threads(tmp_path, caplog):
    images, labels = write_ms1mv2(str(tmp_path), [4, 4])
    loader, ds = build_train_loader(str(tmp_path / "train.rec"), 4, num_workers=2, shuffle=False, mirror=False)
    with open(tmp_path / "train.rec", "r+b") as f:  # item 5's payload (a PNG) no longer decodes
        f.seek(int(ds._pos[5]) + 8 + 24)
        f.write(b"garbage!")
    with caplog.at_level("WARNING", logger="seesawface.datasets"):
        batches = [(d.asnumpy(), l.asnumpy()) for d, l in loader]
    np.testing.assert_array_equal(batches[1][0][1], to_input(images[6])[0])  # the next record stands in
    assert batches[1][1].tolist() == [1, 1, 1, 1] and ds.num_skipped == 1
    assert "record 6" in caplog.text and "not a decodable image" in caplog.text


@pytest.mark.parametrize("workers", [0, 2])
def test_damage_found_by_a_worker_is_a_data_error(tmp_path, workers):
    write_ms1mv2(str(tmp_path), [8, 8, 8])
    loader, ds = build_train_loader(str(tmp_path / "train.rec"), 4, num_workers=workers, shuffle=False)
    with open(tmp_path / "train.rec", "r+b") as f:  # damage record 10 after the loader was built
        f.seek(int(ds._pos[9]))
        f.write(b"\0\0\0\0")
    with pytest.raises(DataError, match=r"train\.rec: record 10 at byte \d+ does not start with the RecordIO magic"):
        for _ in loader:
            pass
    assert not _loader_threads()


def test_abandoned_iteration_stops_threads_and_closes_files(faces):
    rec = faces[0]
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    loader, _ = build_train_loader(rec, 4, num_workers=3)
    for step, _ in enumerate(loader):
        if step == 2:
            assert _loader_threads()
            break
    assert not _loader_threads()
    it = iter(loader)
    next(it)
    del it
    assert not _loader_threads()
    del loader
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_each_thread_reads_through_its_own_descriptor(faces, monkeypatch):
    rec = faces[0]
    loader, ds = build_train_loader(rec, 12, num_workers=3, mirror=False)
    monkeypatch.setattr(loader_module, "CHUNK", 2)
    used, original = [], FaceRecordDataset.read_bgr

    def spy(self, i, reader=None):
        used.append((threading.get_ident(), id(reader), reader._handle()))
        return original(self, i, reader)

    monkeypatch.setattr(FaceRecordDataset, "read_bgr", spy)
    for _ in loader:
        pass
    threads = {t for t, _, _ in used}
    readers = {t: {(r, fd) for u, r, fd in used if u == t} for t in threads}
    assert threading.get_ident() not in threads and len(threads) > 1
    assert all(len(r) == 1 for r in readers.values())  # one reader per thread, kept for the epoch
    pairs = [next(iter(r)) for r in readers.values()]
    assert len({r for r, _ in pairs}) == len({fd for _, fd in pairs}) == len(threads)
    assert id(ds.reader) not in {r for r, _ in pairs}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_continues_with_the_same_batches(faces, workers):
    rec = faces[0]
    whole = _epoch(rec, 1, epoch=2, mirror=True, color_jitter=0.3)
    loader, _ = build_train_loader(rec, 12, num_workers=workers, seed=7, mirror=True, color_jitter=0.3)
    loader.batch_sampler.set_epoch(2)
    tail = [(d.asnumpy(), l.asnumpy()) for d, l in loader.iterate(3)]
    assert len(tail) == len(whole) - 3
    for (d, l), (rd, rl) in zip(tail, whole[3:]):
        assert d.tobytes() == rd.tobytes() and l.tobytes() == rl.tobytes()


def test_staged_write_equals_the_per_image_write(faces):
    from datasets.transforms import BatchAugment
    images = faces[1][:10, :, :, ::-1].copy()  # as OpenCV decodes them (BGR)
    augment = BatchAugment(mirror=True, color_jitter=0.3, seed=3)
    plan = augment.plan(12, 0, 0, 5)
    assert 0 < plan[0][2:].sum() < 10
    one = np.empty((10, 3, 112, 112), np.float32)
    for j, image in enumerate(images):
        augment.write(image, one[j], plan, j + 2)
    stage, staged = np.empty((10, 112, 112, 3), np.uint8), np.empty_like(one)
    for j, image in enumerate(images):
        augment.stage(image, stage[j], plan, j + 2)
    augment.write_staged(stage, staged, plan, 2)
    assert staged.tobytes() == one.tobytes()
