"""Training settings: defaults, per-network yaml files, a user config file and the command line.

Resolution order (later wins):

1. :data:`DEFAULTS` (the paper's MS1MV2 schedule, docs/training.md);
2. ``recipes/configs/<network>.yaml`` (per-network defaults from the paper: batch size, warm-up);
3. ``recipes/configs/synthetic.yaml`` when no ``--data-dir`` is given (a short schedule sized for 2 CPU cores);
4. the file given with ``--config`` (yaml; flat keys, or keys nested under group names);
5. options given explicitly on the command line.

When resuming, the checkpoint's saved settings take the place of 1–3 (except ``max_steps``, which each run
sets for itself). The resolved settings are an
``EasyDict`` (``cfg.lr`` and ``cfg["lr"]`` alike, as InsightFace's configs read), written to
``<output_dir>/config.yaml``, which ``--config`` accepts to repeat a run.
"""
import argparse
import os

import yaml
from easydict import EasyDict

from deploy.embedders import EVAL_BACKENDS

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

LOSSES = ("softmax", "arcface", "cosface", "combined")
KVSTORES = ("local", "device", "dist_sync", "dist_device_sync")
HYBRIDIZE = ("none", "plain", "alloc", "static")

# key -> (group, default, help). Types come from the defaults (None defaults are strings).
OPTIONS = {
    # data
    "data_dir": ("data", None, "folder with train.rec/train.idx/property and *.bin sets; omitted: the generated "
                               "synthetic dataset (cached under --synthetic-root)"),
    "synthetic_root": ("data", ".cache/synthetic", "where the default synthetic dataset is generated once"),
    "batch_size": ("data", 128, "batch size per device"),
    "num_workers": ("data", 1, "data decoding threads (0 = decode in the training loop's thread)"),
    "mirror": ("data", True, "random horizontal flip"),
    "color_jitter": ("data", 0.0, "brightness/contrast/saturation jitter strength (0 = off)"),
    # model
    "network": ("model", "seesaw_shuffle", "backbone name"),
    "emb_size": ("model", 512, "embedding size"),
    "act": ("model", None, "mobilefacenet activation (default: the network's own)"),
    "hybridize": ("model", "alloc", "backbone graph mode: none, plain (cached graph), alloc (cached graph with "
                                    "static_alloc: its buffers planned once and reused, the leanest), "
                                    "static (static_alloc+static_shape); all train alike"),
    "fused_ops": ("model", "auto", "one-pass CPU training operators (recipes/fused): auto (on for CPU training "
                                   "when g++ builds them), on, off"),
    # loss
    "loss": ("loss", "arcface", "margin head: softmax, arcface, cosface, combined"),
    "margin_s": ("loss", 64.0, "scale s of the normalised heads"),
    "margin_m": ("loss", 0.5, "margin m: angular (arcface, m2) or cosine (cosface, m3)"),
    "margin_m1": ("loss", 1.0, "combined head: multiplicative angular margin m1"),
    "margin_m2": ("loss", 0.5, "combined head: additive angular margin m2"),
    "margin_m3": ("loss", 0.0, "combined head: additive cosine margin m3"),
    "fc7_parallel": ("loss", False, "shard fc7 over the devices (model parallel, Partial FC): fc7 memory per "
                                    "device falls with the device count (recipes/partial_fc.py)"),
    "sample_rate": ("loss", 1.0, "with --fc7-parallel: fraction of each shard's classes in each step's softmax "
                                 "(the batch's classes always kept; 1.0 = exact softmax)"),
    "softmax_warmup_epochs": ("loss", 0.0, "epochs of normalised softmax (margin 0) before the margin phase"),
    "margin_warmup_epochs": ("loss", 0.0, "epochs over which the margin ramps linearly from 0 to full"),
    # optimiser
    "optimizer": ("optimiser", "sgd", "optimizer (SGD with momentum in the paper)"),
    "lr": ("optimiser", 0.1, "initial learning rate (global batch as configured)"),
    "lr_batch": ("optimiser", 0, "global batch --lr is meant for: a smaller global batch trains at "
                                 "lr x global batch / lr_batch (linear scaling; 0 = off)"),
    "momentum": ("optimiser", 0.9, "SGD momentum"),
    "wd": ("optimiser", 4e-5, "weight decay of backbone weights (none on BatchNorm, PReLU, biases)"),
    "fc7_wd": ("optimiser", 4e-4, "weight decay of the fc7 (margin head) weight"),
    "fc7_lr_mult": ("optimiser", 1.0, "learning-rate multiplier of the fc7 weight"),
    "num_epochs": ("optimiser", 16, "epochs in all"),
    "lr_steps": ("optimiser", "9,13,15", "epochs at which the lr is multiplied by --lr-factor"),
    "lr_factor": ("optimiser", 0.1, "lr step factor"),
    "warmup_epochs": ("optimiser", 0.0, "linear lr warm-up from 0 over these epochs (iteration based)"),
    "seed": ("optimiser", 0, "random seed (initialisation, data order, flips)"),
    "max_steps": ("optimiser", 0, "stop after N optimizer steps counted from the start of training (a resumed "
                                  "run counts the steps already done) with a checkpoint at that step, "
                                  "verification and the summary; --resume continues from it at the exact batch. "
                                  "The lr schedule still follows --num-epochs. Not inherited by a resumed run "
                                  "(0 = off)"),
    # devices
    "gpus": ("devices", "", "GPU ids, e.g. 0,1 (data parallel); empty: CPU"),
    "cpu_devices": ("devices", 1, "CPU contexts to split each step over (testing data parallelism on CPU)"),
    "kvstore": ("devices", "local", "local, device, dist_sync or dist_device_sync"),
    "horovod": ("devices", False, "data parallel over Horovod allreduce instead of a kvstore (start with horovodrun; "
                                  "one device per process, GPU local_rank when there are GPUs)"),
    "amp": ("devices", False, "mixed precision (float16 on GPU; ignored with a warning on CPU)"),
    "malloc_tuning": ("devices", True, "CPU training: keep MXNet's per-operator buffers in glibc's heap instead of "
                                       "fresh mappings (deploy/process.py tune_malloc, after the first step; "
                                       "1.1-1.2x the samples/s)"),
    # evaluation
    "eval_sets": ("evaluation", None, "comma-separated .bin set names (default: every *.bin in --data-dir; none: no verification)"),
    "eval_interval": ("evaluation", 0, "also verify every N batches (0: only at each epoch end)"),
    "eval_batch_size": ("evaluation", 64, "batch size of verification embedding"),
    "eval_flip": ("evaluation", True, "sum the embeddings of each image and its flip (the published protocol)"),
    "eval_backend": ("evaluation", "auto", "what embeds the verification images: onnxruntime (the live parameters "
                                           "lowered to the folded deploy graph at each evaluation, several times "
                                           "faster on CPU; falls back to mxnet with a warning for a network it "
                                           "cannot lower), mxnet (a oneDNN-fused copy of the network), or auto "
                                           "(onnxruntime on CPU when installed, mxnet on GPUs; default: auto)"),
    # output
    "output_dir": ("output", None, "output folder (default outputs/<network>)"),
    "prefix": ("output", "model", "checkpoint prefix inside the output folder"),
    "log_interval": ("output", 20, "batches between speed lines"),
    "plot": ("output", True, "write curves.png (loss and accuracy) as training goes"),
}
GROUPS = ("data", "model", "loss", "optimiser", "devices", "evaluation", "output")
DEFAULTS = {key: spec[1] for key, spec in OPTIONS.items()}
_TYPES = {"batch_size": int, "num_workers": int, "emb_size": int, "num_epochs": int, "seed": int,
          "cpu_devices": int, "eval_interval": int, "eval_batch_size": int, "log_interval": int, "max_steps": int}
