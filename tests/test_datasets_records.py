"""Training records: both RecordIO layouts written with MXNet's own writer, read back pixel-exact; bad input."""
import os
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import datasets
from datasets import DataError, FaceRecordDataset, ShardedBatchSampler, build_train_loader, to_input
from datasets.recordio import RecordReader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(n, seed=0, size=112):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _png(rgb):
    ok, buf = cv2.imencode(".png", rgb[..., ::-1])
    return buf.tobytes()


def write_ms1mv2(folder, counts, seed=0, array_labels=False, size=112, property_classes=None):
    """MS1MV2 layout through mx.recordio (pack_img, PNG): returns (images, labels) in key order."""
    os.makedirs(folder, exist_ok=True)
    n = sum(counts)
    images = _images(n, seed, size)
    labels = np.repeat(np.arange(len(counts)), counts)
    rec = mx.recordio.MXIndexedRecordIO(os.path.join(folder, "train.idx"), os.path.join(folder, "train.rec"), "w")
    rec.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(2, [n + 1, n + 1 + len(counts)], 0, 0), b""))
    for i in range(n):
        label = [float(labels[i]), 7.0] if array_labels else float(labels[i])
        header = mx.recordio.IRHeader(0, label, i + 1, 0)
        rec.write_idx(i + 1, mx.recordio.pack_img(header, images[i][..., ::-1], quality=3, img_fmt=".png"))
    start = 1
    for k, c in enumerate(counts):
        rec.write_idx(n + 1 + k, mx.recordio.pack(mx.recordio.IRHeader(2, [start, start + c], n + 1 + k, 0), b""))
        start += c
    rec.close()
    with open(os.path.join(folder, "property"), "w") as f:
        f.write(f"{property_classes or len(counts)},112,112\n")
    return images, labels


def write_flat(folder, labels, seed=1, array_labels=False, first_key=0):
    """Flat (im2rec) layout: every key an image; returns images."""
    os.makedirs(folder, exist_ok=True)
    images = _images(len(labels), seed)
    rec = mx.recordio.MXIndexedRecordIO(os.path.join(folder, "data.idx"), os.path.join(folder, "data.rec"), "w")
    for i, label in enumerate(labels):
        lab = [float(label), 0.5, 2.0] if array_labels else float(label)
        header = mx.recordio.IRHeader(0, lab, i, 0)
        rec.write_idx(first_key + i, mx.recordio.pack_img(header, images[i][..., ::-1], img_fmt=".png"))
    rec.close()
    return images


@pytest.mark.parametrize("array_labels", [False, True])
def test_ms1mv2_layout_reads_every_label_and_pixel(tmp_path, array_labels):
    images, labels = write_ms1mv2(str(tmp_path), [3, 1, 4], array_labels=array_labels)
    ds = FaceRecordDataset(str(tmp_path / "train.rec"))
    assert ds.layout == "ms1mv2" and len(ds) == 8 and ds.num_classes == 3
    np.testing.assert_array_equal(ds.labels, labels)
    for i in range(len(ds)):
        img, label = ds.read_image(i)
        assert label == labels[i]
        np.testing.assert_array_equal(img, images[i])
        data, label2 = ds[i]
        assert data.dtype == np.float32 and data.shape == (3, 112, 112) and label2 == labels[i]
        np.testing.assert_array_equal(data, images[i].transpose(2, 0, 1))  # raw: the networks normalise


@pytest.mark.parametrize("array_labels,first_key", [(False, 0), (True, 0), (False, 1)])
def test_flat_layout_reads_every_label_and_pixel(tmp_path, array_labels, first_key):
    labels = [2, 0, 1, 1, 0, 2, 3]
    images = write_flat(str(tmp_path), labels, array_labels=array_labels, first_key=first_key)
    ds = FaceRecordDataset(str(tmp_path / "data.rec"))
    assert ds.layout == "flat" and len(ds) == len(labels) and ds.num_classes == 4
    for i in range(len(ds)):
        img, label = ds.read_image(i)
        assert label == labels[i]
        np.testing.assert_array_equal(img, images[i])


