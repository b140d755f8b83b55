"""InsightFace's tools and habits on this repository's files, and InsightFace's files in this repository's tools.

The flows here are written from InsightFace's conventions (what its verification script, its ``ArcFaceONNX``
recogniser and its record packers do), not from its code: raw RGB 0-255 input normalised inside the graph, the
embedding layer named ``fc1``, XNorm over the original and flipped embeddings apart.
"""
import json
import os
import pickle

import cv2
import mxnet as mx
import numpy as np
import pytest
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize as l2_rows

import datasets
import symbols
from deploy import checkpoint
from deploy.export import export_onnx, random_images
from eval import verification
from tools import embed
from tools import export as export_cli

ASSET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "seesaw_shuffle_default_run.npz")


@pytest.fixture(scope="module")
def trained():
    """The default run's seesaw_shuffle (tests/assets), saved as a checkpoint the way training saves it."""
    net = symbols.get_model("seesaw_shuffle")
    symbols.init_model(net)
    with np.load(ASSET) as arrays:
        for name, param in net.collect_params().items():
            param.set_data(mx.nd.array(arrays[name].astype(np.float32)))
    return net


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("faces"))
    datasets.synthetic.generate_dataset(folder, num_identities=4, images_per_identity=2, pairs_per_set=60,
                                        eval_identities=24, workers=1, sets=("synth_lfw",))
    return folder


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("ckpt") / "model")
    checkpoint.save_embedding(trained, prefix, 3)
    return prefix


