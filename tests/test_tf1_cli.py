"""The command-line uses of TF1 checkpoints: every training script's `--eval_only` /
`--tf1_checkpoint`, and convert_tf1_checkpoint.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from support.repo import REPO, load_module, original_checkpoint
from support.golden_rules import check, load_npz
from support.fake_cifar import load_cifar10
from support.tf1_writer import tf1_adam_powers, write_tf1_checkpoint
from spherenet_tf import training
from spherenet_tf.models import build_cnn9
from spherenet_tf.tf1_checkpoint import load_tf1_checkpoint
from spherenet_tf.tf1_names import tf1_variables
from spherenet_tf.training import Settings, parse_settings

N_MOCK = 30  # images per split of tfds' mock CIFAR-10


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """A SphereNet-9 with random weights and non-trivial BN statistics, saved as the
    original would have after 1234 Adam steps (beta powers of a real TF1 Adam)."""
    model = load_module("train_spherenet.py").build_model(Settings())
    rng = np.random.default_rng(3)
    values = {}
    for name, variable in tf1_variables(model).items():
        value = variable.numpy()
        if name.endswith("Squeeze/ExponentialMovingAverage"):
            value = rng.normal(0, 0.1, value.shape).astype(np.float32)
        elif name.endswith("Squeeze_1/ExponentialMovingAverage"):
            value = rng.uniform(0.01, 0.2, value.shape).astype(np.float32)
        variable.assign(value)
        values[name] = value
        if variable.trainable:
            values[f"{name}/Adam"] = np.zeros_like(value)
            values[f"{name}/Adam_1"] = np.ones_like(value)  # v = 1: continued steps stay well below lr
    values["beta1_power"], values["beta2_power"] = tf1_adam_powers(1234)
    path = write_tf1_checkpoint(tmp_path_factory.mktemp("original") / "models_1234", values)
    return model, path, values


def _mock_test_set(data_path):
    (_, _), (x, y) = load_cifar10(data_path, download=False)
    return x, y


def _accuracy(model, x, y):
    predictions = np.argmax(model(x.astype(np.float32), training=False).numpy(), axis=-1)
    return float(np.mean(predictions == y))


def _run_script(module, argv):
    training.main(vars(module), module.build_model, module.__file__, argv=argv)


def test_eval_only_prints_the_originals_test_line(trained_like, tmp_path, capsys):
    model, path, _ = trained_like
    module = load_module("train_spherenet.py")
    data = str(tmp_path / "data")
    never = tmp_path / "not_created"
    with tfds.testing.mock_data(num_examples=N_MOCK):
        x, y = _mock_test_set(data)
        _run_script(module, ["--eval_only", "--tf1_checkpoint", path, "--data_path", data,
                             "--model_file", str(never), "--batch_test", "7", "--no-download"])
    captured = capsys.readouterr()
    # accuracy of the model the checkpoint was written from, on the same 30 images
    assert captured.out == "++++iteration_1233: test acc=%.4f\n" % _accuracy(model, x, y)
    assert "spherenet9: evaluating" in captured.err and "47 variables loaded" in captured.err
    assert "iteration 1233 (from the beta powers)" in captured.err
    assert not never.exists()  # the eval path writes nothing


def test_eval_only_of_this_ports_own_run(trained_like, tmp_path, capsys):
    model, _, _ = trained_like
    module = load_module("train_spherenet.py")
    run = tmp_path / "run"
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer),
                               str(run / training.RESUME_DIR), max_to_keep=1,
                               checkpoint_name="ckpt").save(checkpoint_number=25)
    data = str(tmp_path / "data")
    with tfds.testing.mock_data(num_examples=N_MOCK):
        x, y = _mock_test_set(data)
        _run_script(module, ["--eval_only", "--data_path", data, "--model_file", str(run),
                             "--batch_test", "10", "--no-download"])
        assert capsys.readouterr().out == "++++iteration_24: test acc=%.4f\n" % _accuracy(model, x, y)
        with pytest.raises(SystemExit) as e:
            _run_script(module, ["--eval_only", "--data_path", data, "--no-download",
                                 "--model_file", str(tmp_path / "empty")])
    assert e.value.code == 2
    assert "--eval_only: no checkpoint of this port in" in capsys.readouterr().err


def test_a_wrong_checkpoint_path_fails_at_once(tmp_path, capsys):
    module = load_module("baseline/train_baseline.py")  # every script has the options
    with pytest.raises(SystemExit) as e:
        _run_script(module, ["--tf1_checkpoint", str(tmp_path / "models" / "16000"),
                             "--model_file", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: No checkpoint at '{tmp_path}/models/16000'")
    assert not (tmp_path / "run").exists()
    s = parse_settings({"n_class": 10}, str(REPO / "baseline" / "train_baseline.py"),
                          ["--eval_only", "--tf1_checkpoint", "models/16000"])
    assert (s.eval_only, s.tf1_checkpoint) == (True, "models/16000")


def test_training_continues_from_the_originals_checkpoint(trained_like, tmp_path, capsys):
    """--tf1_checkpoint without --eval_only: weights and Adam state from the original's
    checkpoint, the loop going on at the original's next iteration (1234)."""
    _, path, values = trained_like
    module = load_module("train_spherenet.py")
    run = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=N_MOCK):
        _run_script(module, ["--tf1_checkpoint", path, "--data_path", str(tmp_path / "data"),
                             "--model_file", str(run), "--max_epoch", "1238", "--batch_sz", "4",
                             "--batch_test", "10", "--log_every", "2", "--eval_every", "4",
                             "--progress", "off", "--no-download"])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [l.split(":")[0] for l in lines] == [
        "====iteration_1234", "====iteration_1236", "++++iteration_1236", "====iteration_1238"]
    assert "continuing the original's checkpoint" in captured.err
    assert (run / "resume" / "ckpt-1239.index").exists()  # 1234 + 5 steps
    final = keras.models.load_model(run / "final.keras")
    # 5 Adam steps of lr 1e-3 move a weight by at most ~5e-3: it started from the checkpoint
    moved = np.max(np.abs(final.get_layer("conv2_1").kernel.numpy() - values["conv2_1/filter"]))
    assert 0 < moved < 6e-3


