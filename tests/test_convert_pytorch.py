"""The authors' PyTorch weights, converted, reproduce their embeddings: the proof the architecture is the paper's."""
import os
import pickle

import mxnet as mx
import numpy as np
import pytest

from tools import convert_pytorch as convert_tool
from conftest import SHARED

FIXTURES = os.path.join(SHARED, "reference", "official_pytorch")
CASES = [("mobilefacenet_swish", "mobilefacenet"), ("seesaw_shuffle", "seesaw_shuffle"),
         ("seesaw_share", "seesaw_share"), ("dw_seesaw_v2", "dw_seesaw_v2")]
needs_fixtures = pytest.mark.skipif(not os.path.isdir(FIXTURES), reason=f"reference fixtures not found at {FIXTURES}")


@needs_fixtures
@pytest.mark.parametrize("fixture,network", CASES)
def test_converted_fixture_reproduces_reference_embedding(fixture, network, tmp_path):
    state = convert_tool.read_state_dict(os.path.join(FIXTURES, f"{fixture}.npz"))
    net = convert_tool.convert(state, network)
    prefix = str(tmp_path / network)
    convert_tool.save_checkpoint(net, prefix)
    # through the written checkpoint, hybridized, eval mode
    block = mx.gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data"], f"{prefix}-0000.params")
    block.hybridize(static_alloc=True, static_shape=True)
    raw = state["input"] * 128.0 + 127.5  # the fixture's normalised images as RGB 0-255 (normalised in the graph)
    out = block(mx.nd.array(raw)).asnumpy()
    assert np.abs(out - state["embedding"]).max() <= 1e-4
    normed = out / np.linalg.norm(out, axis=1, keepdims=True)
    assert np.abs(normed - state["embedding_l2"]).max() <= 1e-4


@needs_fixtures
def test_wrong_network_is_refused_with_a_message():
    state = convert_tool.read_state_dict(os.path.join(FIXTURES, "seesaw_shuffle.npz"))
    with pytest.raises(ValueError, match="right --network"):
        convert_tool.convert(state, "mobilefacenet")
    with pytest.raises(ValueError, match="convertible"):
        convert_tool.convert(state, "dw_seesaw_v1")


@needs_fixtures
def test_missing_parameters_are_reported():
    state = convert_tool.read_state_dict(os.path.join(FIXTURES, "seesaw_share.npz"))
    state = {k: v for k, v in state.items() if not k.startswith("conv_6_sep")}
    with pytest.raises(ValueError, match="lacks"):
        convert_tool.convert(state, "seesaw_share")


def test_key_mapping():
    assert convert_tool.gluon_name("conv_4.model.5.se.0.fc.1.weight") == "stages.1.6.se.act.alpha"
    assert convert_tool.gluon_name("conv_23.conv_1.bn.weight") == "stages.0.0.expand_1.bn.gamma"
    assert convert_tool.gluon_name("conv_6_dw.bn.bias") == "head.conv_dw.bn.beta"
    assert convert_tool.gluon_name("bn.running_var") == "head.bn.running_var"
    assert convert_tool.gluon_name("conv_3.model.0.conv.prelu.weight") == "stages.0.1.expand.act.alpha"


def test_cli_reports_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        from deploy.process import run_cli
        run_cli(convert_tool.main, ["--input", str(tmp_path / "none.pth"), "--network", "seesaw_shuffle",
                                    "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "no such file" in capsys.readouterr().err


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pth_is_read_without_running_code(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pth"
    with open(path, "wb") as f:
        torch.save({"conv1.conv.weight": torch.zeros(1), "x": _Hostile(str(marker))}, f)
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a plain PyTorch state_dict"):
        convert_tool.read_state_dict(str(path))
    assert not marker.exists()
    plain = tmp_path / "plain.pth"
    with open(plain, "wb") as f:
        pickle.dump({"a": 1}, f)  # not a torch zip file either
    with pytest.raises(ValueError):
        convert_tool.read_state_dict(str(plain))


@needs_fixtures
def test_pth_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    state = convert_tool.read_state_dict(os.path.join(FIXTURES, "seesaw_shuffle.npz"))
    weights = {k: torch.from_numpy(v) for k, v in state.items() if k not in convert_tool.FIXTURE_KEYS}
    path = tmp_path / "seesaw_shuffle.pth"
    torch.save(weights, str(path))
    net = convert_tool.convert(convert_tool.read_state_dict(str(path)), "seesaw_shuffle")
    assert convert_tool.check_fixture(net, state) <= 1e-4
