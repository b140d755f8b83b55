"""Convert the authors' PyTorch SeesawFaceNets weights into this project's MXNet checkpoint.

    python tools/convert_pytorch.py --input seesaw_shuffle.pth --network seesaw_shuffle --output outputs/seesaw
    python tools/convert_pytorch.py --input seesaw_share.npz --network seesaw_share --output outputs/share --check

Writes ``PREFIX-symbol.json`` + ``PREFIX-0000.params`` (the embedding network in InsightFace's convention, loadable
with ``mx.model.load_checkpoint``). Reads a ``torch.save``d state_dict (``.pth``/``.pt``, with
``torch.load(weights_only=True)``, which refuses to run code from the file; torch is needed only here) or
the ``.npz`` form of the reference fixtures. ``--check`` runs the fixture's ``input`` (normalised images, as the
authors' networks take) through the converted network and compares with its ``embedding``.
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

import symbols  # noqa: E402
from deploy.checkpoint import save_embedding  # noqa: E402
from symbols.common import INPUT_MEAN, INPUT_SCALE  # noqa: E402

# Networks the authors published, with the constructor arguments that match their implementation.
CONVERTIBLE = {
    "mobilefacenet": {"act": "swish"},
    "seesaw_shuffle": {},
    "seesaw_share": {},
    "dw_seesaw_v2": {},
}
FIXTURE_KEYS = ("input", "embedding", "embedding_l2")

_TOP = [
    (r"^conv1\.", "stem.conv."),
    (r"^conv2_dw\.", "stem.dw."),
    (r"^conv_23\.", "stages.0.0."),
    (r"^conv_34\.", "stages.1.0."),
    (r"^conv_45\.", "stages.2.0."),
    (r"^conv_6_sep\.", "head.conv_sep."),
    (r"^conv_6_dw\.", "head.conv_dw."),
    (r"^linear\.", "head.linear."),
    (r"^bn\.", "head.bn."),
]
_RESIDUAL = re.compile(r"^conv_(3|4|5)\.model\.(\d+)\.")
_INNER = [
    (r"\.conv_1\.", ".expand_1."),
    (r"\.conv_3\.", ".expand_3."),
    (r"\.conv_dw\.", ".dw."),
    (r"\.se\.0\.fc\.0\.", ".se.fc1."),
    (r"\.se\.0\.fc\.1\.weight$", ".se.act.alpha"),
    (r"\.se\.0\.fc\.2\.", ".se.fc2."),
    (r"\.mapping\.1\.", ".skip."),
    (r"^(stages\.\d+\.\d+)\.conv\.(conv|bn|prelu)\.", r"\1.expand.\2."),  # MobileFaceNet's expansion
]
_LEAF = [
    (r"\.bn\.weight$", ".bn.gamma"),
    (r"\.bn\.bias$", ".bn.beta"),
    (r"^head\.bn\.weight$", "head.bn.gamma"),
    (r"^head\.bn\.bias$", "head.bn.beta"),
    (r"\.prelu\.weight$", ".act.alpha"),
]


def gluon_name(torch_key):
    """Map a reference-implementation state_dict key to this project's structural parameter name."""
    name = torch_key
    match = _RESIDUAL.match(name)
    if match:
        stage, index = int(match.group(1)) - 3, int(match.group(2)) + 1
        name = f"stages.{stage}.{index}." + name[match.end():]
    for pattern, repl in _TOP:
        name = re.sub(pattern, repl, name)
    if name.startswith("stages."):
        for pattern, repl in _INNER:
            name = re.sub(pattern, repl, name)
    for pattern, repl in _LEAF:
        name = re.sub(pattern, repl, name)
    return name


def read_state_dict(path):
    """Read a state_dict as {key: float32 ndarray} from ``.npz`` or a ``torch.save`` file, executing nothing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError as err:
        raise RuntimeError(f"{path}: reading a PyTorch checkpoint needs torch (pip install torch); "
                           "or convert it to .npz first") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError and others for refused or broken files
        raise ValueError(f"{path}: not a plain PyTorch state_dict ({err.__class__.__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), found {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if hasattr(value, "detach"):
            out[key[len("module."):] if key.startswith("module.") else key] = value.detach().cpu().numpy()
    return out


def convert(state, network):
    """Build ``network`` and load ``state`` (reference keys) into it. Returns the initialised gluon net.

    Every parameter of the network must be filled, with matching shapes; keys the network has no place for
    are an error, except the reference's unused ``mapping`` tensors in residual blocks and
    ``num_batches_tracked`` counters.
    """
    if network not in CONVERTIBLE:
        raise ValueError(f"no published PyTorch weights for {network!r}; convertible: {', '.join(CONVERTIBLE)}")
    net = symbols.get_model(network, **CONVERTIBLE[network])
    symbols.init_model(net)
    params = net._collect_params_with_prefix()
    filled = set()
    for key, value in state.items():
        if key in FIXTURE_KEYS or key.endswith("num_batches_tracked"):
            continue
        name = gluon_name(key)
        if name not in params:
            if ".mapping." in key:
                continue  # the reference builds a skip branch in residual blocks that its forward never uses
            raise ValueError(f"checkpoint key {key!r} has no place in {network} (mapped to {name!r}); "
                             "is this the right --network?")
        param = params[name]
        if value.size != int(np.prod(param.shape)):
            raise ValueError(f"checkpoint key {key!r} has shape {value.shape}, {network} expects {param.shape} "
                             f"for {name}; is this the right --network?")
        param.set_data(mx.nd.array(value.reshape(param.shape), dtype="float32"))
        filled.add(name)
    missing = sorted(set(params) - filled)
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} parameters of {network}, e.g. {missing[:3]}")
    return net


def save_checkpoint(net, prefix, epoch=0):
    """Export ``net`` as ``prefix-symbol.json`` + ``prefix-%04d.params`` (deployable embedding network)."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    return save_embedding(net, prefix, epoch)


def check_fixture(net, state):
    """Max abs difference between the converted network on the fixture's ``input`` (normalised images, as the
    authors' networks take; un-normalised here since this network normalises its own input) and the fixture's
    ``embedding``."""
    raw = np.asarray(state["input"], dtype=np.float64) / INPUT_SCALE + INPUT_MEAN
    out = net(mx.nd.array(raw.astype(np.float32))).asnumpy()
    return float(np.abs(out - state["embedding"]).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="state_dict file: .pth/.pt (torch.save) or .npz")
    parser.add_argument("--network", required=True, choices=sorted(CONVERTIBLE))
    parser.add_argument("--output", required=True, help="checkpoint prefix to write (PREFIX-symbol.json, ...)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the file's 'input'/'embedding' arrays (reference fixtures)")
    args = parser.parse_args(argv)
    state = read_state_dict(args.input)
    net = convert(state, args.network)
    sym_path, params_path = save_checkpoint(net, args.output)
    print(f"wrote {sym_path} and {params_path}")
    if args.check:
        if "input" not in state or "embedding" not in state:
            raise ValueError(f"{args.input}: --check needs 'input' and 'embedding' arrays in the file")
        diff = check_fixture(net, state)
        print(f"max abs difference from the reference embedding: {diff:.2e}")
        if diff > 1e-4:
            raise RuntimeError(f"converted network differs from the reference by {diff:.2e} (> 1e-4)")
    return 0


if __name__ == "__main__":
    from deploy.process import run_cli

    run_cli(main)