def test_multipart_record_with_magic_in_payload(tmp_path):
    magic = (0xCED7230A).to_bytes(4, "little")
    payload = b"abcd" + magic + b"efgh" + magic + magic + b"xyz"
    rec = mx.recordio.MXIndexedRecordIO(str(tmp_path / "r.idx"), str(tmp_path / "r.rec"), "w")
    rec.write_idx(0, payload)
    rec.write_idx(1, b"tail")
    rec.close()
    reader = RecordReader(str(tmp_path / "r.rec"))
    assert reader.read(0) == payload and reader.read(1) == b"tail"
    assert os.path.getsize(tmp_path / "r.rec") > len(payload) + 8  # the writer really split it


def test_other_sizes_are_resized_with_warning(tmp_path):
    write_ms1mv2(str(tmp_path), [2, 2], size=96)
    ds = FaceRecordDataset(str(tmp_path / "train.rec"))
    with pytest.warns(UserWarning, match="resizing"):
        img, _ = ds.read_image(0)
    assert img.shape == (112, 112, 3)


def test_missing_idx_names_file(tmp_path):
    write_ms1mv2(str(tmp_path), [2, 2])
    os.remove(tmp_path / "train.idx")
    with pytest.raises(DataError, match=r"train\.idx: index file not found"):
        FaceRecordDataset(str(tmp_path / "train.rec"))


def test_truncated_rec_names_file(tmp_path):
    write_ms1mv2(str(tmp_path), [2, 2])
    rec = tmp_path / "train.rec"
    data = rec.read_bytes()
    offsets = sorted(int(line.split("\t")[1]) for line in (tmp_path / "train.idx").read_text().split("\n") if line)
    rec.write_bytes(data[:offsets[-1] + 20])  # cut inside the last record
    with pytest.raises(DataError, match=r"train\.rec: truncated"):
        FaceRecordDataset(str(rec))
    rec.write_bytes(data[:len(data) // 2])  # index points past the end
    with pytest.raises(DataError, match=r"train\.rec: truncated"):
        FaceRecordDataset(str(rec))


def test_corrupt_record_is_skipped_and_counted(tmp_path, caplog):
    images, labels = write_ms1mv2(str(tmp_path / "a"), [3, 2])
    # rewrite with record 2 not an image
    folder = tmp_path / "b"
    os.makedirs(folder)
    rec = mx.recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "w")
    rec.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(2, [6, 8], 0, 0), b""))
    for i in range(5):
        body = b"this is not an image" if i == 1 else _png(images[i])
        rec.write_idx(i + 1, mx.recordio.pack(mx.recordio.IRHeader(0, float(labels[i]), i + 1, 0), body))
    rec.write_idx(6, mx.recordio.pack(mx.recordio.IRHeader(2, [1, 4], 6, 0), b""))
    rec.write_idx(7, mx.recordio.pack(mx.recordio.IRHeader(2, [4, 6], 7, 0), b""))
    rec.close()
    ds = FaceRecordDataset(str(folder / "train.rec"))
    with caplog.at_level("WARNING", logger="seesawface.datasets"):
        img, label = ds.read_image(1)
    np.testing.assert_array_equal(img, images[2])  # the next record stands in
    assert ds.num_skipped == 1
    assert "record 2" in caplog.text and "not a decodable image" in caplog.text


def test_all_records_corrupt_is_an_error(tmp_path):
    rec = mx.recordio.MXIndexedRecordIO(str(tmp_path / "d.idx"), str(tmp_path / "d.rec"), "w")
    for i in range(20):
        rec.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, 0.0, i, 0), b"garbage"))
    rec.close()
    ds = FaceRecordDataset(str(tmp_path / "d.rec"))
    with pytest.raises(DataError, match="consecutive records"):
        ds.read_image(0)


