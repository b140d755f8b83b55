"""Verification .bin sets: every real-world pickle variant, the restricted unpickler, bad input, round trips."""
import os
import pickle
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from datasets import DataError, find_bins, load_bin, write_bin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(n, seed=0, size=112):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _png(rgb):
    return cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()


@pytest.fixture
def pairs():
    images = _images(6)
    return images, [_png(im) for im in images], [True, False, True]


def _check(path, images, issame):
    got, same = load_bin(str(path))
    assert got.dtype == np.uint8 and got.shape == (len(images), 112, 112, 3)
    np.testing.assert_array_equal(got, images)
    assert same.dtype == np.bool_ and same.tolist() == list(issame)


def test_write_bin_roundtrip_png_and_jpeg(tmp_path, pairs):
    images, _, issame = pairs
    write_bin(str(tmp_path / "a.bin"), images, issame, ext=".png")
    _check(tmp_path / "a.bin", images, issame)
    write_bin(str(tmp_path / "b.bin"), list(images), np.array(issame), ext=".jpg", quality=95)
    got, same = load_bin(str(tmp_path / "b.bin"))
    assert np.abs(got.astype(int) - images).mean() < 60 and same.tolist() == issame  # lossy but same images
    with open(tmp_path / "a.bin", "rb") as f:
        bins, lst = pickle.load(f)  # the standard form: list of bytes, list of bool
    assert all(isinstance(b, bytes) for b in bins) and all(type(x) is bool for x in lst)
    assert find_bins(str(tmp_path)) == {"a": str(tmp_path / "a.bin"), "b": str(tmp_path / "b.bin")}


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_python3_pickles_of_bytes_any_protocol(tmp_path, pairs, protocol):
    images, bins, issame = pairs
    (tmp_path / "p.bin").write_bytes(pickle.dumps((bins, issame), protocol=protocol))
    _check(tmp_path / "p.bin", images, issame)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_of_encoded_bytes_and_numpy_bools(tmp_path, pairs, protocol):
    images, bins, issame = pairs
    np_bins = [np.frombuffer(b, dtype=np.uint8) for b in bins]
    for lst in (np.array(issame), [np.bool_(x) for x in issame]):
        (tmp_path / "n.bin").write_bytes(pickle.dumps((np_bins, lst), protocol=protocol))
        _check(tmp_path / "n.bin", images, issame)
    obj_array = np.empty(len(bins), dtype=object)
    obj_array[:] = bins
    (tmp_path / "o.bin").write_bytes(pickle.dumps((obj_array, tuple(issame)), protocol=protocol))
    _check(tmp_path / "o.bin", images, issame)


def _py2_protocol2(bins, issame):
    """What Python 2's cPickle.dump((bins, issame), f, protocol=2) writes for a list of str."""
    out = b"\x80\x02]q\x00("
    for b in bins:
        out += (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b
    out += b"e]q\x01(" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e\x86q\x02."
    return out


def _py2_protocol0(bins, issame):
    """What Python 2's pickle.dump((bins, issame), f) writes (text protocol 0, str as S'...')."""
    out = b"((lp0\n"
    for b in bins:
        out += b"S'" + "".join(f"\\x{c:02x}" for c in b).encode() + b"'\naa"[:-1]
    out += b"(lp1\n" + b"".join(b"I01\na" if s else b"I00\na" for s in issame) + b"tp2\n."
    return out


@pytest.mark.parametrize("writer", [_py2_protocol2, _py2_protocol0])
def test_python2_pickles_of_byte_strings(tmp_path, pairs, writer):
    images, bins, issame = pairs
    data = writer(bins, issame)
    assert pickle.loads(data, encoding="bytes")[0][0] == bins[0]  # the crafted bytes are a valid py2 pickle
    (tmp_path / "py2.bin").write_bytes(data)
    _check(tmp_path / "py2.bin", images, issame)


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _HostileSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("cls", [_Hostile, _HostileSystem])
@pytest.mark.parametrize("where", ["top", "inside_bins", "inside_issame"])
def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path, pairs, cls, where):
    _, bins, issame = pairs
    marker = str(tmp_path / "PWNED")
    evil = cls(marker)
    payload = {"top": evil, "inside_bins": (bins[:-1] + [evil], issame),
               "inside_issame": (bins, issame[:-1] + [evil])}[where]
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not os.path.exists(marker)
    with pytest.raises(DataError, match=r"evil\.bin: not a safe verification pickle: refusing to load global"):
        load_bin(str(path))
    assert not os.path.exists(marker)
    pickle.loads(path.read_bytes())  # sanity: the plain unpickler really would have run it
    assert os.path.exists(marker)