def insightface_verification(prefix, epoch, bin_path, batch_size=32):
    """Accuracy, its std and XNorm as InsightFace's MXNet verification script gets them: ``load_checkpoint``,
    ``get_internals()['fc1_output']``, a ``Module`` bound to ``data`` (batch, 3, 112, 112) and fed the decoded RGB
    images as raw 0-255 floats, the last batch overlapping the one before, each image and its flip embedded,
    XNorm over both, their sum L2-normalised, squared distances, 10 contiguous folds, thresholds 0:4:0.01."""
    sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, epoch)
    sym = sym.get_internals()["fc1_output"]
    model = mx.mod.Module(symbol=sym, context=mx.cpu(), label_names=None)
    model.bind(data_shapes=[("data", (batch_size, 3, 112, 112))])
    model.set_params(arg_params, aux_params)
    with open(bin_path, "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")
    issame = np.asarray(issame, dtype=bool)
    decoded = [mx.nd.transpose(mx.image.imdecode(b), axes=(2, 0, 1)).astype("float32") for b in bins]
    views = []
    for flip in (False, True):
        data = mx.nd.stack(*[mx.nd.flip(d, axis=2) if flip else d for d in decoded])
        out, start = None, 0
        while start < len(bins):
            end = min(start + batch_size, len(bins))
            model.forward(mx.io.DataBatch(data=(mx.nd.slice_axis(data, axis=0, begin=end - batch_size, end=end),)),
                          is_train=False)
            batch = model.get_outputs()[0].asnumpy()
            out = np.zeros((len(bins), batch.shape[1])) if out is None else out
            out[start:end] = batch[batch_size - (end - start):]
            start = end
        views.append(out)
    xnorm = np.mean([np.linalg.norm(row) for view in views for row in view])
    embeddings = l2_rows(views[0] + views[1])
    dist = np.sum(np.square(embeddings[0::2] - embeddings[1::2]), axis=1)
    thresholds = np.arange(0, 4, 0.01)
    accuracies = []
    for train, test in KFold(n_splits=10, shuffle=False).split(np.arange(len(issame))):
        train_acc = [np.mean(np.less(dist[train], t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        accuracies.append(np.mean(np.less(dist[test], best) == issame[test]))
    return float(np.mean(accuracies)), float(np.std(accuracies)), float(xnorm)


def _evaluate(tmp_path, spec, faces, *extra):
    out = tmp_path / f"results{len(extra)}.json"
    assert verification.main(["--model", spec, "--data-dir", faces, "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())["results"]["synth_lfw"]


def test_saved_checkpoint_follows_insightfaces_convention(saved, trained):
    graph = json.load(open(saved + "-symbol.json"))
    nodes = graph["nodes"]
    first = [n for n in nodes if n["op"] != "null"][:2]
    assert [(n["op"], n["name"], float(n["attrs"]["scalar"])) for n in first] == [
        ("_minus_scalar", "_minusscalar0", 127.5), ("_mul_scalar", "_mulscalar0", 0.0078125)]
    assert nodes[first[0]["inputs"][0][0]]["name"] == "data"
    assert sum(n["op"] == "_minus_scalar" for n in nodes) == 1  # normalised once, inside the graph
    sym = mx.sym.load(saved + "-symbol.json")
    assert sym.list_outputs() == ["fc1_output"] and "fc1_output" in sym.get_internals().list_outputs()
    assert checkpoint.load_model(saved + ",3").convention == "insightface"


def test_network_normalises_its_raw_input_exactly_once(trained):
    raw = random_images(2, seed=5)
    normalised = (raw - 127.5) / 128
    body = trained.head(trained.stages(trained.stem(mx.nd.array(normalised))))
    np.testing.assert_allclose(trained(mx.nd.array(raw)).asnumpy(), body.asnumpy(), rtol=1e-5, atol=1e-5)


def test_insightface_verification_flow_gets_our_accuracy(saved, faces, tmp_path):
    theirs = insightface_verification(saved, 3, os.path.join(faces, "synth_lfw.bin"))
    ours = _evaluate(tmp_path, saved + ",3", faces)
    assert 0.7 < theirs[0] < 1.0  # a trained network: the check compares something
    assert (f"{ours['accuracy']:.5f}", f"{ours['accuracy_std']:.5f}") == (f"{theirs[0]:.5f}", f"{theirs[1]:.5f}")
    assert ours["xnorm"] == pytest.approx(theirs[2], rel=1e-4)


def test_onnx_in_insightfaces_arcfaceonnx(trained, faces, tmp_path):
    """``insightface.model_zoo.get_model`` reads our ONNX as a recogniser that normalises its own input (mean 0,
    std 1 for its blob) and its embeddings are ours (``tools/embed.py --no-flip --raw``)."""
    model_zoo = pytest.importorskip("insightface.model_zoo", reason="the insightface package (requirements-test.txt)")
    path = str(tmp_path / "model.onnx")
    export_onnx(trained, path, random_images(4))
    recogniser = model_zoo.get_model(path, providers=["CPUExecutionProvider"])
    assert type(recogniser).__name__ == "ArcFaceONNX"
    assert (recogniser.input_mean, recogniser.input_std) == (0.0, 1.0)
    images, _ = datasets.load_bin(os.path.join(faces, "synth_lfw.bin"))
    files = []
    for i, image in enumerate(images[:6]):
        files.append(str(tmp_path / f"face{i}.png"))
        cv2.imwrite(files[-1], image[:, :, ::-1])
    out = str(tmp_path / "emb.npy")
    assert embed.main(["--model", path, *files, "--output", out, "--no-flip", "--raw"]) == 0
    ours = np.load(out)
    theirs = recogniser.get_feat([cv2.imread(f) for f in files])
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= 1e-4


# ------------------------------------------------------------------------------- InsightFace's checkpoints here


def insightface_style_checkpoint(prefix, num_classes=10, seed=0):
    """A small network written as InsightFace's MXNet symbols are: ``data - 127.5``, ``* 0.0078125``, conv/BN/PReLU
    layers, a GDC-like depthwise layer, ``pre_fc1`` FullyConnected (no ``flatten`` attribute), the ``fc1``
    BatchNorm embedding, then ``fc7`` and a softmax: the whole training symbol, saved with fc7's weights."""
    data = mx.sym.var("data")
    x = (data - 127.5) * 0.0078125
    for i, (channels, stride) in enumerate([(8, 2), (16, 2), (16, 2)], 1):
        x = mx.sym.Convolution(x, num_filter=channels, kernel=(3, 3), stride=(stride, stride), pad=(1, 1),
                               no_bias=True, name=f"conv_{i}_conv2d")
        x = mx.sym.BatchNorm(x, fix_gamma=False, eps=2e-5, name=f"conv_{i}_batchnorm")
        x = mx.sym.LeakyReLU(x, act_type="prelu", name=f"conv_{i}_relu")
    x = mx.sym.Convolution(x, num_filter=16, num_group=16, kernel=(14, 14), no_bias=True, name="conv_6dw7_7_conv2d")
    x = mx.sym.BatchNorm(x, fix_gamma=False, eps=2e-5, name="conv_6dw7_7_batchnorm")
    x = mx.sym.FullyConnected(x, num_hidden=32, name="pre_fc1")
    fc1 = mx.sym.BatchNorm(x, fix_gamma=True, eps=2e-5, name="fc1")
    fc7 = mx.sym.FullyConnected(fc1, num_hidden=num_classes, no_bias=True, name="fc7")
    sym = mx.sym.SoftmaxOutput(fc7, name="softmax")
    graph = json.loads(sym.tojson())
    for node in graph["nodes"]:
        if node["op"] == "FullyConnected":
            node.get("attrs", {}).pop("flatten", None)  # as old symbol files: the attribute left to its default
    sym = mx.sym.load_json(json.dumps(graph))
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))
    rng = np.random.RandomState(seed)
    args = {n: mx.nd.array(rng.normal(0, 0.2, s)) for n, s in zip(sym.list_arguments(), arg_shapes)
            if n not in ("data", "softmax_label")}
    for name in args:
        if name.endswith("gamma"):
            args[name] = mx.nd.array(rng.uniform(0.5, 1.5, args[name].shape))
    aux = {n: mx.nd.array(rng.uniform(0.5, 2.0, s) if n.endswith("var") else rng.normal(0, 0.5, s))
           for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    mx.model.save_checkpoint(prefix, 1, sym, args, aux)
    return prefix


def test_evaluating_and_exporting_an_insightface_checkpoint(faces, tmp_path, capsys):
    prefix = insightface_style_checkpoint(str(tmp_path / "r50" / "model"))
    loaded = checkpoint.load_model(prefix + ",1")
    assert loaded.convention == "insightface"
    theirs = insightface_verification(prefix, 1, os.path.join(faces, "synth_lfw.bin"))
    ours = _evaluate(tmp_path, prefix + ",1", faces)
    assert "InsightFace's convention" in capsys.readouterr().out
    assert (f"{ours['accuracy']:.5f}", f"{ours['accuracy_std']:.5f}") == (f"{theirs[0]:.5f}", f"{theirs[1]:.5f}")
    assert ours["xnorm"] == pytest.approx(theirs[2], rel=1e-4)

    out = tmp_path / "export"
    assert export_cli.main(["--model", prefix + ",1", "--output", str(out), "--formats", "symbol,onnx"]) == 0
    images = random_images(3, seed=2)
    reference = checkpoint.load_model(prefix + ",1")(mx.nd.array(images)).asnumpy()
    slim = checkpoint.load_model(str(out / "model") + ",0")
    np.testing.assert_allclose(slim(mx.nd.array(images)).asnumpy(), reference, rtol=1e-5, atol=1e-5)
    onnx_model = checkpoint.load_model(str(out / "model.onnx"))
    assert np.abs(onnx_model(images) - reference).max() <= 1e-4
    with pytest.raises(ValueError, match="only --formats symbol,onnx"):
        export_cli.main(["--model", prefix + ",1", "--output", str(out), "--formats", "deploy"])


def test_checkpoints_saved_before_in_graph_normalisation_still_load(trained, saved, tmp_path):
    """This repository's checkpoints used to take normalised input: recognised by the network's parameter names
    and given the normalisation in front."""
    legacy = trained.head(trained.stages(trained.stem(mx.sym.var("data"))))
    params = {k: p.data() for k, p in trained.collect_params().items()}
    aux_names = set(legacy.list_auxiliary_states())
    prefix = str(tmp_path / "legacy")
    mx.model.save_checkpoint(prefix, 2, legacy, {k: v for k, v in params.items() if k not in aux_names},
                             {k: v for k, v in params.items() if k in aux_names})
    old = checkpoint.load_model(prefix + ",2")
    assert old.convention == "seesawface-legacy"
    images = random_images(2, seed=3)
    expected = checkpoint.load_model(saved + ",3")(mx.nd.array(images)).asnumpy()
    np.testing.assert_allclose(old(mx.nd.array(images)).asnumpy(), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- InsightFace's data files


def _write_flat_records(folder, labels, header=False, seed=0):
    """Records as InsightFace's newer packers write them: images from key 0 with a plain float label (flag 0),
    no header record and no identity records."""
    os.makedirs(folder, exist_ok=True)
    writer = mx.recordio.MXIndexedRecordIO(os.path.join(folder, "train.idx"), os.path.join(folder, "train.rec"), "w")
    images = np.random.RandomState(seed).randint(0, 256, (len(labels), 112, 112, 3)).astype(np.uint8)
    for key, (label, image) in enumerate(zip(labels, images)):
        payload = cv2.imencode(".jpg", image[:, :, ::-1])[1].tobytes()
        writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), key, 0), payload))
    writer.close()
    return folder


def _train_one_epoch(data_dir, out):
    from recipes import train
    return train.run({"data_dir": data_dir, "network": "mobilefacenet", "emb_size": 16, "num_workers": 0,
                      "batch_size": 4, "num_epochs": 1, "hybridize": "none", "plot": False, "eval_sets": "none",
                      "output_dir": str(out)})


def test_records_from_the_insightface_package_with_a_two_line_property(tmp_path):
    folder = _write_flat_records(str(tmp_path / "pkg"), [0, 0, 1, 1, 2, 2, 3, 3])
    with open(os.path.join(folder, "property"), "w") as f:
        f.write("4,112,112\n8\n")  # classes,h,w then the image count
    assert datasets.read_property(folder) == (4, 112, 112)
    summary = _train_one_epoch(folder, tmp_path / "run")
    assert summary["last"]["step"] == 2


def test_records_without_a_property_file_take_the_class_count_from_the_records(tmp_path, faces):
    flat = _write_flat_records(str(tmp_path / "shuffled"), [2, 0, 1, 1, 0, 2, 2, 1])  # shuffle_rec's output
    _train_one_epoch(flat, tmp_path / "flat_run")
    log = open(tmp_path / "flat_run" / "train.log").read()
    assert "no property file in" in log and "3 classes, taken from the records (the largest label + 1)" in log
    header = str(tmp_path / "ms1mv2")
    os.makedirs(header)
    for name in ("train.rec", "train.idx"):
        os.symlink(os.path.join(faces, name), os.path.join(header, name))
    _train_one_epoch(header, tmp_path / "header_run")
    log = open(tmp_path / "header_run" / "train.log").read()
    assert "4 classes, taken from the records (the header record's identity ranges)" in log


def test_bin_images_held_as_uint8_arrays_of_any_shape(tmp_path):
    images = np.random.RandomState(1).randint(0, 256, (4, 112, 112, 3)).astype(np.uint8)
    encoded = [cv2.imencode(".png", im[:, :, ::-1])[1] for im in images]
    for shape in ((-1,), (-1, 1)):  # what cv2.imencode returns, depending on its version
        path = str(tmp_path / f"set{len(shape)}.bin")
        with open(path, "wb") as f:
            pickle.dump(([e.reshape(shape) for e in encoded], [True, False]), f, protocol=pickle.HIGHEST_PROTOCOL)
        got, issame = datasets.load_bin(path)
        np.testing.assert_array_equal(got, images)
        assert issame.tolist() == [True, False]
