"""Embedding extraction, model loading and the verification command line."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import datasets
from deploy.checkpoint import load_model
from deploy.mxnet_runtime import prepare_for_inference
from eval import verification
from eval.embeddings import extract_embeddings
from eval.metrics import evaluate
from eval.sets import load_sets, verify_sets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PixelNet(nn.HybridBlock):
    """Embedding = ReLU of channel 0, row 0, columns 0 and 1 of the input, which it normalises first as every
    network does (``(x - 127.5) / 128``): ``(N, 2)``.

    Its flip reads columns 111 and 110 instead, so one image sets both views' embeddings by hand.
    With ``flatten=False`` the output stays ``(N, 1, 1, 2)``: not an embedding.
    """

    def __init__(self, flatten=True, **kwargs):
        super().__init__(**kwargs)
        self.flatten = flatten

    def hybrid_forward(self, F, x):
        out = F.relu(F.slice((x - 127.5) * 0.0078125, begin=(None, 0, 0, 0), end=(None, 1, 1, 2)))
        return F.reshape(out, shape=(0, -1)) if self.flatten else out


def pixel_image(col0, col110):
    """A black image with two set pixels in row 0, channel 0 (columns 0 and 110)."""
    image = np.zeros((112, 112, 3), dtype=np.uint8)
    image[0, 0, 0], image[0, 110, 0] = col0, col110
    return image


def tiny_net(emb_size=8):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, strides=4, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
            nn.Conv2D(8, 3, strides=2), nn.GlobalAvgPool2D(), nn.Flatten(), nn.Dense(emb_size))
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    return net


def export(net, prefix, epoch=0):
    net.hybridize()
    net(mx.nd.zeros((1, 3, 112, 112)))
    net.export(prefix, epoch)
    return prefix


def random_images(count, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (count, 112, 112, 3)).astype(np.uint8)


# ------------------------------------------------------------------------------- extraction


def test_flip_sum_is_raw_and_normalised_only_after_the_sum():
    """A: its view reads (255, 0) -> (0.996, 0), its flip (0, 140) -> (0, 0.098); B the mirror values.

    Summed raw: A = (0.996, 0.098), B = (0.098, 0.996): different directions, so the 10 negative pairs
    (A, B) are far apart and the protocol separates them from the 10 positive pairs (A, A): 100%.
    Normalising each view before summing would make A and B both (1, 1)/sqrt(2): 50%.
    """
    a, b = pixel_image(255, 140), pixel_image(140, 255)
    images = np.stack([a, a, a, b] * 10)
    issame = np.tile([True, False], 10)
    net = PixelNet()
    emb = extract_embeddings(net, images, batch_size=16)
    hi, lo = (255 - 127.5) / 128, (140 - 127.5) / 128
    np.testing.assert_array_equal(emb[0], np.float32([hi, lo]))
    np.testing.assert_array_equal(emb[3], np.float32([lo, hi]))
    assert evaluate(emb, issame)["accuracy"] == 1.0

    views = extract_embeddings(net, images, batch_size=16, flip=False)
    np.testing.assert_array_equal(views[0], np.float32([hi, 0]))
    flipped = extract_embeddings(net, images[:, :, ::-1].copy(), batch_size=16, flip=False)
    np.testing.assert_array_equal(views + flipped, emb)
    unit = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)  # noqa: E731
    assert evaluate(unit(views) + unit(flipped), issame)["accuracy"] == 0.5


def test_last_partial_batch_and_batch_size_do_not_change_embeddings():
    net = tiny_net()
    images = random_images(23)
    reference = (net(mx.nd.array(datasets.to_input(images))).asnumpy()
                 + net(mx.nd.array(datasets.to_input(images[:, :, ::-1].copy()))).asnumpy())
    for batch_size in (1, 5, 23, 64):
        emb = extract_embeddings(net, images, batch_size=batch_size)
        assert emb.shape == (23, 8) and emb.dtype == np.float32
        np.testing.assert_allclose(emb, reference, rtol=1e-4, atol=1e-5)


def test_static_shape_fused_network_and_several_devices(tmp_path):
    images = random_images(21, seed=1)
    plain = load_model(export(tiny_net(), str(tmp_path / "tiny")) + ",0")
    expected = extract_embeddings(plain, images, batch_size=8)
    ctx = [mx.cpu(0), mx.cpu(1)]
    fused = prepare_for_inference(load_model(str(tmp_path / "tiny") + ",0", ctx), ctx)
    np.testing.assert_allclose(extract_embeddings(fused, images, ctx=ctx, batch_size=8), expected,
                               rtol=0, atol=1e-6 * np.abs(expected).max())
    with pytest.raises(ValueError, match="parameters live on"):
        extract_embeddings(plain, images, ctx=ctx, batch_size=8)


def test_extraction_rejects_bad_images_and_non_embedding_output():
    with pytest.raises(ValueError, match="uint8"):
        extract_embeddings(PixelNet(), np.zeros((2, 112, 112, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected an embedding \(N, D\)"):
        extract_embeddings(PixelNet(flatten=False), random_images(3))


# ------------------------------------------------------------------------------- model loading


def test_load_checkpoint_and_exported_directory(tmp_path):
    net = tiny_net()
    images = random_images(6)
    expected = extract_embeddings(net, images)
    folder = tmp_path / "exported"
    folder.mkdir()
    export(net, str(folder / "model"), epoch=3)
    for spec in (str(folder / "model") + ",3", str(folder)):
        np.testing.assert_allclose(extract_embeddings(load_model(spec), images), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="model-0004.params"):
        load_model(str(folder / "model") + ",4")
    with pytest.raises(ValueError, match="PREFIX,EPOCH"):
        load_model(str(folder / "model"))


def test_xnorm_averages_every_view_apart_as_insightface_reports_it():
    """Image A's view embeds to (hi, 0), its flip to (0, lo); B mirrors them. InsightFace's XNorm is the mean norm
    of every view, (hi + lo) / 2, not the norm of the flip sums, sqrt(hi² + lo²)."""
    a, b = pixel_image(255, 140), pixel_image(140, 255)
    result = verify_sets(PixelNet(), {"pairs": (np.stack([a, a, a, b] * 10), np.tile([True, False], 10))},
                         batch_size=16)["pairs"]
    hi, lo = (255 - 127.5) / 128, (140 - 127.5) / 128
    assert result["xnorm"] == pytest.approx((hi + lo) / 2, rel=1e-6)
    assert result["xnorm"] != pytest.approx(np.hypot(hi, lo), rel=1e-2)


def test_load_rejects_non_embedding_models(tmp_path):
    export(PixelNet(flatten=False), str(tmp_path / "map"))
    with pytest.raises(ValueError, match=r"output has shape \(1, 1, 1, 2\)"):
        load_model(str(tmp_path / "map") + ",0")
    (tmp_path / "two").mkdir()
    for name in ("a", "b"):
        export(PixelNet(), str(tmp_path / "two" / name))
    with pytest.raises(ValueError, match="exactly one"):
        load_model(str(tmp_path / "two"))


def _onnx_model(path, batch):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weight"], ["embedding"])],
        "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, 4])],
        initializer=[numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return weight


@pytest.mark.parametrize("batch", ["N", 4])
def test_onnx_model(tmp_path, batch):
    path = str(tmp_path / "tiny.onnx")
    weight = _onnx_model(path, batch)
    images = random_images(7)
    emb = extract_embeddings(load_model(path), images, batch_size=5)
    pooled = datasets.to_input(images).mean(axis=(2, 3))
    np.testing.assert_allclose(emb, 2 * pooled @ weight, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- sets and command line


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory):
    """'easy': PixelNet separates it perfectly (see the flip test); 'hard': random images; 'sorted':
    all positive pairs first, so the first folds hold no negative pair."""
    folder = tmp_path_factory.mktemp("bins")
    images = random_images(40, seed=5)
    a, b = pixel_image(255, 140), pixel_image(140, 255)
    datasets.write_bin(str(folder / "easy.bin"), [a, a, a, b] * 10, [True, False] * 10, ext=".png")
    datasets.write_bin(str(folder / "hard.bin"), list(random_images(40, seed=6)), [True, False] * 10,
                       ext=".png")
    datasets.write_bin(str(folder / "sorted.bin"), list(images), [True] * 10 + [False] * 10, ext=".png")
    return folder


def test_verify_sets_returns_protocol_results(bin_dir):
    sets = load_sets(str(bin_dir), "easy,hard")
    results = verify_sets(PixelNet(), sets, batch_size=16)
    assert list(results) == ["easy", "hard"]
    assert results["easy"]["accuracy"] == 1.0
    assert 0.0 <= results["hard"]["accuracy"] <= 1.0 and results["hard"]["num_pairs"] == 20
    assert results["easy"]["images_per_sec"] > 0 and set(results["easy"]["tar_at_far"]) == {1e-3, 1e-4}


def test_load_sets_names_what_is_missing(bin_dir):
    with pytest.raises(ValueError, match=r"no verification set lfw .*available: easy, hard, sorted"):
        load_sets(str(bin_dir), "easy,lfw")
    with pytest.raises(ValueError, match="not a directory"):
        load_sets(str(bin_dir / "nowhere"))


def test_command_line_writes_table_json_and_roc(bin_dir, tmp_path, capsys):
    prefix = export(PixelNet(), str(tmp_path / "model"))
    out, roc = tmp_path / "res" / "results.json", tmp_path / "roc.png"
    code = verification.main(["--model", prefix + ",0", "--data-dir", str(bin_dir), "--target", "easy,hard",
                              "--batch-size", "16", "--out", str(out), "--roc", str(roc)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "TAR@FAR=1e-3 (FAR)" in printed and "images/s" in printed
    assert any(line.startswith("easy ") and "100.00 ± 0.00" in line for line in printed.splitlines())
    payload = json.loads(out.read_text())
    easy = payload["results"]["easy"]
    assert easy["accuracy"] == 1.0 and len(easy["fold_accuracies"]) == 10 and len(easy["roc"]["fpr"]) == 400
    assert set(easy["tar_at_far"]) == {"1e-3", "1e-4"}
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_errors_are_one_line(bin_dir, tmp_path, capsys, monkeypatch):
    from deploy.process import run_cli

    monkeypatch.delenv("SEESAW_DEBUG", raising=False)
    prefix = export(tiny_net(), str(tmp_path / "model"))
    env = dict(os.environ, SEESAW_DEBUG="")
    missing = subprocess.run([sys.executable, os.path.join(ROOT, "eval", "verification.py"), "--model",
                              prefix + ",0", "--data-dir", str(bin_dir), "--target", "lfw"],
                             capture_output=True, text=True, env=env, cwd=ROOT)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("error: ") and "no verification set lfw" in missing.stderr
    with pytest.raises(SystemExit) as exit_info:
        run_cli(verification.main, ["--model", prefix + ",0", "--data-dir", str(bin_dir), "--target", "sorted"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: set sorted: ")
    assert "no negative (different-identity) pair in fold(s) 0-4" in stderr


def test_fused_cpu_inference_matches_plain_for_a_real_network():
    """oneDNN fusion (what the command line uses on CPU) must not change a Seesaw network's embeddings."""
    import symbols

    net = symbols.get_model("seesaw_shuffle", emb_size=16)
    net.initialize(mx.init.Xavier())
    images = random_images(3, seed=2)
    plain = extract_embeddings(net, images, batch_size=2)
    fused = extract_embeddings(prepare_for_inference(net, [mx.cpu()]), images, batch_size=2)
    scale = np.abs(plain).max()
    assert scale > 0 and np.isfinite(plain).all()
    np.testing.assert_allclose(fused / scale, plain / scale, atol=1e-4)


