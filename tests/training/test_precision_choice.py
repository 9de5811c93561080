"""--mixed_precision: which policy each kind of device gets, and the flag's forms.

The GPUs are mocked at TensorFlow's own device calls (`tf.config.list_physical_devices`
and `tf.config.experimental.get_device_details`), so the choice is tested on a CPU the
way it is made on a GPU machine.
"""

import pytest
import tensorflow as tf

from support.repo import load_module
from support.fake_cifar import synthetic_images
from support.runs import script_trainer
from spherenet_tf.training import Settings, choose_precision, parse_settings


def _mock_gpus(monkeypatch, *gpus):
    """Make TF report these GPUs: (name, (major, minor) or None) each."""
    devices = [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU")
               for i in range(len(gpus))]
    details = {d.name: ({"device_name": name, "compute_capability": cc} if cc else {"device_name": name})
               for d, (name, cc) in zip(devices, gpus)}
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: devices if kind == "GPU" else real(kind))
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: details[d.name])


def test_an_ampere_or_newer_gpu_gets_bfloat16(monkeypatch):
    _mock_gpus(monkeypatch, ("NVIDIA A100-SXM4-80GB", (8, 0)))
    policy, reason = choose_precision("auto")
    assert policy == "mixed_bfloat16"
    assert "'NVIDIA A100-SXM4-80GB' has compute capability 8.0 >= 8.0" in reason
    _mock_gpus(monkeypatch, ("NVIDIA H200", (9, 0)))
    assert choose_precision("auto")[0] == "mixed_bfloat16"


def test_an_older_gpu_gets_float16_with_loss_scaling(monkeypatch):
    _mock_gpus(monkeypatch, ("Tesla V100-SXM2-16GB", (7, 0)))
    policy, reason = choose_precision("auto")
    assert policy == "mixed_float16"
    assert "compute capability 7.0 < 8.0" in reason and "loss scaling" in reason


def test_without_a_gpu_it_is_bfloat16():
    assert tf.config.list_physical_devices("GPU") == []  # this machine
    policy, reason = choose_precision("auto")
    assert policy == "mixed_bfloat16"
    assert reason == "--mixed_precision auto: no GPU, bfloat16 on the CPU"


def test_mixed_gpus_follow_the_oldest(monkeypatch):
    _mock_gpus(monkeypatch, ("NVIDIA A100", (8, 0)), ("Tesla T4", (7, 5)))
    policy, reason = choose_precision("auto")
    assert policy == "mixed_float16" and "'Tesla T4'" in reason


def test_an_unknown_compute_capability_gets_float16(monkeypatch):
    _mock_gpus(monkeypatch, ("some GPU", None))
    policy, reason = choose_precision("auto")
    assert policy == "mixed_float16" and "not known" in reason


@pytest.mark.parametrize("forced", ["float16", "bfloat16"])
def test_a_dtype_can_be_forced_on_any_device(monkeypatch, forced):
    _mock_gpus(monkeypatch, ("Tesla V100", (7, 0)))
    assert choose_precision(forced) == (f"mixed_{forced}", f"--mixed_precision {forced}: as asked")
    assert choose_precision("off") == ("float32", "--mixed_precision off")


@pytest.mark.parametrize("argv,expected", [
    ([], "off"),
    (["--mixed_precision"], "auto"),
    (["--mixed_precision", "bfloat16"], "bfloat16"),
    (["--mixed_precision=float16"], "float16"),
    (["--no-mixed_precision"], "off"),
])
def test_the_flag_alone_means_auto(argv, expected):
    assert parse_settings({}, "train.py", argv).mixed_precision == expected


def test_a_wrong_value_is_refused_with_what_is_allowed(capsys):
    with pytest.raises(SystemExit) as e:
        parse_settings({}, "train.py", ["--mixed_precision", "bfloat"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--mixed_precision 'bfloat' is not one of off, auto, float16, bfloat16" in err
    assert "did you mean 'bfloat16'" in err


def test_the_boolean_of_earlier_versions_still_works():
    assert Settings(mixed_precision=True).mixed_precision == "auto"
    assert Settings(mixed_precision=False).mixed_precision == "off"


@pytest.mark.parametrize("mode,line", [
    ("auto", "precision: mixed_bfloat16 (--mixed_precision auto: no GPU, bfloat16 on the CPU)"),
    ("off", "precision: float32 (--mixed_precision off)"),
])
def test_the_run_says_first_which_policy_it_uses_and_why(tmp_path, capsys, mode, line):
    labels = (tf.range(32) % 10).numpy()
    data = ((synthetic_images(labels, 0), labels), (synthetic_images(labels[:16], 1), labels[:16]))
    module = load_module("train_spherenet.py")
    s = Settings(max_epoch=1, batch_sz=8, batch_test=16, model_file=str(tmp_path) + "/",
                 progress="off", tensorboard="off", mixed_precision=mode)
    try:
        script_trainer(s, module.build_model, data=data).fit()
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert capsys.readouterr().err.splitlines()[0] == line