# ---------------------------------------------------------------------------
# convert_tf1_checkpoint.py
# ---------------------------------------------------------------------------
def test_converter_writes_a_keras_file_that_predicts_as_the_original(tmp_path, capsys):
    ckpt = str(original_checkpoint())
    converter = load_module("convert_tf1_checkpoint.py")
    out = tmp_path / "spherenet9.keras"
    assert converter.main([ckpt, str(out), "--model", "spherenet9"]) == 0
    assert "spherenet9 (3,863,168 parameters)" in capsys.readouterr().out
    model = keras.models.load_model(out)
    g = load_npz("model_spherenet9.npz")
    check("spherenet9_ckpt via convert_tf1_checkpoint.py", "after_adam/eval/score",
          model(g["images"], training=False).numpy(), g["after_adam/eval/score"], 1e-5)
    assert converter.main([ckpt, "--inspect"]) == 0
    assert "Saved after 3 Adam steps (iteration 2)." in capsys.readouterr().out


def test_converter_for_other_layouts_and_its_refusals(trained_like, tmp_path, capsys):
    converter = load_module("convert_tf1_checkpoint.py")
    layout = dict(norm="sigmoid", w_norm="cosine", widths=(128, 196, 256), fc6_bn=True)
    source = build_cnn9(**layout)
    rng = np.random.default_rng(5)
    values = {n: rng.standard_normal(v.shape).astype(np.float32) for n, v in tf1_variables(source).items()}
    values = {n: np.abs(v) if "Squeeze_1" in n else v for n, v in values.items()}
    ckpt = write_tf1_checkpoint(tmp_path / "64000", values)
    out = tmp_path / "sigmoid.keras"
    assert converter.main([ckpt, str(out), "--model", "spherenet9", "--norm", "sigmoid",
                           "--w_norm", "cosine", "--widths", "128,196,256", "--fc6_bn"]) == 0
    model = keras.models.load_model(out)
    assert model.get_layer("conv3_0").norm == "sigmoid" and model.get_layer("score").w_norm == "cosine"
    load_tf1_checkpoint(source, ckpt)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x, training=False).numpy(), source(x, training=False).numpy())

    capsys.readouterr()
    assert converter.main([ckpt, str(tmp_path / "r.keras"), "--model", "baseline_resnet32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TF1 checkpoint") and "does not fit model 'baseline_resnet32'" in err
    assert "--model spherenet9 --widths 128,196,256 --fc6_bn" in err
    assert not (tmp_path / "r.keras").exists()
    for argv, message in [
        ([ckpt, str(tmp_path / "x.h5"), "--model", "spherenet9"], "the output must be a .keras file"),
        ([ckpt, str(tmp_path / "x.keras")], "give the checkpoint, the output .keras file and --model"),
        ([ckpt, str(tmp_path / "x.keras"), "--model", "spherenet9", "--widths", "128,196"],
         "expected three positive stage widths like 128,196,256, got '128,196'"),
        ([ckpt, str(tmp_path / "x.keras"), "--model", "sphere_resnet32", "--fc6_bn"],
         "--widths and --fc6_bn apply to the 9-layer nets"),
    ]:
        with pytest.raises(SystemExit) as e:
            converter.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
