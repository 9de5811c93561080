"""--dataset cifar100: CIFAR-100's binary files and tensorflow-datasets copy, n_class,
and the same bad-input handling as CIFAR-10.  Nothing downloads: the data is
generated (support/fake_cifar.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from support.fake_cifar import write_binary_cifar100, write_tfds_cifar
from support.repo import REPO, TINY, load_module, script_env
from spherenet_tf import cifar10_input as ci
from spherenet_tf import training

RECORD = 2 + 3072


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cifar100_bin")
    return str(path), write_binary_cifar100(str(path))


def test_binary_files_give_the_fine_labels_and_the_images(cifar100_dir):
    path, content = cifar100_dir
    (train_x, train_y), (test_x, test_y) = ci.load_dataset(path, "cifar100", download=False)
    images, fine, coarse = content["train.bin"]
    np.testing.assert_array_equal(train_x, images)
    np.testing.assert_array_equal(train_y, fine)
    assert not np.array_equal(train_y, coarse)
    np.testing.assert_array_equal(test_x, content["test.bin"][0])
    np.testing.assert_array_equal(test_y, content["test.bin"][1])
    # byte layout, decoded by hand: record 3 = coarse, fine, R plane, G plane, B plane
    raw = np.fromfile(os.path.join(path, "train.bin"), np.uint8)[3 * RECORD:4 * RECORD]
    assert (raw[0], raw[1]) == (coarse[3], fine[3])
    np.testing.assert_array_equal(train_x[3, :, :, 1], raw[2 + 1024:2 + 2048].reshape(32, 32))


def test_a_tensorflow_datasets_copy_is_read(tmp_path):
    write_tfds_cifar(str(tmp_path), name="cifar100")
    (train_x, train_y), (test_x, _) = ci.load_dataset(str(tmp_path), "cifar100", download=False)
    assert train_x.shape == (40, 32, 32, 3) and test_x.shape == (20, 32, 32, 3)
    assert train_y.max() >= 10  # fine labels, not CIFAR-10's


def _write(path, name, data):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)


def _main_error(argv, capsys):
    script = load_module("tests/support/tiny_train.py")
    with pytest.raises(SystemExit) as e:
        training.main(vars(script), script.build_model, script.__file__, argv=argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("case", ["missing test.bin", "truncated", "CIFAR-10 records",
                                  "fine label 100", "coarse label 20", "no data"])
def test_bad_cifar100_input_gives_one_line_and_exit_code_2(case, cifar100_dir, tmp_path, capsys):
    good, _ = cifar100_dir
    data = tmp_path / "data"
    train = open(os.path.join(good, "train.bin"), "rb").read()
    test = open(os.path.join(good, "test.bin"), "rb").read()
    expected = {
        "missing test.bin": (dict(train=train), "holds some of the CIFAR-100 binary files but not "
                             "test.bin. Run `./dataset_setup.sh --dataset cifar100"),
        "truncated": (dict(train=train, test=test[:RECORD * 5 + 100]),
                      "test.bin is truncated or not a CIFAR-100 binary file: 15470 bytes is not a "
                      "multiple of the 3074-byte record (2 label bytes + 3072 image bytes)"),
        "CIFAR-10 records": (dict(train=train, test=b"\0" * 3073 * 5),
                             "would fit CIFAR-10's records (--dataset cifar10)"),
        "fine label 100": (dict(train=train, test=b"\x01\x64" + test[2:]),
                           "test.bin has label 100 (0..99): the file is corrupt or not CIFAR-100"),
        "coarse label 20": (dict(train=train, test=b"\x14\x01" + test[2:]),
                            "test.bin has coarse label 20 (0..19)"),
        "no data": ({}, f"No CIFAR-100 data in {data}"),
    }
    files, message = expected[case]
    os.makedirs(data)
    for name, content in files.items():
        _write(data, f"{name}.bin", content)
    line = _main_error(["--dataset", "cifar100", "--data_path", str(data), "--model_file",
                        str(tmp_path / "run"), "--no-download"], capsys)
    assert line.startswith("error: ") and message in line, line


def test_n_class_that_does_not_match_the_dataset_is_refused(capsys):
    line = _main_error(["--dataset", "cifar100", "--n_class", "10"], capsys)
    assert ("--n_class 10 does not match --dataset cifar100, which has 100 classes: give "
            "--n_class 100") in line


def test_the_dataset_sets_n_class_and_the_default_folder():
    module = load_module("train_spherenet.py")
    s = training.parse_settings(vars(module), module.__file__, ["--dataset", "cifar100"])
    assert (s.dataset, s.n_class) == ("cifar100", 100)
    assert s.data_path == str(REPO / "cifar100") + os.sep
    s = training.parse_settings(vars(module), module.__file__, [])
    assert (s.dataset, s.n_class, s.data_path) == ("cifar10", 10, str(REPO / "cifar10") + os.sep)
    s = training.parse_settings(vars(module), module.__file__, ["--dataset", "cifar100",
                                                                "--data_path", "/data/c"])
    assert s.data_path == "/data/c"


@pytest.mark.slow
@pytest.mark.parametrize("source", ["binary files", "tensorflow-datasets copy"])
def test_a_short_run_on_cifar100_prints_the_original_lines(source, cifar100_dir, tmp_path):
    if source == "binary files":
        data = cifar100_dir[0]
    else:
        data = str(tmp_path / "tfds")
        write_tfds_cifar(data, n_train=64, n_test=20, name="cifar100")
    run = subprocess.run(
        [sys.executable, TINY, "--dataset", "cifar100", "--data_path", data, "--model_file",
         str(tmp_path / "run"), "--max_epoch", "4", "--log_every", "2", "--eval_every", "4",
         "--batch_test", "20", "--progress", "off", "--no-download"],
        env=script_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert [parse.iteration for parse in map(training.parse_line, lines)] == [2, 4, 4]
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert (settings["dataset"], settings["n_class"]) == ("cifar100", 100)
    import keras

    model = keras.models.load_model(tmp_path / "run" / "final.keras")
    assert model.output_shape == (None, 100)


def test_dataset_setup_checks_cifar100_binary_files(cifar100_dir):
    """`./dataset_setup.sh --dataset cifar100 PATH` on binary files already there: no
    download, the data is checked and counted."""
    run = subprocess.run(["bash", str(REPO / "dataset_setup.sh"), "--dataset", "cifar100",
                          cifar100_dir[0]], env=script_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"CIFAR-100 ready in {cifar100_dir[0]}: 400 training and 100 test images" in run.stdout
    bad = subprocess.run(["bash", str(REPO / "dataset_setup.sh"), "--dataset", "cifar1000"],
                         env=script_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --dataset cifar1000 is not one of cifar10, cifar100"
