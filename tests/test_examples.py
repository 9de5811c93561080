"""examples/ and the ResNet training scripts: each builds, trains a few steps on mock
data, and differs from the default in exactly the settings it claims."""

import json
import re
import subprocess
import sys

import keras
import pytest
import tensorflow_datasets as tfds

from support.repo import REPO, load_module, script_env
from spherenet_tf import SphereConv2D, training

EXAMPLES = sorted(p.name for p in (REPO / "examples").glob("spherenet_*.py"))
README_ROWS = {  # README result -> example file (the default cosine run is train_spherenet.py)
    "spherenet_linear_standard.py": ("linear", "none", "91.65"),
    "spherenet_sigmoid_standard.py": ("sigmoid", "none", "91.81"),
    "spherenet_lr_sigmoid_standard.py": ("lr_sigmoid", "none", "91.66"),
    "spherenet_cos_wnsoftmax.py": ("cosine", "cosine", "91.44"),
}
ORIGINAL_EXAMPLES = ["spherenet_linear_sphereconv.py", "spherenet_sigmoid_sphereconv.py",
                     "spherenet_linear_sphereconv_wsoftmax.py"]


def test_every_readme_result_and_original_example_has_a_file():
    assert set(README_ROWS) | set(ORIGINAL_EXAMPLES) | {"spherenet_linear_wnsoftmax.py",
                                                        "spherenet_cos_cifar100.py"} == set(EXAMPLES)
    for name, (norm, w_norm, best) in README_ROWS.items():
        module = load_module(f"examples/{name}")
        assert (module.norm, module.w_norm) == (norm, w_norm)
        assert f"Expected best test accuracy: {best} %" in module.__doc__
        log = module.__doc__.split("original log `")[1].split("`")[0]
        assert log.startswith("results/") and log.endswith("_training.log")


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_differs_in_exactly_what_it_claims(name):
    run = load_module("examples/_run.py")
    module = load_module(f"examples/{name}")
    claimed = re.search(r"Differs from the default `spherenet.py` in: ([\w, ]+)\.", module.__doc__)
    assert claimed, "the docstring must say what the example changes"
    claimed = {c.strip() for c in claimed.group(1).split(",")}
    assert run.differences(vars(module)) == claimed
    model = run.build_model_fn(vars(module))(training.Settings(norm=module.norm, w_norm=module.w_norm))
    convs = {l.name: l for l in model.layers if isinstance(l, SphereConv2D)}
    assert all(convs[n].norm == module.norm for n in convs if n != "score")
    assert convs["score"].w_norm == module.w_norm and convs["score"].norm == "none"
    assert convs["conv2_0"].filters == module.widths[1]
    has_fc6_bn = any(l.name == "fc6_bn" for l in model.layers)
    assert has_fc6_bn == module.fc6_bn


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_trains_a_few_steps(name, tmp_path, capsys):
    run = load_module("examples/_run.py")
    module = load_module(f"examples/{name}")
    argv = ["--data_path", str(tmp_path / "data"), "--model_file", str(tmp_path / "run"),
            "--max_epoch", "2", "--batch_sz", "4", "--batch_test", "4", "--log_every", "1",
            "--eval_every", "2", "--checkpoint_every", "1000", "--progress", "off", "--no-download"]
    with tfds.testing.mock_data(num_examples=8):
        run.train(vars(module), module.__file__, argv=argv)
    out = capsys.readouterr().out
    assert re.search(r"^====iteration_2: fit=\d+\.\d{4}, reg=\d+\.\d{4}, orth=\d+\.\d{4}", out, re.M)
    assert re.search(r"^\+\+\+\+iteration_2: test acc=", out, re.M)
    model = keras.models.load_model(tmp_path / "run" / "final.keras")
    assert model.get_layer("conv1_0").norm == module.norm
    dataset = getattr(module, "dataset", "cifar10")
    assert model.output_shape == (None, {"cifar10": 10, "cifar100": 100}[dataset])
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert (settings["dataset"], settings["n_class"]) == (dataset, model.output_shape[1])


def test_example_default_folders_are_the_repositorys():
    run = load_module("examples/_run.py")
    module = load_module("examples/spherenet_sigmoid_standard.py")
    block = run.settings_block(vars(module), module.__file__)
    assert block["data_path"] == str(REPO / "cifar10") + "/"
    assert block["model_file"] == str(REPO / "models" / "spherenet_sigmoid_standard") + "/"
    assert block["batch_sz"] == 128 and block["max_epoch"] == 64000 and block["norm"] == "sigmoid"


@pytest.mark.parametrize("script,model_name,has_orth", [
    ("sphere_resnet/train_sphere_resnet.py", "sphere_resnet32", True),
    ("sphere_resnet/baseline/train_baseline.py", "baseline_resnet32", False),
])
def test_resnet_scripts_train_on_cifar10plus(script, model_name, has_orth, tmp_path, capsys):
    module = load_module(script)
    assert module.augmentation == "cifar10plus" and module.max_epoch == 64000
    argv = ["--data_path", str(tmp_path / "data"), "--model_file", str(tmp_path / "run"),
            "--max_epoch", "2", "--batch_sz", "4", "--batch_test", "4", "--log_every", "1",
            "--eval_every", "1000", "--checkpoint_every", "1000", "--progress", "off", "--no-download"]
    with tfds.testing.mock_data(num_examples=8):
        training.main(vars(module), module.build_model, module.__file__, argv=argv)
    out = capsys.readouterr().out
    assert ("orth=" in out) == has_orth and "====iteration_2:" in out
    settings = (tmp_path / "run" / "settings.json").read_text()
    assert '"augmentation": "cifar10plus"' in settings and f'"model": "{model_name}"' in settings


@pytest.mark.parametrize("folder,script", [("sphere_resnet", "train_sphere_resnet.py"),
                                           ("sphere_resnet/baseline", "train_baseline.py"),
                                           ("examples", "spherenet_cos_wnsoftmax.py")])
def test_scripts_run_from_their_own_folder(folder, script):
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO / folder, env=script_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--max_epoch INT" in out.stdout and "--strategy" in out.stdout
