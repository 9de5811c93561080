"""The golden fixtures: numbers made by running the original TF1 code (wy1iu/SphereNet).

They ship in the repository's `tests/golden/` (its README says how they were made) and,
in an installed package, as `spherenet_tf/golden/` (pyproject.toml maps that folder into
the package), so that both the test suite and `python -m spherenet_tf.selfcheck` can
compare the port with the original on any machine.  This module knows where they are,
what they hold (the table of golden checks below, shared by the self-check and
tests/test_golden_layers.py, tests/test_golden_models.py, tests/backends/), how the
fixtures' weights are generated (their README, rule 2.1) and the error measure the
fixtures are compared with.
"""

import json
import os
import zlib
from pathlib import Path

import numpy as np

#: The repository's copy (a source checkout or an editable install).
REPO_GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
#: The copy inside an installed (non-editable) package.
PACKAGE_GOLDEN = Path(__file__).resolve().parent / "golden"
#: Files every fixture set has.
REQUIRED = ("facts.json", "conv_layer.npz")


#: Forward values against the original, relative to the largest magnitude, in float32
#: (tests/golden/README.md, section 4).
FORWARD_TOL = 1e-5
#: conv_layer.npz's layer configurations: name -> (kernel size, padding, stride); the
#: names are the fixture's keys (`k3_SAME_s1/filter`, `k3_SAME_s1/cosine/out`, ...).
LAYER_CONFIGS = {
    "k3_SAME_s1": (3, "SAME", 1),
    "k4_VALID_s1": (4, "VALID", 1),
    "k1_VALID_s1": (1, "VALID", 1),
    "k3_SAME_s2": (3, "SAME", 2),
}
#: The `norm`s conv_layer.npz holds for every configuration.
LAYER_NORMS = ("none", "linear", "cosine", "sigmoid", "lr_sigmoid")
#: The `w_norm`s of wnorm_score.npz whose original outputs are finite (linear / sigmoid
#: are a documented difference: the original returned NaN, docs/differences.md).
SCORE_W_NORMS = ("none", "cosine")
#: The input sizes of wnorm_score.npz (`x_small`, `x_large`).
SCORE_SIZES = ("small", "large")
#: The networks of model_<name>.npz (`models.ORIGINAL_NETWORKS`' names).
NETWORKS = ("spherenet9", "baseline_cnn", "sphere_resnet32", "baseline_resnet32")


class FixtureError(FileNotFoundError):
    """The golden fixtures are not where they were looked for."""


def golden_dir(explicit=None):
    """The fixture folder: `explicit`, else $SPHERENET_GOLDEN, else the repository's
    tests/golden/, else the installed package's copy.  Raises FixtureError naming every
    place looked in when none holds the fixtures."""
    if explicit:
        candidates = [Path(explicit)]
    elif os.environ.get("SPHERENET_GOLDEN"):
        candidates = [Path(os.environ["SPHERENET_GOLDEN"])]
    else:
        candidates = [REPO_GOLDEN, PACKAGE_GOLDEN]
    for folder in candidates:
        if all((folder / name).is_file() for name in REQUIRED):
            return folder
    raise FixtureError(
        "the golden fixtures (numbers made by running the original TF1 code) were not found "
        f"in {' or '.join(str(c) for c in candidates)}: each needs {', '.join(REQUIRED)}. "
        "They ship in the repository's tests/golden/; pass --golden DIR (or set "
        "SPHERENET_GOLDEN) to a folder holding them."
    )


def facts(folder):
    with open(Path(folder) / "facts.json") as f:
        return json.load(f)


def weight_prefix(folder):
    """The name prefix of the fixture set's weight rule (facts.json)."""
    return facts(folder)["weight_rule"]["PREFIX"]


def rule_value(name, shape, prefix):
    """Value of the trainable TF1 variable `name` by the fixtures' rule 2.1: a normal
    draw seeded by crc32(prefix + name), scaled as the original initialises it."""
    seed = zlib.crc32((prefix + name).encode()) % 2**31
    z = np.random.RandomState(seed).standard_normal(shape).astype(np.float32)
    if name.endswith("/filter"):
        k, _, n_in, _ = shape
        return z * np.float32(np.sqrt(2.0 / (k * k * n_in)))
    if name.endswith("/bn/gamma/bias"):
        return np.float32(1.0) + np.float32(0.1) * z
    if name.endswith("/bn/beta/bias"):
        return np.float32(0.1) * z
    if name.endswith("/k_value_lr"):
        return np.float32(0.7) + np.float32(0.1) * z
    raise KeyError(f"no generation rule for {name}")


def assign_rule_weights(variables, prefix):
    """Give every trainable variable of `variables` (TF1 name -> variable, as
    `tf1_names.tf1_variables` returns) its value by rule 2.1."""
    for name, variable in variables.items():
        if variable.trainable:
            variable.assign(rule_value(name, tuple(variable.shape), prefix))


def rel_err(actual, expected):
    """max |actual - expected| / max |expected| over the finite expected values (the
    fixtures' error measure); inf when their finiteness differs."""
    actual = np.asarray(actual, np.float64).reshape(np.shape(expected))
    expected = np.asarray(expected, np.float64)
    finite = np.isfinite(expected)
    if np.any(np.isfinite(actual) != finite):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(np.max(np.abs(expected[finite])), 1e-30)
    return float(np.max(np.abs(actual[finite] - expected[finite])) / scale)
