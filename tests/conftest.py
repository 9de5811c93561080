"""Shared test set-up: repository root on sys.path, quiet TF, golden-fixture access.

The golden fixtures (numbers produced by running the original TF1 code) live outside
the repository, in `../shared/golden` next to the checkout, or wherever
`SPHERENET_GOLDEN` points.  Tests that need them skip, saying so, when absent.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GOLDEN_DIR = Path(os.environ.get("SPHERENET_GOLDEN", REPO.parent / "shared" / "golden"))
REFERENCE_RESULTS_DIR = Path(
    os.environ.get("SPHERENET_REFERENCE_RESULTS", REPO.parent / "shared" / "reference_results")
)


def golden_path(name):
    """Path of a golden file; skips the calling test with the reason when it is absent."""
    path = GOLDEN_DIR / name
    if not path.exists():
        pytest.skip(
            f"golden fixture {path} not found: these tests compare against numbers made by "
            "running the original TF1 code, kept outside the repository in ../shared/golden "
            "(or set SPHERENET_GOLDEN to their folder)"
        )
    return path


#: Figures a test module wants in the CI log: title -> function returning one line.
REPORT = {}


def pytest_terminal_summary(terminalreporter):
    """Print the largest error measured against each golden file (for the reader of CI logs),
    then the figures registered in REPORT."""
    for title, line in REPORT.items():
        text = line()
        if text:
            terminalreporter.section(title)
            terminalreporter.write_line(text)
    try:
        from golden_rules import MEASURED
    except ImportError:
        return
    if not MEASURED:
        return
    per_file = {}
    for (fixture, key), err in MEASURED.items():
        worst = per_file.get(fixture)
        if worst is None or err > worst[0]:
            per_file[fixture] = (err, key)
    terminalreporter.section("largest relative error against each golden fixture")
    for fixture in sorted(per_file):
        err, key = per_file[fixture]
        n = sum(1 for (f, _) in MEASURED if f == fixture)
        terminalreporter.write_line(f"{fixture:44s} {err:10.3g}  ({n} arrays; worst: {key})")


def load_module(relative_path):
    """Import a repository file by path (the original's folders are not packages)."""
    import importlib.util

    path = REPO / relative_path
    name = "_repo_" + relative_path.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def binary_dir(tmp_path_factory):
    """A CIFAR-10 folder in the original's binary format (synthetic, learnable data)."""
    from fake_cifar import write_binary_cifar

    return write_binary_cifar(str(tmp_path_factory.mktemp("cifar_bin")))


def script_env():
    """Environment for running the repository's scripts in a subprocess."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env
