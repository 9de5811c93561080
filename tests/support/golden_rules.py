"""The golden fixtures' generation rules (tests/golden/README.md, section 2).

Weights are regenerated from a TF1 variable name (`spherenet_tf.fixtures.rule_value`,
shared with the self-check), so the same tests run on any fixture set: the name prefix
and input seed are read from the set's facts.json.
"""

import json

import numpy as np

from spherenet_tf.fixtures import rel_err, rule_value  # noqa: F401  (the tests' imports)

from .repo import golden_path


def facts():
    with open(golden_path("facts.json")) as f:
        return json.load(f)


def weight_prefix():
    return facts()["weight_rule"]["PREFIX"]


def load_npz(name):
    return np.load(golden_path(name))


#: (fixture file, key) -> largest relative error measured in this session; printed at
#: the end of the test run by conftest.pytest_terminal_summary.
MEASURED = {}


def check(fixture, key, actual, expected, tol):
    """Assert rel_err(actual, expected) <= tol and record the error for the summary."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape or actual.size == expected.size, (
        f"{fixture}:{key}: shape {actual.shape} != golden {expected.shape}"
    )
    actual = actual.reshape(expected.shape)
    assert np.all(np.isfinite(actual) == np.isfinite(expected)), (
        f"{fixture}:{key}: finiteness differs from the golden value"
    )
    finite = np.isfinite(expected)
    err = rel_err(actual[finite], expected[finite]) if finite.any() else 0.0
    previous = MEASURED.get((fixture, key), 0.0)
    MEASURED[(fixture, key)] = max(previous, err)
    assert err <= tol, f"{fixture}:{key}: max relative error {err:.3g} > tolerance {tol:g}"
    return err
