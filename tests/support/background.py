"""The JAX run of tests/backends/, started in the background as soon as the tests are
collected, so that its few minutes overlap the rest of the suite instead of adding to it.

tests/conftest.py calls `start_if_selected` after collection (in every pytest-xdist worker:
a directory created atomically lets only the first one start it); the test in
tests/test_backends.py waits for it with `background_run(backend).wait()`.  Keyed by the
run (pytest-xdist's run id, or the process id without xdist), kept under the system's
temporary folder.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .repo import REPO, script_env

#: The backend whose run starts early (PyTorch, optional, runs in its test).
EARLY = "jax"
NODE = "test_backends.py::test_layer_library_on_backend[jax]"


def _run_id():
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"


def early_dir(backend):
    """Where the run of `backend` keeps its output, exit code and fit losses."""
    path = Path(tempfile.gettempdir()) / f"spherenet-backends-{_run_id()}" / backend
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_if_selected(items):
    """Start the JAX run if its test is among the selected `items` and jax is installed."""
    if not any(item.nodeid.endswith(NODE) for item in items) or importlib.util.find_spec(EARLY) is None:
        return
    root = Path(tempfile.gettempdir()) / f"spherenet-backends-{_run_id()}"
    try:
        root.mkdir(parents=True)  # atomic: only the first xdist worker gets here
    except FileExistsError:
        return
    path = early_dir(EARLY)
    env = script_env(KERAS_BACKEND=EARLY, SPHERENET_CROSS_BACKEND_DIR=str(path))
    command = (f"{sys.executable} -m pytest -q -p no:cacheprovider -o addopts=-ra backends/ "
               f"-k 'not cross' > {path / 'output'} 2>&1; echo $? > {path / 'exit_code.tmp'}; "
               f"mv {path / 'exit_code.tmp'} {path / 'exit_code'}")
    (path / "started").write_text("1")
    subprocess.Popen(["bash", "-c", command], cwd=REPO / "tests", env=env, start_new_session=True)


class _Early:
    def __init__(self, path):
        self.path = path

    def wait(self, timeout=1200):
        """(exit code, output) once the background run has finished."""
        deadline = time.monotonic() + timeout
        while not (self.path / "exit_code").exists():
            if time.monotonic() > deadline:
                return 1, f"the background run in {self.path} did not finish in {timeout} s"
            time.sleep(2)
        return int((self.path / "exit_code").read_text()), (self.path / "output").read_text()


def background_run(backend):
    """The background run of `backend` if one was started in this test run, else None."""
    path = Path(tempfile.gettempdir()) / f"spherenet-backends-{_run_id()}" / backend
    return _Early(path) if (path / "started").exists() else None
