"""Training settings: layers (defaults < network yaml < synthetic < --config < command line), help, saving."""
import pytest
import yaml

import symbols
from recipes import config


def _cli(argv):
    return vars(config.build_parser(symbols.list_models()).parse_args(argv))


def test_config_file_and_command_line_override(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("optimiser:\n  lr: 0.05\n  num_epochs: 3\nloss:\n  loss: cosface\n  margin_m: 0.35\n"
                    "data:\n  data_dir: /data/faces_emore\n")
    cfg = config.resolve(_cli(["--config", str(path), "--lr", "0.01", "--network", "mobilefacenet"]))
    assert cfg["lr"] == 0.01                 # command line beats the file
    assert cfg["num_epochs"] == 3            # the file beats the defaults
    assert cfg["loss"] == "cosface" and cfg["margin_m"] == 0.35
    assert cfg["batch_size"] == 256          # configs/mobilefacenet.yaml (paper: batch 256)
    assert cfg["warmup_epochs"] == 1.0       # mobile networks warm up by default
    assert cfg["momentum"] == 0.9 and cfg["lr_steps"] == "9,13,15"


def test_synthetic_layer_only_without_data_dir():
    short = config.resolve(_cli(["--network", "seesaw_shuffle"]))
    paper = config.resolve(_cli(["--network", "seesaw_shuffle", "--data-dir", "faces_emore"]))
    synthetic = config.load_yaml(config.CONFIG_DIR + "/synthetic.yaml")
    assert short["num_epochs"] == synthetic["num_epochs"] < 16
    assert paper["num_epochs"] == 16 and paper["batch_size"] == 192 and paper["margin_s"] == 64.0
    assert paper["lr"] == 0.1 and config.lr_steps(paper) == [9, 13, 15]


def test_every_network_has_defaults():
    for name in symbols.list_models():
        cfg = config.resolve({"network": name, "data_dir": "x"})
        assert cfg["network"] == name and cfg["loss"] == "arcface"


def test_bad_settings_are_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown setting 'learning_rate'"):
        config.resolve({"config": str(bad)})
    with pytest.raises(ValueError, match="does not exist"):
        config.resolve({"config": str(tmp_path / "missing.yaml")})
    with pytest.raises(ValueError, match="--lr-steps"):
        config.resolve({"lr_steps": "9,x"})
    with pytest.raises(SystemExit):
        _cli(["--network", "resnet100"])


def test_saved_config_round_trips(tmp_path):
    cfg = config.resolve(_cli(["--lr", "0.02", "--gpus", "", "--eval-sets", "lfw,cfp_fp"]))
    path = tmp_path / "config.yaml"
    config.save_yaml(cfg, str(path))
    grouped = yaml.safe_load(path.read_text())
    assert set(grouped) == set(config.GROUPS)
    assert config.resolve({"config": str(path)}) == cfg


def test_help_lists_groups(capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for group in config.GROUPS:
        assert f"\n{group}:" in text
    assert "--margin-s" in text and "seesaw_shuffle" in text


def test_lr_scales_down_below_lr_batch():
    from recipes.optim import base_lr, build_lr_scheduler
    paper = config.resolve(_cli(["--network", "seesaw_shuffle", "--data-dir", "faces_emore"]))
    assert paper["lr_batch"] == 512
    assert base_lr(paper, 64) == pytest.approx(0.0125)       # 0.1 x 64 / 512
    assert base_lr(paper, 4 * 192) == 0.1                     # a larger global batch keeps the configured lr
    sched = build_lr_scheduler(dict(paper, warmup_epochs=0.0), iters_per_epoch=10, global_batch=128)
    assert sched(1) == pytest.approx(0.025) and sched(95) == pytest.approx(0.025 * 0.1)
    short = config.resolve(_cli(["--network", "seesaw_shuffle"]))   # the default run: lr as written
    assert base_lr(short, short["batch_size"]) == short["lr"] == 0.05