# run control that a resumed run does not take over from its checkpoint's settings
NOT_RESUMED = ("max_steps",)
_CHOICES = {"loss": LOSSES, "kvstore": KVSTORES, "hybridize": HYBRIDIZE, "act": ("prelu", "swish"),
            "fused_ops": ("auto", "on", "off"),
            "eval_backend": EVAL_BACKENDS}


def _type_of(key):
    if key in _TYPES:
        return _TYPES[key]
    default = DEFAULTS[key]
    if isinstance(default, bool):
        return bool
    if isinstance(default, float):
        return float
    if isinstance(default, int):
        return int
    return str


def _parse_bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser(network_names=()):
    """The ``recipes/train.py`` argument parser (options grouped as data/model/loss/optimiser/...).

    Options default to ``argparse.SUPPRESS`` so that only explicitly given ones override the config layers.
    """
    parser = argparse.ArgumentParser(
        prog="python recipes/train.py",
        description="Train a SeesawFaceNets embedding network with a margin softmax head. "
                    "With no --data-dir a synthetic dataset is generated once and a short CPU schedule runs.",
        epilog="The defaults shown are the built-in layer. Settings resolve as: built-in defaults < "
               "recipes/configs/<network>.yaml (the paper's per-network batch size and warm-up) < "
               "recipes/configs/synthetic.yaml (no --data-dir) < --config FILE < command line. "
               "The resolved settings are written to OUTPUT_DIR/config.yaml.",
        argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="yaml file of settings (flat keys or nested by group)")
    parser.add_argument("--resume", nargs="?", const="auto",
                        help="continue from a checkpoint: a state file, an output folder, or nothing "
                             "(the output folder's last checkpoint)")
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for key, (group, default, text) in OPTIONS.items():
        flag = "--" + key.replace("_", "-")
        kind = _type_of(key)
        kwargs = {"help": text if "default" in text else f"{text} (default: {default})", "dest": key}
        if key == "network" and network_names:
            kwargs["choices"] = list(network_names)
        elif key in _CHOICES:
            kwargs["choices"] = list(_CHOICES[key])
        if kind is bool:
            groups[group].add_argument(flag, type=_parse_bool, metavar="BOOL", **kwargs)
        else:
            metavar = None if "choices" in kwargs else (key.upper() if kind is str else None)
            groups[group].add_argument(flag, type=kind, metavar=metavar, **kwargs)
    return parser


