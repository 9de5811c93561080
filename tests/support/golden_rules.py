"""The golden fixtures' generation rules (tests/golden/README.md, section 2).

Weights are regenerated from a TF1 variable name, so the same tests run on any
fixture set: the name prefix and input seed are read from the set's facts.json.
"""

import json
import zlib

import numpy as np

from .repo import golden_path


def facts():
    with open(golden_path("facts.json")) as f:
        return json.load(f)


def weight_prefix():
    return facts()["weight_rule"]["PREFIX"]


def rule_value(name, shape, prefix):
    """Value of the trainable TF1 variable `name` by rule 2.1."""
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


def load_npz(name):
    return np.load(golden_path(name))


def rel_err(actual, expected):
    """max |actual - expected| / max |expected| (the fixtures' error measure)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(np.max(np.abs(expected)), 1e-30)
    return float(np.max(np.abs(actual - expected)) / scale)


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
