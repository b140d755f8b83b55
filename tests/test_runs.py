"""recipes.runs / tools/compare_runs.py: finished runs side by side from their metrics.csv and loss.csv."""
import csv
import os
import subprocess
import sys

import pytest

from recipes import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["step", "epoch", "lr", "a_accuracy", "b_accuracy", "mean_accuracy", "train_accuracy"]


def _run(folder, accuracies):
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for epoch, (a, b) in enumerate(accuracies, 1):
            w.writerow([epoch * 10, epoch, 0.1, a, b, (a + b) / 2, 0.5])
    with open(os.path.join(folder, "loss.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "loss"])
        w.writerows([[5, 0.5, 3.0], [10, 1.0, 2.0]])
    return str(folder)


def test_table_rows_per_run_and_epoch(tmp_path):
    one = runs.load_run(_run(tmp_path / "one", [(0.8, 0.9), (0.95, 0.97)]))[0]
    two = runs.load_run(_run(tmp_path / "two", [(0.7, 0.6)]))[0]
    text = runs.table([("arc", one), ("soft", two)]).splitlines()
    assert text[0] == "| run | epoch | lr | a | b | mean |"
    assert text[2] == "| arc | 1 | 0.1 | 80.00 | 90.00 | **85.00** |"
    assert text[3].startswith("| arc | 2 |") and text[4] == "| soft | 1 | 0.1 | 70.00 | 60.00 | **65.00** |"


def test_runs_on_other_sets_and_empty_folders_are_refused(tmp_path):
    one = runs.load_run(_run(tmp_path / "one", [(0.8, 0.9)]))[0]
    other = [{k.replace("b_", "c_"): v for k, v in row.items()} for row in one]
    with pytest.raises(ValueError, match="verified on"):
        runs.table([("x", one), ("y", other)])
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no metrics.csv"):
        runs.load_run(str(tmp_path / "empty"))


def test_command_prints_the_table_and_writes_the_curves(tmp_path):
    a, b = _run(tmp_path / "a", [(0.8, 0.9)]), _run(tmp_path / "b", [(0.7, 0.6)])
    out = tmp_path / "cmp.png"
    res = subprocess.run([sys.executable, "tools/compare_runs.py", a, b, "--labels", "arc,soft", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "| soft | 1 |" in res.stdout and out.stat().st_size > 1000
    bad = subprocess.run([sys.executable, "tools/compare_runs.py", a, "--labels", "x,y"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
