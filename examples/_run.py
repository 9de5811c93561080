"""Runs an example's settings on the SphereNet-9 training of `train_spherenet.py`.

An example file holds only the four switches of `spherenet.py` (`norm`, `w_norm`,
`widths`, `fc6_bn`), and the dataset where it is not CIFAR-10 (`dataset`); everything else (batch size, schedule, data, log lines) is
`train_spherenet.py`'s, and can be overridden on the command line as there.  Runs go
to `models/<example name>/` unless `--model_file` says otherwise.
"""

import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
EXAMPLES = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(EXAMPLES)

from spherenet_tf import training  # noqa: E402
from spherenet_tf.cifar10_input import DATASETS  # noqa: E402


def _repository_file(name):
    """The repository's `name`.py (spherenet.py, train_spherenet.py) as the module `name`:
    the examples build on them, and they are files of the repository, not of the package.
    (Registered under its name, so that train_spherenet's `import spherenet` finds it.)"""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


spherenet = _repository_file("spherenet")
train_spherenet = _repository_file("train_spherenet")

#: The switches an example may set, as named in spherenet.py.
SWITCHES = ("norm", "w_norm", "widths", "fc6_bn")


def switches(example_globals):
    return {k: example_globals[k] for k in SWITCHES}


def differences(example_globals):
    """The switches in which an example differs from spherenet.py's defaults."""
    def canonical(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    changed = {k for k, v in switches(example_globals).items()
               if canonical(v) != canonical(getattr(spherenet, k))}
    if example_globals.get("dataset", "cifar10") != "cifar10":
        changed.add("dataset")
    return changed


def build_model_fn(example_globals):
    """settings -> SphereNet-9 with the example's widths/fc6_bn and the run's norm/w_norm."""
    widths = tuple(example_globals["widths"])
    fc6_bn = example_globals["fc6_bn"]

    def build_model(s):
        return spherenet.build_spherenet(s.n_class, norm=s.norm, w_norm=s.w_norm, widths=widths,
                                         fc6_bn=fc6_bn)

    return build_model


def settings_block(example_globals, example_file):
    """train_spherenet.py's settings block with the example's switches and folders."""
    block = {k: getattr(train_spherenet, k) for k in
             ("n_class", "batch_sz", "batch_test", "max_epoch", "lr", "augmentation")}
    dataset = DATASETS[example_globals.get("dataset", "cifar10")]
    block.update(
        norm=example_globals["norm"],
        w_norm=example_globals["w_norm"],
        dataset=dataset.name,
        n_class=dataset.n_class,
        data_path=os.path.join(REPO, dataset.name) + os.sep,
        model_file=os.path.join(REPO, "models", os.path.splitext(os.path.basename(example_file))[0]) + os.sep,
    )
    return block


def train(example_globals, example_file, argv=None):
    doc = (example_globals.get("__doc__") or "").strip().split("\n")[0]
    training.main(settings_block(example_globals, example_file), build_model_fn(example_globals),
                  example_file, argv=argv, description=doc)