def test_property_disagreeing_with_labels(tmp_path):
    write_ms1mv2(str(tmp_path), [2, 2, 2], property_classes=5)
    with pytest.raises(DataError, match=r"property says 5 classes but .*train\.rec holds 3"):
        FaceRecordDataset(str(tmp_path / "train.rec"))
    (tmp_path / "property").write_text("banana\n")
    with pytest.raises(DataError, match="property"):
        FaceRecordDataset(str(tmp_path / "train.rec"))
    (tmp_path / "property").write_text("3,112,112\n")
    assert datasets.read_property(str(tmp_path)) == (3, 112, 112)
    assert FaceRecordDataset(str(tmp_path / "train.rec")).num_classes == 3


def test_identity_record_disagreeing_with_image_labels(tmp_path):
    folder = str(tmp_path)
    rec = mx.recordio.MXIndexedRecordIO(os.path.join(folder, "train.idx"), os.path.join(folder, "train.rec"), "w")
    rec.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(2, [3, 5], 0, 0), b""))
    img = _png(_images(1)[0])
    rec.write_idx(1, mx.recordio.pack(mx.recordio.IRHeader(0, 0.0, 1, 0), img))
    rec.write_idx(2, mx.recordio.pack(mx.recordio.IRHeader(0, 5.0, 2, 0), img))
    rec.write_idx(3, mx.recordio.pack(mx.recordio.IRHeader(2, [1, 2], 3, 0), b""))
    rec.write_idx(4, mx.recordio.pack(mx.recordio.IRHeader(2, [2, 3], 4, 0), b""))
    rec.close()
    with pytest.raises(DataError, match="has label 5, expected 1"):
        FaceRecordDataset(os.path.join(folder, "train.rec"))


def test_to_input_keeps_raw_values():
    """The data path only lays images out (NHWC uint8 → NCHW float32); the networks normalise their own input."""
    x = np.array([[[[0, 127, 255]]]], dtype=np.uint8)
    out = to_input(x)
    assert out.shape == (1, 3, 1, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out.ravel(), [0, 127, 255])
    assert not hasattr(datasets, "normalize")


