"""spherenet_tf/training/distribution.py: the same run under a MirroredStrategy of two
CPU replicas as on one device."""

import json
import subprocess
import sys

import pytest

from support.repo import REPO, script_env
from support.tolerances import FIRST_STEP_TOL, LATER_TOL, PRE_UPDATE_TOL


@pytest.mark.slow
def test_two_cpu_replicas_give_the_losses_of_one_device(binary_dir, tmp_path):
    """MirroredStrategy over 2 logical CPUs: same global batch of 8 and BN over the
    global batch, so the same fit/reg/orth/acc as the default strategy on one device
    (the logged iterations 1-5; tolerances in support/tolerances.py)."""
    def run(name, extra):
        model_file = tmp_path / name
        cmd = [sys.executable, str(REPO / "train_spherenet.py"), "--data_path", binary_dir,
               "--model_file", str(model_file), "--max_epoch", "5", "--batch_sz", "8",
               "--log_every", "1", "--eval_every", "1000", "--checkpoint_every", "1000",
               "--progress", "off", "--norm", "sigmoid"] + extra
        out = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = (model_file / "metrics.jsonl").read_text().splitlines()
        return [json.loads(l) for l in lines], out.stderr

    one, _ = run("one", [])
    two, err = run("two", ["--strategy", "mirrored", "--cpu_replicas", "2"])
    assert "MirroredStrategy with 2 replica(s)" in err
    assert [m["iteration"] for m in one] == [m["iteration"] for m in two] == [1, 2, 3, 4, 5]
    for a, b in zip(one, two):
        rel = FIRST_STEP_TOL if a["iteration"] == 1 else LATER_TOL
        for key in ("fit", "reg", "orth"):
            assert b[key] == pytest.approx(a[key], rel=rel), (a["iteration"], key)
        assert abs(b["acc"] - a["acc"]) <= 1 / 8


def test_two_cpu_replicas_give_the_loss_of_one_device_before_any_update(binary_dir, tmp_path):
    """Iteration 0 (not logged: a run logs from iteration 1) through the script's own
    Trainer and compiled step: before any update, two replicas and one device differ
    only by summation order."""
    def steps(name, extra):
        out = tmp_path / f"{name}.json"
        args = ["--data_path", binary_dir, "--model_file", str(tmp_path / name), "--batch_sz", "8",
                "--progress", "off", "--norm", "sigmoid"] + extra
        run = subprocess.run([sys.executable, "-m", "support.first_steps", str(out), "1", *args],
                             env=script_env(), cwd=str(REPO / "tests"), capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads(out.read_text())

    one = steps("one", [])
    two = steps("two", ["--strategy", "mirrored", "--cpu_replicas", "2"])
    assert (one["replicas"], two["replicas"]) == (1, 2)
    a, b = one["steps"][0], two["steps"][0]
    for key in ("fit", "reg", "orth"):
        assert b[key] == pytest.approx(a[key], rel=PRE_UPDATE_TOL), key
    assert b["acc"] == a["acc"]
