"""tools/compare.py and tools/embed.py on an exported model."""
import json

import cv2
import numpy as np
import pytest

from deploy import export
from tests.test_deploy import _trained_like
from tools import compare, embed


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    net = _trained_like("seesaw_share", seed=11)
    export.export_onnx(net, str(folder / "model.onnx"), export.probe_batch(2))
    return str(folder / "model.onnx")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.RandomState(0)
    paths = []
    ramp = np.linspace(0, 255, 112).astype(np.uint8)
    images = [rng.randint(0, 255, (112, 112, 3), dtype=np.uint8),
              np.stack([np.tile(ramp, (112, 1)), np.tile(ramp[:, None], (1, 112)), 255 - np.tile(ramp, (112, 1))], 2)]
    for i, image in enumerate(images):
        path = str(folder / f"face{i}.png")
        cv2.imwrite(path, image)
        paths.append(path)
    (folder / "notes.jpg").write_text("this is not an image")
    cv2.imwrite(str(folder / "big.png"), rng.randint(0, 255, (200, 180, 3), dtype=np.uint8))
    return folder, paths


def _run(main, argv, capsys):
    from deploy.process import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_image_against_itself_is_same(onnx_model, faces, capsys):
    _, paths = faces
    code, out, _ = _run(compare.main, [paths[0], paths[0], "--model", onnx_model, "--threshold", "0.5"], capsys)
    assert code == 0
    assert "similarity 1.0000" in out and "verdict: same" in out


def test_threshold_from_verification_results(onnx_model, faces, tmp_path):
    results = {"results": {"lfw": {"thresholds": [1.2, 1.4]}}}
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert compare.threshold_from_results(str(tmp_path / "r.json")) == pytest.approx(1 - 1.3 / 2)
    net = embed.load_embedder(onnx_model)
    _, paths = faces
    result = compare.compare_faces(net, paths[0], paths[1], threshold=1.0)
    assert result["similarity"] < 0.999 and result["same"] is False


def test_not_an_image_is_a_clear_error(onnx_model, faces, capsys):
    folder, paths = faces
    code, _, err = _run(compare.main, [paths[0], str(folder / "notes.jpg"), "--model", onnx_model], capsys)
    assert code == 2 and "notes.jpg: not a readable image" in err and "Traceback" not in err


def test_unaligned_image_needs_landmarks(onnx_model, faces, capsys):
    folder, paths = faces
    code, _, err = _run(compare.main, [paths[0], str(folder / "big.png"), "--model", onnx_model], capsys)
    assert code == 2 and "5 landmarks" in err
    landmarks = ",".join(str(v) for v in (np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4],
                                                    [70.7, 92.2]]) * 1.5).ravel())
    code, out, _ = _run(compare.main, [paths[0], str(folder / "big.png"), "--model", onnx_model,
                                       "--landmarks2", landmarks], capsys)
    assert code == 0 and "no verdict" in out


def test_embed_writes_normalised_embeddings_and_names(onnx_model, faces, tmp_path, capsys):
    _, paths = faces
    out = str(tmp_path / "emb.npy")
    code, _, _ = _run(embed.main, paths + ["--model", onnx_model, "--output", out], capsys)
    assert code == 0
    emb = np.load(out)
    assert emb.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert open(out[:-4] + ".txt").read().split() == paths