def test_odd_counts_and_bad_structure(tmp_path, pairs):
    _, bins, issame = pairs
    p = tmp_path / "odd.bin"
    p.write_bytes(pickle.dumps((bins[:-1], issame)))
    with pytest.raises(DataError, match=r"odd\.bin: 5 images for 3 pairs"):
        load_bin(str(p))
    p.write_bytes(pickle.dumps((bins, issame, "extra")))
    with pytest.raises(DataError, match=r"odd\.bin: expected a pickled 2-tuple"):
        load_bin(str(p))
    p.write_bytes(pickle.dumps((bins, issame))[:50])
    with pytest.raises(DataError, match=r"odd\.bin: corrupt or truncated pickle"):
        load_bin(str(p))
    p.write_bytes(pickle.dumps((bins, [2, 0, 1])))
    with pytest.raises(DataError, match="other than 0/1"):
        load_bin(str(p))
    p.write_bytes(pickle.dumps((bins, issame + [True] * 0)))
    with pytest.raises(DataError, match=r"missing\.bin: verification set not found"):
        load_bin(str(tmp_path / "missing.bin"))


def test_undecodable_image_names_index(tmp_path, pairs):
    _, bins, issame = pairs
    bad = list(bins)
    bad[3] = b"\xff\xd8 definitely not a jpeg"
    p = tmp_path / "bad.bin"
    p.write_bytes(pickle.dumps((bad, issame)))
    with pytest.raises(DataError, match=r"bad\.bin: image 3 \(pair 1\): not a decodable image"):
        load_bin(str(p))
    bad[3] = 12345
    p.write_bytes(pickle.dumps((bad, issame)))
    with pytest.raises(DataError, match=r"bad\.bin: image 3 is a int"):
        load_bin(str(p))


def test_other_size_resized_with_warning(tmp_path):
    images = _images(2, size=96)
    write_bin(str(tmp_path / "s.bin"), images, [True], ext=".png")
    with pytest.warns(UserWarning, match="resized"):
        got, _ = load_bin(str(tmp_path / "s.bin"))
    assert got.shape == (2, 112, 112, 3)


def test_make_bin_tool(tmp_path):
    images = _images(4, seed=2)
    for i, im in enumerate(images):
        cv2.imwrite(str(tmp_path / f"{i}.png"), im[..., ::-1])
    (tmp_path / "pairs.txt").write_text("0.png 1.png 1\n2.png 3.png 0\n")
    out = tmp_path / "x.bin"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_bin.py"), str(tmp_path / "pairs.txt"),
                           str(out), "--root", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    _check(out, images, [True, False])
    from tools.make_bin import main
    (tmp_path / "pairs.txt").write_text("0.png 9.png 1\n")
    with pytest.raises(DataError, match=r"9\.png: cannot read"):
        main([str(tmp_path / "pairs.txt"), str(out), "--root", str(tmp_path)])
    (tmp_path / "pairs.txt").write_text("0.png\n")
    with pytest.raises(DataError, match=r"pairs\.txt: line 1 is neither"):
        main([str(tmp_path / "pairs.txt"), str(out), "--root", str(tmp_path)])
