"""Export a trained embedding network to deployment artefacts, each verified before it is written.

    python tools/export.py --model outputs/seesaw_shuffle/model,3 --output outputs/seesaw_shuffle/export
    python tools/export.py --model out/seesaw,0 --output out/export --formats deploy,onnx --layout cells
    python tools/export.py --model outputs/seesaw_shuffle/model,3 --output outputs/seesaw_shuffle/export \
        --formats int8 --calib-data .cache/synthetic/train.rec --verify-data .cache/synthetic
    python tools/export.py --model outputs/seesaw_shuffle/model,3 --output outputs/seesaw_shuffle/export \
        --formats ncnn,ncnn_fp16,mnn,mnn_fp16,onnx_int8 --calib-data .cache/synthetic/train.rec \
        --verify-data .cache/synthetic

``--model``: ``PREFIX,EPOCH`` (a training checkpoint or a converted official one) or a folder holding one
``*-symbol.json`` with its ``-NNNN.params``. The network (and MobileFaceNet's activation) is recognised from
the parameter names; ``--network``/``--act`` override. Writes into ``--output``: ``symbol`` (``model-symbol.json``
+ ``model-0000.params``), ``deploy`` (``deploy/``: the folded inference graph for MXNet), ``onnx``
(``model.onnx``; ``--prelu native`` writes PReLU as ``PRelu`` nodes, the form OpenVINO fuses), ``int8`` (``int8/``:
oneDNN INT8, with the verification accuracy before and after on ``--verify-data``), ``onnx_int8``
(``model_int8.onnx``: ONNX Runtime static INT8, idem), ``ncnn`` / ``ncnn_fp16`` (``ncnn/``, ``ncnn_fp16/``:
``model.param`` + ``model.bin`` converted by pnnx), ``mnn`` / ``mnn_fp16`` (``model.mnn``, ``model_fp16.mnn``:
MNN's converter); the fp16 models with the accuracy before and after too. And ``export.json`` with every
measured difference. An artefact that does not reproduce the
source network is refused with the measured figures and nothing of it is written. A checkpoint of another
network in InsightFace's convention (``fc1`` output, in-graph normalisation; an arcface_mxnet MobileFaceNet, say)
exports as ``symbol`` and ``onnx`` from its saved graph.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from deploy.process import run_cli, use_all_cores  # noqa: E402

use_all_cores()

import symbols  # noqa: E402
from deploy.checkpoint import CONVENTIONS, load_source  # noqa: E402
from deploy.export import PROBE_IMAGES, TOLERANCE, export_deploy, export_onnx, export_symbol, load_images  # noqa: E402
from deploy.export import export_saved_graph, probe_batch  # noqa: E402
from deploy.int8 import CALIB_MODES, INT8_MIN_COSINE, export_int8  # noqa: E402
from deploy.graph import PRELU_FORMS  # noqa: E402
from deploy.lower import LAYOUTS  # noqa: E402
from deploy.mobile_export import MOBILE_TOLERANCE, export_mnn, export_ncnn, export_onnx_form  # noqa: E402
from deploy.onnx_int8 import export_onnx_int8  # noqa: E402
from eval.sets import load_set_files, verify_sets  # noqa: E402

FORMATS = ("symbol", "deploy", "onnx", "int8", "onnx_int8", "ncnn", "ncnn_fp16", "mnn", "mnn_fp16")
CALIBRATED = ("int8", "onnx_int8")  # formats that need --calib-data
INT8_ACCURACY_WARNING = 0.5  # points lost on a set that earn a warning line


def build_parser():
    parser = argparse.ArgumentParser(description="Export an embedding network: symbol/params, folded deploy "
                                                 "graph, ONNX, INT8; every export verified.")
    parser.add_argument("--model", required=True, help="PREFIX,EPOCH checkpoint or a model folder")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--formats", default="symbol,deploy,onnx",
                        help=f"comma-separated, from {','.join(FORMATS)} (int8 and onnx_int8 need --calib-data)")
    parser.add_argument("--network", choices=symbols.list_models(), help="override the recognised network")
    parser.add_argument("--act", choices=("prelu", "swish"), help="MobileFaceNet's activation (override)")
    parser.add_argument("--layout", choices=LAYOUTS, help="folded-graph layout of the Seesaw blocks "
                        "(default: dense, fewest operators, fastest at batch 1; cells: the paper's "
                        "multiply-adds, fastest for batches)")
    parser.add_argument("--prelu", choices=PRELU_FORMS, default="depthwise",
                        help="how the onnx format writes PReLU: depthwise (1x1 depthwise convolutions, fastest in "
                             "ONNX Runtime) or native (PRelu nodes, which OpenVINO fuses; ncnn and mnn always get it)")
    parser.add_argument("--calib-data", help="a .rec or .bin file: INT8 calibration images (and probe images)")
    parser.add_argument("--calib-images", type=int, default=256, help="how many calibration images")
    parser.add_argument("--calib-mode", default="naive", choices=CALIB_MODES,
                        help="naive: each tensor's min/max on the calibration images; entropy: MXNet's "
                             "KL-divergence thresholds")
    parser.add_argument("--verify-data", help="a folder of .bin sets (or one .bin): INT8 and fp16 accuracy "
                                              "before/after")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="max abs embedding difference (fp32)")
    parser.add_argument("--mobile-tolerance", type=float, default=MOBILE_TOLERANCE,
                        help="max abs embedding difference of the fp32 ncnn and MNN models")
    parser.add_argument("--int8-min-cosine", type=float, default=INT8_MIN_COSINE)
    return parser


def accuracy_change(net, sets, label="int8", before=None):
    """``measure(embedder)`` → ``{set: {'fp32', label, 'change'}}`` in percent (change = label − fp32); ``before``:
    the fp32 results of ``verify_sets(net, sets)`` if already measured."""
    before = before or verify_sets(net, sets)

    def measure(embedder):
        after = verify_sets(embedder, sets)
        return {name: {"fp32": 100 * before[name]["accuracy"], label: 100 * after[name]["accuracy"],
                       "change": 100 * (after[name]["accuracy"] - before[name]["accuracy"])} for name in sets}
    return measure


def export_other_network(args, formats, reason):
    """A checkpoint that is not one of this repository's networks (an InsightFace model): its saved embedding
    graph as a symbol and/or ONNX (the folded graph and INT8 need a network this repository knows)."""
    unsupported = [f for f in formats if f not in ("symbol", "onnx")]
    if unsupported:
        raise ValueError(f"{args.model}: {reason}; only --formats symbol,onnx can export another network's saved "
                         f"graph ({','.join(unsupported)} need a network of this repository)")
    print(f"source: {args.model} is not a network of this repository ({str(reason).split(';')[0]}); exporting "
          "its saved graph")
    probe = load_images(args.calib_data, PROBE_IMAGES) if args.calib_data else None
    results = export_saved_graph(args.model, os.path.join(args.output, "model") if "symbol" in formats else None,
                                 os.path.join(args.output, "model.onnx") if "onnx" in formats else None, probe,
                                 args.tolerance)
    for fmt, result in results.items():
        print(f"{fmt:7s} ok: max abs diff {result['max_abs_diff']:.2e}, cosine min {result['min_cosine']:.6f} "
              f"({CONVENTIONS[result['convention']]})")
    with open(os.path.join(args.output, "export.json"), "w") as f:
        json.dump({"source": args.model, "exports": results}, f, indent=1, default=str)
    print(f"written to {args.output} (export.json holds the figures)")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        raise ValueError(f"--formats {args.formats!r}: valid formats are {', '.join(FORMATS)}")
    calibrated = [f for f in formats if f in CALIBRATED]
    if calibrated and not args.calib_data:
        raise ValueError(f"--formats {','.join(calibrated)} needs --calib-data (a .rec of training records or a .bin "
                         "set)")
    os.makedirs(args.output, exist_ok=True)
    try:
        net, info = load_source(args.model, args.network, args.act)
    except ValueError as err:
        if args.network:
            raise
        return export_other_network(args, formats, err)
    print(f"source: {info['network']} {info['kwargs'] or ''} emb {info['emb_size']} from {info['params_file']}")
    calib = probe = None
    if args.calib_data:  # the probe images every export is checked on are kept out of the INT8 calibration
        images = load_images(args.calib_data, args.calib_images + PROBE_IMAGES)
        if len(images) < 2 * PROBE_IMAGES:
            raise ValueError(f"{args.calib_data}: only {len(images)} images; need at least {2 * PROBE_IMAGES}")
        calib, probe = images[:-PROBE_IMAGES], images[-PROBE_IMAGES:]
    probe = probe_batch(images=probe)
    report = {"source": dict(info), "probe_images": len(probe),
              "probe": f"images of {args.calib_data} not used for calibration" if calib is not None
              else "random normal inputs", "exports": {}}
    out = args.output
    sets, fp32_results = (load_set_files(args.verify_data), {}) if args.verify_data else (None, None)

    def accuracy(label):
        if sets is None:
            return None
        if not fp32_results:  # the source network's accuracy, measured once for every format
            fp32_results.update(verify_sets(net, sets))
        return accuracy_change(net, sets, label, fp32_results)

    mobile = dict(layout=args.layout, tolerance=args.mobile_tolerance)
    steps = {
        "symbol": lambda: export_symbol(net, os.path.join(out, "model"), probe, args.tolerance),
        "deploy": lambda: export_deploy(net, os.path.join(out, "deploy", "deploy"), probe, args.layout,
                                        args.tolerance),
        "onnx": lambda: export_onnx(net, os.path.join(out, "model.onnx"), probe, args.layout, args.tolerance)
        if args.prelu == "depthwise" else export_onnx_form(net, os.path.join(out, "model.onnx"), probe, args.layout,
                                                           args.prelu, args.tolerance),
        "int8": lambda: export_int8(net, os.path.join(out, "int8", "int8"), calib, probe, args.int8_min_cosine,
                                    args.calib_mode, accuracy("int8")),
        "onnx_int8": lambda: export_onnx_int8(net, os.path.join(out, "model_int8.onnx"), calib, probe, args.layout,
                                              args.int8_min_cosine, accuracy("int8")),
        "ncnn": lambda: export_ncnn(net, os.path.join(out, "ncnn"), probe, **mobile),
        "ncnn_fp16": lambda: export_ncnn(net, os.path.join(out, "ncnn_fp16"), probe, fp16=True,
                                         accuracy=accuracy("fp16"), **mobile),
        "mnn": lambda: export_mnn(net, os.path.join(out, "model.mnn"), probe, **mobile),
        "mnn_fp16": lambda: export_mnn(net, os.path.join(out, "model_fp16.mnn"), probe, fp16=True,
                                       accuracy=accuracy("fp16"), **mobile),
    }
    for fmt in formats:
        start = time.time()
        result = steps[fmt]()
        report["exports"][fmt] = result
        line = f"{fmt:7s} ok in {time.time() - start:5.1f}s: max abs diff {result['max_abs_diff']:.2e}, " \
               f"cosine min {result['min_cosine']:.6f} mean {result['mean_cosine']:.6f}"
        print(line + (f", layout {result['layout']}" if "layout" in result else ""))
        for name, acc in result.get("accuracy", {}).items():
            flag = f"  (more than {INT8_ACCURACY_WARNING} points lower!)" if acc["change"] < -INT8_ACCURACY_WARNING \
                else ""
            label = next(key for key in acc if key not in ("fp32", "change"))
            print(f"        {name}: fp32 {acc['fp32']:.2f}%  {label} {acc[label]:.2f}%  change {acc['change']:+.2f}"
                  f"{flag}")
    with open(os.path.join(out, "export.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"written to {out} (export.json holds the figures)")
    return 0


if __name__ == "__main__":
    run_cli(main)
