"""Every kind of bad input gets a message that says what was received, what is allowed
and what to do -- through the layer, the model builders, the command line, the
data pipeline, the cluster description and the training loop.

Each message asserted here is also printed at the end of the test run (the figures
for the closing note: bad inputs tried, and what each one says).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from support.repo import REPORT, TINY, load_module, script_env
from support.fake_cifar import load_cifar10, write_tfds_cifar
from spherenet_tf import cifar10_input as ci
from spherenet_tf import training
from spherenet_tf.checks import InputError, check_dataset, check_images, check_labels, check_tf_config
from spherenet_tf.models import build_cnn9
from spherenet_tf.training import Settings, Trainer, TrainingError

MESSAGES = {}
REPORT["bad inputs"] = lambda: (f"{len(MESSAGES)} bad inputs tried, each refused with a message:\n"
                                + "\n".join(f"  {k}: {v[:240]}" for k, v in MESSAGES.items())
                                if MESSAGES else "")


def _record(name, message):
    MESSAGES[name] = " ".join(str(message).split())
    return MESSAGES[name]


def _cli(args, timeout=300):
    out = subprocess.run([sys.executable, TINY] + args, env=script_env(), capture_output=True,
                         text=True, timeout=timeout)
    return out.returncode, out.stderr


# ---------------------------------------------------------------------------
# norm / w_norm: the builders and the command line (the layer: test_sphereconv_contract)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("builder,kwargs,pattern", [
    ("spherenet", dict(norm="cosin"), r"Unknown value for `norm` argument of build_cnn9\. Allowed values "
     r"are: 'none', 'linear', 'cosine', 'sigmoid', 'lr_sigmoid'\. Received: norm='cosin'\. "
     r"Did you mean 'cosine'\?"),
    ("spherenet", dict(w_norm="sigmoidal"), r"`w_norm` argument of build_cnn9\. Allowed values are: "
     r"'none', 'linear', 'cosine', 'sigmoid'\. Received: w_norm='sigmoidal'\. Did you mean 'sigmoid'\?"),
    ("sphere_resnet", dict(norm="Linear"), r"`norm` argument of build_resnet32\..*Received: "
     r"norm='Linear'\. Did you mean 'linear'\?"),
])
def test_builders_suggest_the_closest_switch(builder, kwargs, pattern):
    build = (load_module("spherenet.py").build_spherenet if builder == "spherenet"
             else load_module("sphere_resnet/sphere_resnet_v1.py").build_sphere_resnet)
    with pytest.raises(ValueError, match=pattern) as e:
        build(**kwargs)
    _record(f"{builder} builder {kwargs}", e.value)


def test_command_line_suggests_the_closest_switch(capsys):
    code, err = _cli(["--norm", "sigmoidd"], timeout=120)
    assert code == 2
    assert ("error: --norm 'sigmoidd' is not one of none, linear, cosine, sigmoid, lr_sigmoid "
            "(did you mean 'sigmoid'?)") in err
    _record("command line --norm sigmoidd", err.strip().splitlines()[-1])
    script = load_module("train_spherenet.py")
    with pytest.raises(SystemExit) as e:
        training.parse_settings(vars(script), script.__file__, ["--w_norm", "cosin"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--w_norm 'cosin' is not one of none, linear, cosine, sigmoid (did you mean 'cosine'?)" in err
    _record("command line --w_norm cosin", err.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Images and labels
# ---------------------------------------------------------------------------
IMAGE_CASES = {
    "28x28 grayscale": (np.zeros((4, 28, 28, 1), np.uint8), r"have shape \(4, 28, 28, 1\), dtype uint8; "
                        r"the model takes \[N, 32, 32, 3\] images \(channels last\)\. Resize or crop"),
    "no channel axis": (np.zeros((4, 32, 32), np.uint8), r"shape \(4, 32, 32\).*Resize or crop"),
    "one channel": (np.zeros((4, 32, 32, 1), np.uint8), r"expects 3 channel\(s\): convert the images"),
    "channels first": (np.zeros((4, 3, 32, 32), np.uint8), r"look channels-first: transpose them "
                       r"with images\.transpose\(0, 2, 3, 1\)"),
    "one image": (np.zeros((32, 32, 3), np.uint8), r"That is one image: add the batch axis with images\[None\]"),
    "64x64": (np.zeros((4, 64, 64, 3), np.uint8), r"shape \(4, 64, 64, 3\).*\[N, 32, 32, 3\]"),
    "normalised floats": (np.full((4, 32, 32, 3), -0.5, np.float32), r"have values from -0\.5 to -0\.5; "
                          r"the model takes pixel values in 0\.\.255 and normalises them itself"),
    "NaN pixels": (np.full((4, 32, 32, 3), np.nan, np.float32), r"contain 12288 NaN/Inf values"),
    "strings": (np.full((4, 32, 32, 3), "x"), r"must be numeric pixel values 0\.\.255 \(uint8 or "
                r"float\); received shape \(4, 32, 32, 3\), dtype <U1"),
    "a list": ([[0.0]], r"must be an array of \[N, 32, 32, 3\] images; received a list\. Convert it"),
    "int16 above 255": (np.full((4, 32, 32, 3), 1000, np.int16), r"values from 1000 to 1000"),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_images_are_refused(case):
    images, pattern = IMAGE_CASES[case]
    with pytest.raises(InputError, match=pattern) as e:
        check_images(images, (32, 32, 3))
    _record(f"images: {case}", e.value)


LABEL_CASES = {
    "out of range": (np.array([0, 3, 10, 12]), r"range from 0 to 12, but n_class=10 allows 0\.\.9 \(2 "
                     r"labels outside, e\.g\. 10\)\. Set --n_class"),
    "negative": (np.array([0, -1, 2, 3]), r"range from -1 to 3"),
    "one-hot": (np.eye(10)[[1, 2, 3, 4]], r"shape \(4, 10\): they look one-hot\. .*labels\.argmax"),
    "fractional": (np.array([0.0, 1.5, 2.0, 3.0]), r"must be integer class indices 0\.\.9; received "
                   r"dtype float64 with non-integer values such as 1\.5"),
    "wrong count": (np.array([1, 2, 3]), r"shape \(3,\), dtype int64; expected one class index per "
                    r"image: shape \(4,\)"),
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_bad_labels_are_refused(case):
    labels, pattern = LABEL_CASES[case]
    with pytest.raises(InputError, match=pattern) as e:
        check_labels(labels, 4, 10)
    _record(f"labels: {case}", e.value)


def test_good_data_passes_and_the_trainer_checks_its_data(tmp_path):
    images = np.random.RandomState(0).randint(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(16) % 10
    (x, y), _ = check_dataset(((images, labels), (images.astype(np.float32), labels[:, None])), 10,
                              (32, 32, 3), 8)
    assert x is images and y.dtype == np.int32
    s = Settings(model_file=str(tmp_path / "run"), batch_sz=8, progress="off")
    bad = ((images, labels), (images, labels + 5))
    with pytest.raises(TrainingError, match=r"test labels range from 5 to 14, but n_class=10"):
        Trainer(s, lambda s: build_cnn9(widths=(8, 8, 8)), data=bad)
    with pytest.raises(TrainingError, match=r"training set has 16 images, fewer than one batch "
                                            r"\(batch_sz=32\)\. Use a smaller --batch_sz"):
        Trainer(Settings(model_file=str(tmp_path / "run"), batch_sz=32, progress="off"),
                lambda s: build_cnn9(widths=(8, 8, 8)), data=((images, labels), (images, labels)))


# ---------------------------------------------------------------------------
# Distribution: replicas, cluster description
# ---------------------------------------------------------------------------
def test_batch_not_divisible_by_the_replicas():
    code, err = _cli(["--cpu_replicas", "3", "--batch_sz", "8", "--data_path", "/nonexistent"], timeout=120)
    assert code == 2, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line == ("error: batch_sz=8 is not divisible by the 3 replicas of the MirroredStrategy: every "
                    "replica must get the same share of the batch. Use a multiple of 3 (e.g. --batch_sz 6) "
                    "or fewer devices.")
    _record("--cpu_replicas 3 --batch_sz 8", line)


TF_CONFIGS = {
    "unset": ("", r"needs the TF_CONFIG environment variable describing the cluster; it is not set\. "
                  r"Set it on every machine, e\.g\."),
    "not JSON": ("{cluster: 1}", r"TF_CONFIG is not valid JSON \(Expecting property name enclosed in "
                                 r"double quotes at character 1\)\. Received: '\{cluster: 1\}'"),
    "no task": ('{"cluster": {"worker": ["a:1", "b:2"]}}', r"no \"task\" with a \"type\" and an \"index\""),
    "index out of range": ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
                           r"task index 2 is outside its 'worker' list of 2 address\(es\).*use 0 \.\. 1"),
    "unknown job": ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
                    r"task type 'ps' is not a job of its cluster \(jobs: 'worker'\)"),
    "no port": ('{"cluster": {"worker": ["a", "b:2"]}, "task": {"type": "worker", "index": 0}}',
                r"must be a list of \"host:port\" strings\. Received: \['a', 'b:2'\]"),
}


@pytest.mark.parametrize("case", list(TF_CONFIGS))
def test_bad_tf_config_is_explained(case):
    text, pattern = TF_CONFIGS[case]
    with pytest.raises(InputError, match=pattern) as e:
        check_tf_config(text)
    _record(f"TF_CONFIG {case}", e.value)
    if case == "unset":
        assert check_tf_config('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}')


# ---------------------------------------------------------------------------
# Dataset files
# ---------------------------------------------------------------------------
def test_missing_dataset_offline_exits_with_the_command_to_run(tmp_path, monkeypatch, capsys):
    code, err = _cli(["--data_path", str(tmp_path / "empty"), "--model_file", str(tmp_path / "run"),
                      "--no-download"], timeout=120)
    assert code == 2, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: No CIFAR-10 data in {tmp_path / 'empty'}") and "./dataset_setup.sh" in line
    _record("no data, --no-download", line)
    # with downloads allowed but no network: the same exit, at once, saying so
    monkeypatch.setattr(ci, "_network_reachable", lambda *a, **k: False)
    script = load_module("tests/support/tiny_train.py")
    with pytest.raises(SystemExit) as e:
        training.main(vars(script), script.build_model, script.__file__,
                      argv=["--data_path", str(tmp_path / "empty"), "--model_file", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "the download host www.cs.toronto.edu cannot be reached. Run `./dataset_setup.sh" in err
    _record("no data, no network", err.strip().splitlines()[-1])


def test_truncated_binary_file_through_the_command_line(binary_dir, tmp_path, capsys):
    data = tmp_path / "cifar"
    data.mkdir()
    for name in os.listdir(binary_dir):
        os.symlink(os.path.join(binary_dir, name), data / name)
    os.remove(data / "test_batch.bin")
    (data / "test_batch.bin").write_bytes(b"\0" * (ci.RECORD_BYTES * 5 + 100))
    script = load_module("tests/support/tiny_train.py")
    with pytest.raises(SystemExit) as e:
        training.main(vars(script), script.build_model, script.__file__,
                      argv=["--data_path", str(data), "--model_file", str(tmp_path / "run")])
    assert e.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: {data / 'test_batch.bin'} is truncated or not a CIFAR-10 binary file" in line
    _record("truncated test_batch.bin", line)


@pytest.mark.parametrize("damage", ["truncated shard", "corrupt metadata"])
def test_corrupt_tensorflow_datasets_copy(tmp_path, damage):
    version_dir = write_tfds_cifar(str(tmp_path))
    (train_x, _), (test_x, _) = load_cifar10(str(tmp_path), download=False)
    assert train_x.shape == (40, 32, 32, 3) and test_x.shape == (20, 32, 32, 3)  # the copy is readable
    if damage == "truncated shard":
        shard = os.path.join(version_dir, "cifar10-train.tfrecord-00000-of-00001")
        with open(shard, "rb") as f:
            data = f.read()
        with open(shard, "wb") as f:
            f.write(data[: len(data) // 2 + 7])
        pattern = r"is corrupt or incomplete \(DataLossError: truncated record at"
    else:
        with open(os.path.join(version_dir, "dataset_info.json"), "w") as f:
            f.write("{not json")
        pattern = r"is corrupt or incomplete \(ParseError: .*Failed to load JSON"
    with pytest.raises(ci.DatasetError, match=pattern + r".*\)\. Delete .*cifar10 and prepare it "
                                              r"again: Run `\./dataset_setup\.sh ") as e:
        load_cifar10(str(tmp_path), download=True)  # never downloads over a damaged copy
    _record(f"tfds copy: {damage}", e.value)


# ---------------------------------------------------------------------------
# model_file
# ---------------------------------------------------------------------------
def test_unwritable_model_file(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    s = Settings(model_file=str(blocker / "run"), progress="off")
    with pytest.raises(TrainingError, match=r"model_file folder .*a_file/run' cannot be written \(Not a "
                                            r"directory\)\. Checkpoints, the log and the final model go "
                                            r"there: choose a writable folder with --model_file\.") as e:
        Trainer(s, lambda s: build_cnn9(widths=(8, 8, 8)), data=None)
    _record("model_file under a file", e.value)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(TrainingError, match=r"cannot be written \(Permission denied\)"):
            Trainer(Settings(model_file=str(locked / "run"), progress="off"),
                    lambda s: build_cnn9(widths=(8, 8, 8)), data=None)


def test_mock_tfds_still_loads(tmp_path):
    """The damaged-copy handling leaves the missing-data path (and tfds mocks) alone."""
    with tfds.testing.mock_data(num_examples=12):
        (train_x, _), _ = load_cifar10(str(tmp_path), download=False)
    assert train_x.shape == (12, 32, 32, 3)
