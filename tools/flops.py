"""Parameters and multiply-adds of every network, counted from the graph as docs/architecture.md says.

    python tools/flops.py                         # every registered network, next to the paper's figures
    python tools/flops.py --network seesaw_shuffle --layers
    python tools/flops.py --symbol out/model-symbol.json   # an exported graph, read from the file itself

MAdds: multiply-adds of convolution and fully connected layers at batch 1 (input 1×3×112×112);
activations, pooling and elementwise work are not counted. Params: learnable arrays (weights, BatchNorm
scale/shift, PReLU slopes, biases); BatchNorm running statistics are not parameters.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

import symbols  # noqa: E402

# (params in millions, MAdds in millions) as the paper and the authors' code give them (docs/architecture.md); None where there is no figure to hold to.
PAPER = {
    "mobilefacenet": (1.19, 221),
    "seesaw_shuffle": (1.37, 146),
    "seesaw_share": (1.37, 146),
    "seesaw_shuffle_mobi": (None, None),
    "dw_seesaw_v1": (4.18, 514),
    "dw_seesaw_v2": (4.25, 526),
}
INPUT_SHAPE = (1, 3, 112, 112)


def _tuple(text):
    return tuple(int(v) for v in text.strip("()[] ").split(",") if v.strip())


def count_symbol(sym, input_shape=INPUT_SHAPE, data_name="data"):
    """Count a symbol's learnable parameters and conv/FC multiply-adds.

    Returns ``{'params': int, 'aux': int, 'madds': int, 'layers': [(name, op, madds), ...]}``; MAdds are per
    image (divided by ``input_shape[0]``).
    """
    arg_shapes, _, aux_shapes = sym.infer_shape(**{data_name: input_shape})
    if arg_shapes is None:
        raise ValueError(f"cannot infer shapes with input {input_shape}")
    params = sum(int(np.prod(s)) for n, s in zip(sym.list_arguments(), arg_shapes) if n != data_name)
    aux = sum(int(np.prod(s)) for s in aux_shapes)
    internals = sym.get_internals()
    out_names = internals.list_outputs()
    _, out_shapes, _ = internals.infer_shape(**{data_name: input_shape})
    shape_of = dict(zip(out_names, out_shapes))
    nodes = json.loads(sym.tojson())["nodes"]
    layers, total = [], 0
    batch = input_shape[0]
    for node in nodes:
        op, name = node["op"], node["name"]
        if op not in ("Convolution", "FullyConnected"):
            continue
        out_shape = shape_of.get(f"{name}_output")
        weight = nodes[node["inputs"][1][0]]["name"]
        w_shape = dict(zip(sym.list_arguments(), arg_shapes)).get(weight)
        if out_shape is None or w_shape is None:
            raise ValueError(f"cannot find the shapes of layer {name}")
        if op == "Convolution":
            # every output element costs (in_channels / groups) * kh * kw multiply-adds = prod(w_shape[1:])
            madds = int(np.prod(out_shape)) * int(np.prod(w_shape[1:])) // batch
        else:
            madds = int(np.prod(w_shape)) * (int(np.prod(out_shape)) // int(w_shape[0])) // batch
        layers.append((name, op, madds))
        total += madds
    return {"params": params, "aux": aux, "madds": total, "layers": layers}


def count_model(name, input_shape=INPUT_SHAPE, **kwargs):
    """Count a registered network (built with ``symbols.get_model(name, **kwargs)``)."""
    net = symbols.get_model(name, **kwargs)
    return count_symbol(net(mx.sym.var("data")), input_shape)


def count_file(path, input_shape=INPUT_SHAPE):
    """Count an exported ``-symbol.json`` graph (input variable ``data``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such symbol file")
    try:
        sym = mx.sym.load(path)
    except mx.base.MXNetError as err:
        raise ValueError(f"{path}: not an MXNet symbol file ({str(err).splitlines()[0]})") from err
    if "data" not in sym.list_arguments():
        raise ValueError(f"{path}: the graph has no input named 'data' (inputs: {sym.list_arguments()[:3]}...)")
    return count_symbol(sym, input_shape)


def _fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def table(rows, baseline=None):
    """Format rows of (name, counts, paper params M, paper MAdds M) as a text table."""
    lines = [f"{'network':<22}{'params (M)':>11}{'paper':>7}{'Δ%':>7}{'MAdds (M)':>11}{'paper':>7}{'Δ%':>7}"
             f"{'MAdds / mobilefacenet':>23}"]
    for name, counts, paper_p, paper_m in rows:
        p, m = counts["params"] / 1e6, counts["madds"] / 1e6
        dp = None if paper_p is None else 100 * (p - paper_p) / paper_p
        dm = None if paper_m is None else 100 * (m - paper_m) / paper_m
        ratio = None if not baseline else counts["madds"] / baseline
        lines.append(f"{name:<22}{p:>11.3f}{_fmt(paper_p):>7}{_fmt(dp, 1):>7}{m:>11.1f}{_fmt(paper_m, 0):>7}"
                     f"{_fmt(dm, 1):>7}{_fmt(ratio, 3):>23}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--network", help=f"one registered network ({', '.join(symbols.list_models())})")
    parser.add_argument("--symbol", help="an exported PREFIX-symbol.json to count instead")
    parser.add_argument("--act", choices=["prelu", "swish"], help="mobilefacenet's activation (default prelu)")
    parser.add_argument("--layers", action="store_true", help="also list every conv/FC layer's MAdds")
    parser.add_argument("--json", help="write the figures to this JSON file")
    args = parser.parse_args(argv)

    baseline = count_model("mobilefacenet")["madds"]
    if args.symbol:
        rows = [(os.path.basename(args.symbol), count_file(args.symbol), None, None)]
    else:
        names = [args.network] if args.network else symbols.list_models()
        rows = []
        for name in names:
            kwargs = {"act": args.act} if args.act and name == "mobilefacenet" else {}
            rows.append((name, count_model(name, **kwargs), *PAPER.get(name, (None, None))))
    print(table(rows, baseline))
    if args.layers:
        for name, counts, _, _ in rows:
            print(f"\n{name}:")
            for layer, op, madds in counts["layers"]:
                print(f"  {layer:<60}{op:<16}{madds / 1e6:>9.3f}M")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({name: {"params": c["params"], "madds": c["madds"], "paper_params_m": pp, "paper_madds_m": pm,
                              "madds_ratio_to_mobilefacenet": c["madds"] / baseline}
                       for name, c, pp, pm in rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    from deploy.process import run_cli

    run_cli(main)