def test_command_line_uses_onnxruntime_for_a_repository_network(bin_dir, tmp_path, capsys):
    from deploy.export import export_symbol, probe_batch
    from tests.test_deploy import _trained_like

    net = _trained_like("seesaw_shuffle", seed=4)
    prefix = str(tmp_path / "model")
    export_symbol(net, prefix, probe_batch(2))
    results = {}
    for backend in ("auto", "mxnet"):
        out = tmp_path / f"{backend}.json"
        assert verification.main(["--model", prefix + ",0", "--data-dir", str(bin_dir), "--target", "hard",
                                  "--backend", backend, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert ("on onnxruntime (seesaw_shuffle, folded deploy graph" in printed) == (backend == "auto")
        results[backend] = json.loads(out.read_text())["results"]["hard"]
    assert results["auto"]["accuracy"] == results["mxnet"]["accuracy"]
    assert np.allclose(results["auto"]["roc"]["tpr"], results["mxnet"]["roc"]["tpr"])


def test_command_line_falls_back_to_mxnet_for_other_networks(bin_dir, tmp_path, capsys):
    prefix = export(PixelNet(), str(tmp_path / "model"))
    assert verification.main(["--model", prefix + ",0", "--data-dir", str(bin_dir), "--target", "easy"]) == 0
    printed = capsys.readouterr().out
    assert "warning: cannot use onnxruntime for " in printed and "on cpu(0)" in printed
    assert any(line.startswith("easy ") and "100.00 ± 0.00" in line for line in printed.splitlines())
