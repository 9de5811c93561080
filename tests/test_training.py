"""The shared training loop and the training scripts: schedule, command line, log
lines, checkpoints, saved model, distribution."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import REPO, load_module, script_env
from fake_cifar import synthetic_images
from spherenet_tf import training
from spherenet_tf.training import LOG_LINE, OriginalSchedule, Settings, Trainer, parse_settings

ORIGINAL_LINE = re.compile(r"^====iteration_(\d+): fit=\d+\.\d{4}, reg=\d+\.\d{4}, orth=\d+\.\d{4}, "
                           r"acc=\d\.\d{4}$")
ORIGINAL_LINE_NO_ORTH = re.compile(r"^====iteration_(\d+): fit=\d+\.\d{4}, reg=\d+\.\d{4}, acc=\d\.\d{4}$")
TEST_LINE = re.compile(r"^\+\+\+\+iteration_(\d+): test acc=\d\.\d{4}$")


def test_lr_schedule_matches_the_originals_indexing():
    schedule = OriginalSchedule(1e-3)
    expected = {0: 1e-3, 33999: 1e-3, 34000: 1e-4, 53999: 1e-4, 54000: 1e-5, 64000: 1e-5}
    for i, lr in expected.items():
        assert schedule.at(i) == pytest.approx(lr, rel=1e-12)
        assert float(schedule(i)) == pytest.approx(lr, rel=1e-6)
    # through Keras: the optimizer evaluates the schedule at `iterations`, which is i
    # while step i runs (the original divides before running step 34000)
    opt = keras.optimizers.Adam(learning_rate=schedule, **training.ADAM)
    for i, lr in expected.items():
        opt.iterations.assign(i)
        assert float(opt.learning_rate) == pytest.approx(lr, rel=1e-6)
    assert float(opt.epsilon) == 1e-8 and (opt.beta_1, opt.beta_2) == (0.9, 0.999)


def test_one_adam_step_uses_the_scheduled_lr():
    schedule = OriginalSchedule(1e-3)
    opt = keras.optimizers.Adam(learning_rate=schedule, **training.ADAM)
    w = tf.Variable([1.0, -2.0])
    opt.build([w])
    for i, lr in [(33999, 1e-3), (34000, 1e-4), (54000, 1e-5)]:
        w.assign([1.0, -2.0])
        opt.iterations.assign(i)
        for slot in opt.variables[1:]:
            slot.assign(tf.zeros_like(slot))
        opt.apply_gradients([(tf.constant([0.5, -0.5]), w)])
        t = i + 1  # Adam's bias correction uses the step count
        step = lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * 0.05 / (np.sqrt(0.00025) + 1e-8)
        np.testing.assert_allclose(w.numpy(), [1.0 - step, -2.0 + step], rtol=1e-5)


SCRIPT = {"n_class": 10, "batch_sz": 128, "batch_test": 100, "max_epoch": 64000, "lr": 1e-3,
          "data_path": "cifar10/", "model_file": "models/", "norm": "cosine", "w_norm": "none",
          "augmentation": "flip"}


def test_settings_block_and_command_line_overrides():
    script = str(REPO / "train_spherenet.py")
    s, _ = parse_settings(SCRIPT, script, [])
    assert (s.batch_sz, s.lr, s.max_epoch, s.norm) == (128, 1e-3, 64000, "cosine")
    assert s.data_path == str(REPO / "cifar10") + os.sep  # relative to the script's folder
    s, _ = parse_settings(SCRIPT, script, ["--lr", "1e-4", "--batch_sz=64", "--norm", "linear",
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
    assert "CIFAR-10 (relative to this folder, as in the original)" in out.stdout
    assert "--strategy" in out.stdout and "--norm" not in out.stdout


def _lines(text, pattern):
    return [int(m.group(1)) for m in map(pattern.match, text.splitlines()) if m]


def test_short_run_of_train_spherenet_on_mock_data(tmp_path, capsys):
    """The real script on tfds mock data: the original's lines at the right iterations, in
    stdout and training.log; checkpoints; a final .keras reloading to identical predictions."""
    module = load_module("train_spherenet.py")
    argv = ["--data_path", str(tmp_path / "data"), "--model_file", str(tmp_path / "run") + "/",
            "--max_epoch", "24", "--batch_sz", "8", "--batch_test", "8", "--log_every", "5",
            "--eval_every", "10", "--save_every", "20", "--checkpoint_every", "10",
            "--progress", "off", "--no-download"]
    with tfds.testing.mock_data(num_examples=32):
        training.main(vars(module), module.build_model, module.__file__, argv=argv)
    out = capsys.readouterr().out
    assert _lines(out, ORIGINAL_LINE) == [5, 10, 15, 20]
    assert _lines(out, TEST_LINE) == [10, 20]
    log = (tmp_path / "run" / "training.log").read_text()
    assert log == out  # stdout holds exactly the original's lines, as the log file
    assert (tmp_path / "run" / "20.index").exists()  # model_file + str(i), as the original
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["max_epoch"] == 24 and settings["model"] == "spherenet9"
    model = keras.models.load_model(tmp_path / "run" / "final.keras")
    assert model.get_layer("conv1_0").norm == "cosine"
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    restored = module.build_model(Settings())
    tf.train.Checkpoint(model=restored).read(str(tmp_path / "run" / "resume" / "ckpt-25")).expect_partial()
    np.testing.assert_array_equal(model(x, training=False).numpy(), restored(x, training=False).numpy())


def _synthetic(n_train=512, n_test=200):
    labels = (np.arange(n_train) % 10).astype(np.int32)
    test_labels = (np.arange(n_test) % 10).astype(np.int32)
    return ((synthetic_images(labels, 0), labels), (synthetic_images(test_labels, 1), test_labels))


def test_training_lowers_the_loss_and_learns(tmp_path, capsys):
    module = load_module("train_spherenet.py")
    s = Settings(max_epoch=60, batch_sz=16, batch_test=50, log_every=10, eval_every=60,
                 save_every=1000, checkpoint_every=1000, model_file=str(tmp_path) + "/",
                 progress="off")
    trainer = Trainer(s, module.build_model, data=_synthetic())
    test_acc = trainer.fit()
    out = capsys.readouterr().out
    assert _lines(out, ORIGINAL_LINE) == [10, 20, 30, 40, 50, 60]
    metrics = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    fits = [m["fit"] for m in metrics if "fit" in m]
    assert fits[-1] < 0.5 * fits[0], fits
    assert test_acc > 0.5  # 10 classes: chance is 0.1
    assert trainer.iteration == 61  # iterations 0..max_epoch


def test_baseline_lines_have_no_orth(tmp_path, capsys):
    baseline = load_module("baseline/train_baseline.py")
    argv = ["--data_path", str(tmp_path / "data"), "--model_file", str(tmp_path / "run"),
            "--max_epoch", "10", "--batch_sz", "8", "--batch_test", "8", "--log_every", "5",
            "--eval_every", "10", "--progress", "off", "--no-download"]
    with tfds.testing.mock_data(num_examples=16):
        training.main(vars(baseline), baseline.build_model, baseline.__file__, argv=argv)
    out = capsys.readouterr().out
    assert _lines(out, ORIGINAL_LINE_NO_ORTH) == [5, 10] and _lines(out, TEST_LINE) == [10]
    assert "orth=" not in out


@pytest.mark.slow
def test_two_cpu_replicas_give_the_losses_of_one_device(binary_dir, tmp_path):
    """MirroredStrategy over 2 logical CPUs: same global batch of 8 and BN over the
    global batch, so the same fit/reg/orth/acc as the default strategy on one device.

    Float tolerance: the first step's values differ only by summation order (measured
    3e-5 relative); Adam's sign-like early steps then amplify such differences (see
    test_golden_models), measured 1.6e-3 after 4 steps.
    """
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
        rel = 1e-4 if a["iteration"] == 1 else 5e-3
        for key in ("fit", "reg", "orth"):
            assert b[key] == pytest.approx(a[key], rel=rel), (a["iteration"], key)
        assert abs(b["acc"] - a["acc"]) <= 1 / 8
