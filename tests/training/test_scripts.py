"""The training scripts end to end on the shared loop (spherenet_tf/training/loop.py):
the original's log lines at the right iterations, checkpoints, the saved model."""

import json

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from support.repo import load_module
from support.fake_cifar import TRAIN_FILES, synthetic_images
from support.lines import ORIGINAL_LINE, ORIGINAL_LINE_NO_ORTH, TEST_LINE, iterations
from spherenet_tf import training
from support.runs import script_trainer
from spherenet_tf.training import Settings


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
    assert iterations(out, ORIGINAL_LINE) == [5, 10, 15, 20]
    assert iterations(out, TEST_LINE) == [10, 20]
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
    trainer = script_trainer(s, module.build_model, data=_synthetic())
    test_acc = trainer.fit()
    out = capsys.readouterr().out
    assert iterations(out, ORIGINAL_LINE) == [10, 20, 30, 40, 50, 60]
    metrics = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    fits = [m["fit"] for m in metrics if "fit" in m]
    assert fits[-1] < 0.5 * fits[0], fits
    # 10 classes: chance is 0.1.  After 60 iterations the BN moving averages (from zero,
    # decay 0.999, as the original's) are 6 % of the way, so the test accuracy is far
    # from settled and moves with the last bits of the arithmetic: 0.475-0.805 measured
    # with oneDNN on and off, for the fast path before and after its backward rewrite.
    assert test_acc > 0.3
    assert trainer.iteration == 61  # iterations 0..max_epoch


def test_baseline_lines_have_no_orth(tmp_path, capsys):
    baseline = load_module("baseline/train_baseline.py")
    argv = ["--data_path", str(tmp_path / "data"), "--model_file", str(tmp_path / "run"),
            "--max_epoch", "10", "--batch_sz", "8", "--batch_test", "8", "--log_every", "5",
            "--eval_every", "10", "--progress", "off", "--no-download"]
    with tfds.testing.mock_data(num_examples=16):
        training.main(vars(baseline), baseline.build_model, baseline.__file__, argv=argv)
    out = capsys.readouterr().out
    assert iterations(out, ORIGINAL_LINE_NO_ORTH) == [5, 10] and iterations(out, TEST_LINE) == [10]
    assert "orth=" not in out


def test_a_100_iteration_run_on_binary_files_of_200_and_100_records(tmp_path):
    """Binary files holding 200 training and 100 test records each (a subset, or a
    user's own data in CIFAR-10's format): read as they are, with one note, and the run
    prints the original's lines (issue 13: the reader refused any count but 10,000)."""
    import subprocess
    import sys

    from support.fake_cifar import records
    from support.repo import TINY, script_env
    from spherenet_tf import cifar10_input as ci

    rng = np.random.RandomState(0)
    data = tmp_path / "data"
    data.mkdir()
    for name, n in [(f, 200) for f in TRAIN_FILES] + [(ci.TEST_FILE, 100)]:
        labels = rng.randint(0, 10, n)
        (data / name).write_bytes(records(synthetic_images(labels, len(name)), labels))
    out = subprocess.run(
        [sys.executable, TINY, "--data_path", str(data), "--model_file", str(tmp_path / "run"),
         "--max_epoch", "100", "--log_every", "20", "--eval_every", "50", "--progress", "off"],
        env=script_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert iterations(out.stdout, ORIGINAL_LINE) == [20, 40, 60, 80, 100]
    assert iterations(out.stdout, TEST_LINE) == [50, 100]
    assert (f"note: the binary files in {data} hold 1000 training and 100 test images "
            "(CIFAR-10 has 50000 and 10000); using them as they are.") in out.stderr