def _flatten(data, source):
    """Accept flat keys or one level of group nesting; hyphens become underscores. Unknown keys raise."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    flat = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in GROUPS and isinstance(value, dict):
            flat.update(_flatten(value, source))
            continue
        if name not in OPTIONS:
            raise ValueError(f"{source}: unknown setting {key!r}; valid settings: {', '.join(OPTIONS)}")
        flat[name] = value
    return flat


def load_yaml(path):
    """Read a settings file (flat or grouped keys) -> flat dict. Raises ValueError with the file name."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid yaml ({err})") from None
    return _flatten(data, path)


def _coerce(key, value, source):
    if value is None:
        return None
    kind = _type_of(key)
    try:
        if kind is bool:
            return value if isinstance(value, bool) else _parse_bool(value)
        if key == "lr_steps" and isinstance(value, (list, tuple)):
            return ",".join(str(int(v)) for v in value)
        return kind(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise ValueError(f"{source}: setting {key!r} expects {kind.__name__}, got {value!r}") from None


def network_defaults(network):
    """Per-network defaults from ``recipes/configs/<network>.yaml`` (empty dict when there is none)."""
    path = os.path.join(CONFIG_DIR, f"{network}.yaml")
    return load_yaml(path) if os.path.isfile(path) else {}


def resolve(cli=None, base=None):
    """Resolve settings. ``cli``: dict of explicitly given options (may hold 'config'); ``base``: settings that
    replace the built-in and per-network layers (a resumed checkpoint's). Returns a complete flat dict."""
    cli = dict(cli or {})
    user_file = cli.pop("config", None)
    cli.pop("resume", None)
    user = load_yaml(user_file) if user_file else {}
    explicit = dict(user, **cli)
    if base is not None:
        base = {k: v for k, v in base.items() if k not in NOT_RESUMED}
        layers = [("checkpoint", dict(DEFAULTS, **base))]
    else:
        network = explicit.get("network", DEFAULTS["network"])
        layers = [("defaults", DEFAULTS), (f"configs/{network}.yaml", network_defaults(network))]
        if not explicit.get("data_dir"):
            layers.append(("configs/synthetic.yaml", load_yaml(os.path.join(CONFIG_DIR, "synthetic.yaml"))))
    layers += [(user_file or "config", user), ("command line", cli)]
    cfg = {}
    for source, layer in layers:
        for key, value in layer.items():
            if key not in OPTIONS:
                raise ValueError(f"{source}: unknown setting {key!r}")
            cfg[key] = _coerce(key, value, source)
    validate(cfg)
    return EasyDict(cfg)


def lr_steps(cfg):
    """``cfg['lr_steps']`` as a sorted list of ints."""
    text = str(cfg["lr_steps"] or "").strip()
    try:
        steps = [int(float(s)) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--lr-steps expects comma-separated epochs such as 9,13,15, got {text!r}") from None
    return sorted(steps)


def validate(cfg):
    """Reject inconsistent settings with an actionable message."""
    for key, choices in _CHOICES.items():
        if cfg.get(key) is not None and cfg[key] not in choices:
            raise ValueError(f"{key} must be one of {', '.join(choices)}, got {cfg[key]!r}")
    positive = ("batch_size", "num_epochs", "emb_size", "eval_batch_size", "log_interval", "cpu_devices")
    for key in positive:
        if cfg[key] <= 0:
            raise ValueError(f"{key} must be positive, got {cfg[key]}")
    if cfg["max_steps"] < 0:
        raise ValueError(f"max_steps must be >= 0 (0 = off), got {cfg['max_steps']}")
    if cfg["lr"] <= 0:
        raise ValueError(f"lr must be positive, got {cfg['lr']}")
    if cfg["warmup_epochs"] < 0 or cfg["softmax_warmup_epochs"] < 0 or cfg["margin_warmup_epochs"] < 0:
        raise ValueError("warm-up epochs must be >= 0")
    if cfg["margin_s"] <= 0:
        raise ValueError(f"margin_s must be positive, got {cfg['margin_s']}")
    if cfg["horovod"] and cfg["kvstore"] != "local":
        raise ValueError("--horovod replaces the kvstore: drop --kvstore (or drop --horovod and start the job with "
                         "tools/launch.py)")
    if not 0.0 < cfg["sample_rate"] <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1], got {cfg['sample_rate']}")
    if cfg["sample_rate"] < 1.0 and not cfg["fc7_parallel"]:
        raise ValueError("--sample-rate below 1 needs --fc7-parallel true (class sampling is done per fc7 shard)")
    if cfg["fc7_parallel"] and (cfg["optimizer"] != "sgd" or cfg["amp"]):
        raise ValueError("--fc7-parallel updates fc7 with SGD momentum in float32: use --optimizer sgd, no --amp")
    steps = lr_steps(cfg)
    if any(s <= 0 for s in steps):
        raise ValueError(f"lr_steps must be positive epochs, got {cfg['lr_steps']}")
    return cfg


def save_yaml(cfg, path):
    """Write the resolved settings, grouped like ``--help``, atomically."""
    grouped = {group: {} for group in GROUPS}
    for key, value in cfg.items():
        grouped[OPTIONS[key][0]][key] = value  # plain values: yaml.safe_dump refuses dict subclasses
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("# resolved settings of this run; repeat it with: python recipes/train.py --config this-file\n")
        yaml.safe_dump(grouped, f, sort_keys=False, default_flow_style=False)
    os.replace(tmp, path)
