"""The layer library under the other Keras backends (JAX, PyTorch), from the main run.

Keras fixes its backend when it is first imported, so tests/backends/ (the golden
fixtures, the adversarial grid, the NumPy references, `model.fit`) runs again in a
subprocess with `KERAS_BACKEND=jax` and with `torch`.  Around it, this module checks
what needs two backends at once: a `.keras` file saved by TensorFlow loads under the
other backend with the same weights (bit for bit) and outputs (1e-5, the forward
tolerance) and the other way round, and the first
`model.fit` loss of the same model and batch equals TensorFlow's (fast path) to 1e-5.

JAX (CPU) is installed by requirements.txt; PyTorch is not (its wheel is large): its
run is skipped, saying how to install it, where `torch` is missing.
"""

import importlib.util
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from support.backend_models import first_fit_losses, fit_batch, small_spherenet
from support.background import background_run, early_dir
from support.repo import REPO, REPORT, script_env

BACKENDS = ["jax", "torch"]
INSTALL = {"jax": "pip install -r requirements.txt (jax is in it)",
           "torch": "pip install torch (the CPU wheel is enough)"}
RESULTS = {}


@pytest.fixture(scope="module")
def cross_dir(tmp_path_factory):
    """TensorFlow's .keras file, its outputs and its first fit losses, for the others."""
    path = tmp_path_factory.mktemp("cross_backend")
    images, _ = fit_batch()
    model = small_spherenet()
    model.save(path / "tensorflow.keras")
    np.save(path / "tensorflow.npy", keras.ops.convert_to_numpy(model(images, training=False)))
    np.save(path / "tensorflow_fit.npy", np.array(first_fit_losses(small_spherenet())))
    return path


def _run_backend_tests(backend, cross_dir, select):
    """pytest tests/backends under `backend` (the -k expression `select`): (exit code, output)."""
    env = script_env(KERAS_BACKEND=backend, SPHERENET_CROSS_BACKEND_DIR=str(cross_dir))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=-ra", "backends/", "-k", select],
                         cwd=REPO / "tests", env=env, capture_output=True, text=True, timeout=900)
    return run.returncode, run.stdout + run.stderr[-2000:]


def _summary(output):
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return lines[-1].strip("= ") if lines else "no summary"


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_library_on_backend(backend, cross_dir):
    if importlib.util.find_spec(backend) is None:
        RESULTS[backend] = "not installed"
        pytest.skip(f"{backend} is not installed: {INSTALL[backend]} to run the layer tests under it")
    # Everything but the .keras exchange: started in the background at collection time
    # (tests/conftest.py) when this test was selected, so it overlaps the other tests.
    early = background_run(backend)
    code, output = early.wait() if early else _run_backend_tests(backend, early_dir(backend), "not cross")
    RESULTS[backend] = _summary(output)
    assert code == 0, f"tests/backends under {backend}:\n{output[-6000:]}"
    assert "skipped" not in RESULTS[backend], RESULTS[backend]
    # the .keras exchange: the other backend loads TensorFlow's file (and earlier backends')
    code, output = _run_backend_tests(backend, cross_dir, "cross")
    assert code == 0, f"tests/backends -k cross under {backend}:\n{output[-6000:]}"
    loaded = int((cross_dir / f"{backend}.loaded").read_text())
    assert loaded >= 1
    # and TensorFlow loads the other backend's file with the outputs it computed
    images, _ = fit_batch()
    model = keras.saving.load_model(cross_dir / f"{backend}.keras")
    expected = np.load(cross_dir / f"{backend}.npy")
    got = keras.ops.convert_to_numpy(model(images, training=False))
    err = np.abs(got - expected).max() / np.abs(expected).max()
    assert err <= 1e-5, err  # CROSS_TOL of tests/backends/test_every_backend.py
    # the same model, batch and optimiser: the first fit loss is TensorFlow's
    ours = np.load(cross_dir / "tensorflow_fit.npy")
    theirs = np.load(early_dir(backend) / f"{backend}_fit.npy")
    assert abs(theirs[0] - ours[0]) <= 1e-5 * abs(ours[0]), (backend, theirs, ours)
    RESULTS[backend] += (f"; .keras both ways, outputs within {err:.2g}; first fit loss {theirs[0]:.6f} "
                         f"(TensorFlow {ours[0]:.6f})")


REPORT["the layer library under the other Keras backends (tests/backends/)"] = lambda: (
    "\n".join(f"{backend}: {result}" for backend, result in RESULTS.items()) if RESULTS else "")


@pytest.mark.slow
def test_the_backends_example_trains_on_jax():
    """`KERAS_BACKEND=jax python examples/keras_backends.py` (random images, no download)."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip(f"jax is not installed: {INSTALL['jax']}")
    run = subprocess.run([sys.executable, str(REPO / "examples" / "keras_backends.py"), "--synthetic"],
                         env=script_env(KERAS_BACKEND="jax"), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    match = re.search(r"backend jax: test accuracy (\d\.\d+) after 2 steps", run.stdout)
    assert match and 0.0 <= float(match.group(1)) <= 1.0, run.stdout[-2000:]