def test_sharded_sampler_disjoint_equal_and_reshuffled():
    parts = [ShardedBatchSampler(103, 8, rank=r, num_parts=3, seed=5) for r in range(3)]
    lens = {len(p) for p in parts}
    assert lens == {34 // 8}
    epoch0 = [np.concatenate([np.array(b) for b in p]) for p in parts]
    assert len(set(np.concatenate(epoch0).tolist())) == sum(len(e) for e in epoch0)  # disjoint
    again = [np.concatenate([np.array(b) for b in p]) for p in parts]  # epoch 1
    assert not all((a == b).all() for a, b in zip(epoch0, again))
    parts[0].set_epoch(0)
    np.testing.assert_array_equal(np.concatenate([np.array(b) for b in parts[0]]), epoch0[0])
    keep = ShardedBatchSampler(10, 4, shuffle=False, last_batch="keep")
    assert [len(b) for b in keep] == [4, 4, 2]
    with pytest.raises(ValueError):
        ShardedBatchSampler(10, 4, rank=2, num_parts=2)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_train_loader_batches(tmp_path, num_workers):
    images, labels = write_ms1mv2(str(tmp_path), [5, 5, 6])
    loader, ds = build_train_loader(str(tmp_path / "train.rec"), 4, num_workers=num_workers, mirror=True)
    assert len(loader) == 4 and ds.num_classes == 3
    seen = []
    for data, label in loader:
        assert data.shape == (4, 3, 112, 112) and data.dtype == np.float32 and label.dtype == np.float32
        assert data.context == mx.cpu()
        seen.extend(label.asnumpy().astype(int).tolist())
        d = data.asnumpy()  # raw RGB 0-255: integer values, normalised only inside the networks
        assert 0.0 <= d.min() and d.max() <= 255.0 and d.max() > 1.0 and np.array_equal(d, np.round(d))
    assert sorted(seen) == sorted(labels.tolist())
    # mirror: every item is either the image or its mirror
    loader, _ = build_train_loader(str(tmp_path / "train.rec"), 16, num_workers=0, shuffle=False, mirror=True)
    data, _ = next(iter(loader))
    flipped = 0
    for i, x in enumerate(data.asnumpy()):
        ref = to_input(images[i])[0]
        same, mirrored = np.allclose(x, ref), np.allclose(x, ref[:, :, ::-1])
        assert same or mirrored
        flipped += mirrored
    assert 0 < flipped < 16
    loader, _ = build_train_loader(str(tmp_path / "train.rec"), 16, num_workers=0, shuffle=False, mirror=False,
                                   color_jitter=0.4)
    data, _ = next(iter(loader))
    ref = to_input(images[:16])
    d = data.asnumpy()
    assert d.shape == ref.shape and not np.allclose(d, ref) and np.corrcoef(d.ravel(), ref.ravel())[0, 1] > 0.5


def test_pack_rec_roundtrip_and_unpack(tmp_path):
    src = tmp_path / "faces"
    images = _images(7, seed=3)
    names = ["bob", "alice", "carol"]
    owner = [0, 0, 1, 1, 1, 2, 2]
    for i, img in enumerate(images):
        d = src / names[owner[i]]
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i}.png"), img[..., ::-1])
    big = src / "carol" / "big.png"  # another size: resized + JPEG
    cv2.imwrite(str(big), _images(1, seed=9, size=150)[0])
    out = tmp_path / "out"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pack_rec.py"), str(src), str(out), "--workers", "2"],
                   check=True, capture_output=True)
    ds = FaceRecordDataset(str(out / "train.rec"))
    assert ds.layout == "ms1mv2" and len(ds) == 8 and ds.num_classes == 3
    assert datasets.read_property(str(out)) == (3, 112, 112)
    # identities sorted by name: alice=0, bob=1, carol=2
    expect = {0: [2, 3, 4], 1: [0, 1], 2: [5, 6]}
    got = {}
    for i in range(len(ds)):
        img, label = ds.read_image(i)
        got.setdefault(label, []).append(img)
    for label, idxs in expect.items():
        for j in idxs:
            assert any(np.array_equal(images[j], g) for g in got[label])
    unpacked = tmp_path / "unpacked"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "unpack_rec.py"), str(out / "train.rec"),
                    str(unpacked)], check=True, capture_output=True)
    assert sorted(os.listdir(unpacked)) == ["0", "1", "2"]
    first = cv2.imread(str(unpacked / "1" / sorted(os.listdir(unpacked / "1"))[0]))[..., ::-1]
    np.testing.assert_array_equal(first, images[0])


def test_pack_rec_list_file_and_errors(tmp_path):
    images = _images(4, seed=4)
    lines = []
    for i, img in enumerate(images):
        cv2.imwrite(str(tmp_path / f"{i}.png"), img[..., ::-1])
        lines.append(f"{i}\t{[5, 9, 5, 9][i]}\t{i}.png")
    (tmp_path / "train.lst").write_text("\n".join(lines) + "\n")
    from tools.pack_rec import list_file, list_folder, pack
    pack(list_file(str(tmp_path / "train.lst"), str(tmp_path)), str(tmp_path / "out"), workers=1)
    ds = FaceRecordDataset(str(tmp_path / "out" / "train.rec"))
    assert ds.num_classes == 2 and sorted(ds.labels.tolist()) == [0, 0, 1, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images found"):
        list_folder(str(tmp_path / "empty"))
    (tmp_path / "faces" / "x").mkdir(parents=True)
    (tmp_path / "faces" / "x" / "bad.jpg").write_bytes(b"nope")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pack_rec.py"), str(tmp_path / "faces"),
                           str(tmp_path / "o2"), "--workers", "1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "error:" in proc.stderr and "bad.jpg: not a decodable image" in proc.stderr
    assert "Traceback" not in proc.stderr
