"""spherenet_tf/training/settings.py and cli.py: a script's settings block, the
command line over it, and what is refused."""

import os
import re
import subprocess
import sys

import pytest

from support.repo import REPO, script_env
from spherenet_tf.training import parse_settings


SCRIPT = {"n_class": 10, "batch_sz": 128, "batch_test": 100, "max_epoch": 64000, "lr": 1e-3,
          "data_path": "cifar10/", "model_file": "models/", "norm": "cosine", "w_norm": "none",
          "augmentation": "flip"}


def test_settings_block_and_command_line_overrides():
    script = str(REPO / "train_spherenet.py")
    s = parse_settings(SCRIPT, script, [])
    assert (s.batch_sz, s.lr, s.max_epoch, s.norm) == (128, 1e-3, 64000, "cosine")
    assert s.data_path == str(REPO / "cifar10") + os.sep  # relative to the script's folder
    s = parse_settings(SCRIPT, script, ["--lr", "1e-4", "--batch_sz=64", "--norm", "linear",
                                           "--model_file", "runs/a", "--deterministic"])
    assert (s.lr, s.batch_sz, s.norm, s.deterministic) == (1e-4, 64, "linear", True)
    assert s.model_file == "runs/a"  # command-line paths stay relative to the current folder


@pytest.mark.parametrize("argv,message", [
    (["--bach_sz", "64"], r"unrecognized arguments: --bach_sz \(did you mean --batch_sz\?\)"),
    (["--lr", "fast"], r"--lr expects a number, got 'fast'"),
    (["--batch_sz", "12.5"], r"--batch_sz expects an integer, got '12.5'"),
    (["--norm", "cosin"], r"--norm 'cosin' is not one of none, linear, cosine, sigmoid, lr_sigmoid "
                          r"\(did you mean 'cosine'\?\)"),
    (["--strategy", "mirror"], r"did you mean 'mirrored'"),
    (["--batch_sz", "0"], r"--batch_sz must be at least 1, got 0"),
])
def test_command_line_rejects_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_settings(SCRIPT, str(REPO / "train_spherenet.py"), argv)
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_baseline_has_no_norm_switch(capsys):
    baseline = {k: v for k, v in SCRIPT.items() if k not in ("norm", "w_norm")}
    with pytest.raises(SystemExit):
        parse_settings(baseline, str(REPO / "baseline" / "train_baseline.py"), ["--norm", "linear"])
    assert "unrecognized arguments: --norm" in capsys.readouterr().err


def test_help_from_the_scripts_own_folder():
    """`cd baseline && python train_baseline.py --help`, as the original README runs it."""
    out = subprocess.run([sys.executable, "train_baseline.py", "--help"], cwd=REPO / "baseline",
                         env=script_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--batch_sz INT" in out.stdout and "(default: 128)" in out.stdout
    assert "the dataset (relative to this folder, as in the" in out.stdout
    assert "(default: ../cifar10/)" in out.stdout and "--dataset STR" in out.stdout
    assert "--strategy" in out.stdout and "--norm" not in out.stdout
