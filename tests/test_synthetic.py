"""Synthetic dataset: written through the real writers, read back by the real readers, deterministic."""
import os

import numpy as np
import pytest

from datasets import FaceRecordDataset, find_bins, load_bin, read_property
from datasets import synthetic

SMALL = dict(num_identities=5, images_per_identity=3, pairs_per_set=20, eval_identities=4, workers=1)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("syn"))
    summary = synthetic.generate_dataset(out, seed=3, **SMALL)
    return out, summary


def test_generated_files_read_with_the_real_readers(small):
    out, summary = small
    assert summary["num_images"] == 15
    ds = FaceRecordDataset(os.path.join(out, "train.rec"))
    assert ds.layout == "ms1mv2" and len(ds) == 15 and ds.num_classes == 5
    assert read_property(out) == (5, 112, 112)
    assert np.bincount(ds.labels).tolist() == [3] * 5
    img, label = ds.read_image(4)
    assert img.shape == (112, 112, 3) and img.dtype == np.uint8 and label == 1 and img.std() > 10
    assert sorted(find_bins(out)) == ["synth_agedb_30", "synth_cfp_fp", "synth_lfw"]
    for path in find_bins(out).values():
        images, issame = load_bin(path)
        assert images.shape == (40, 112, 112, 3) and issame.shape == (20,)
        folds = issame.reshape(10, 2)
        assert (folds.sum(axis=1) == 1).all()  # every one of the 10 folds is balanced


def test_deterministic_from_seed(small, tmp_path):
    out, _ = small
    again = str(tmp_path / "again")
    synthetic.generate_dataset(again, seed=3, **dict(SMALL, workers=2))
    for name in ("train.rec", "train.idx", "property", "synth_lfw.bin"):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read(), name
    other = str(tmp_path / "other")
    synthetic.generate_dataset(other, seed=4, **SMALL)
    with open(os.path.join(out, "train.rec"), "rb") as a, open(os.path.join(other, "train.rec"), "rb") as b:
        assert a.read() != b.read()


def test_identities_differ_and_eval_identities_are_unseen():
    codes = synthetic.make_identity_codes(300, seed=0)
    diff = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    np.fill_diagonal(diff, 99)
    assert diff.min() >= synthetic.MIN_TRAIT_DIFF
    levels = np.array(list(synthetic.TRAITS.values()))
    assert (codes >= 0).all() and (codes < levels).all()


def test_same_identity_images_vary(small):
    out, _ = small
    ds = FaceRecordDataset(os.path.join(out, "train.rec"))
    a, _ = ds.read_image(0)
    b, _ = ds.read_image(1)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10  # nuisance changes each image


def test_ensure_default_dataset_generates_once(tmp_path, monkeypatch):
    root = str(tmp_path / "cache" / "synthetic")
    sizes = dict(num_identities=3, images_per_identity=2, pairs_per_set=20, eval_identities=3)
    calls = []
    real = synthetic.generate_dataset

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **dict(kwargs, workers=1))

    monkeypatch.setattr(synthetic, "generate_dataset", counting)
    assert synthetic.ensure_default_dataset(root, **sizes) == root
    assert synthetic.ensure_default_dataset(root, **sizes) == root
    assert len(calls) == 1
    assert not [d for d in os.listdir(os.path.dirname(root)) if d.startswith(".synthetic")]  # no temp left
    os.remove(os.path.join(root, "synth_lfw.bin"))  # incomplete -> regenerated
    synthetic.ensure_default_dataset(root, **sizes)
    assert len(calls) == 2 and os.path.isfile(os.path.join(root, "synth_lfw.bin"))


def test_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 20"):
        synthetic.generate_dataset("/nonexistent", pairs_per_set=30)


def test_cheap_renderer_writes_a_valid_ms1mv2_layout(tmp_path):
    # the renderer of the MS1MV2-shape dataset (85,742 identities): base faces shared by groups of identities
    out = str(tmp_path / "cheap")
    summary = synthetic.generate_dataset(out, num_identities=23, images_per_identity=3, pairs_per_set=20,
                                         eval_identities=4, workers=1, renderer="cheap", base_faces=5)
    assert summary["num_images"] == 69 and summary["renderer"] == "cheap" and summary["base_faces"] == 5
    ds = FaceRecordDataset(os.path.join(out, "train.rec"))
    assert ds.layout == "ms1mv2" and len(ds) == 69 and ds.num_classes == 23
    assert read_property(out) == (23, 112, 112)
    assert np.bincount(ds.labels).tolist() == [3] * 23
    images = [ds.read_image(i) for i in range(len(ds))]
    assert all(img.shape == (112, 112, 3) and img.dtype == np.uint8 and img.std() > 10 for img, _ in images)
    data, label = ds[5]
    assert data.shape == (3, 112, 112) and label == 1
    # identities sharing a base face (0 and 1: 5 identities per base) still differ; images of one identity vary
    faces = np.stack([img.astype(np.float32) for img, _ in images]).reshape(23, 3, 112, 112, 3)
    centre = faces[:, :, 36:76, 36:76]  # the face, little background
    same = np.abs(centre[:, 0] - centre[:, 1]).mean()
    assert same > 3
    assert sorted(find_bins(out)) == ["synth_agedb_30", "synth_cfp_fp", "synth_lfw"]
    again = str(tmp_path / "again")  # deterministic whatever the worker count
    synthetic.generate_dataset(again, num_identities=23, images_per_identity=3, pairs_per_set=20,
                               eval_identities=4, workers=2, renderer="cheap", base_faces=5)
    for name in ("train.rec", "train.idx", "property", "synth_lfw.bin"):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read(), name
    with pytest.raises(ValueError, match="renderer must be one of"):
        synthetic.generate_dataset(out, renderer="fast")
