"""Shared test set-up: quiet TF, the installed package, the end-of-run figures.

Helpers live in `tests/support/` (where the fixtures are, generated data, the golden
replay, NumPy references); see tests/README.md for the layout.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from support.background import start_if_selected
from support.golden_rules import MEASURED
from support.repo import REPO, REPORT


def pytest_configure(config):
    """The tests import `spherenet_tf` as users do, from the installed package; make sure
    it is this checkout's (`pip install -e .`, which `requirements.txt` does)."""
    try:
        import spherenet_tf
    except ImportError as e:
        raise pytest.UsageError(
            f"cannot import spherenet_tf ({e}): install this checkout first, "
            "`pip install -r requirements.txt` (or `pip install -e .`)") from None
    where = os.path.dirname(os.path.realpath(spherenet_tf.__file__))
    if where != os.path.realpath(REPO / "spherenet_tf"):
        raise pytest.UsageError(
            f"spherenet_tf is imported from {where}, not from this checkout ({REPO}): the tests "
            "would test another copy. Install this checkout with `pip install -e .`.")


#: Test files run before the others.
RUN_FIRST = ("test_original_numbers.py",)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """After selection (-m, -k): the pins of the original's numbers first (they fail in
    seconds when a refactor slips one of them: docs/pinned-numbers.md; pytest-xdist hands
    out test files in this order); then start the JAX run of tests/backends/ in the
    background if tests/test_backends.py will wait for it (support/background.py)."""
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)  # stable: the rest keep their order
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        start_if_selected(items)


#: REPORT texts handed over by pytest-xdist workers (title -> texts).
WORKER_REPORTS = {}


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which sends workeroutput
def pytest_sessionfinish(session):
    """In a pytest-xdist worker: hand this worker's figures to the controller, which
    prints them (`--dist loadfile` keeps each test module in one worker)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["spherenet_measured"] = json.dumps([[f, k, e] for (f, k), e in MEASURED.items()])
        workeroutput["spherenet_report"] = json.dumps({t: line() for t, line in REPORT.items()})


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist controller: merge a finished worker's figures into this process's."""
    output = getattr(node, "workeroutput", {})
    for fixture, key, err in json.loads(output.get("spherenet_measured", "[]")):
        MEASURED[(fixture, key)] = max(MEASURED.get((fixture, key), 0.0), err)
    for title, text in json.loads(output.get("spherenet_report", "{}")).items():
        if text:
            WORKER_REPORTS.setdefault(title, []).append(text)


def pytest_terminal_summary(terminalreporter):
    """Print the largest error measured against each golden file (for the reader of CI logs),
    then the figures registered in REPORT (from this process or the xdist workers)."""
    for title in list(REPORT) + [t for t in WORKER_REPORTS if t not in REPORT]:
        texts = [REPORT[title]() if title in REPORT else ""] + WORKER_REPORTS.get(title, [])
        text = "\n".join(t for t in texts if t)
        if text:
            terminalreporter.section(title)
            terminalreporter.write_line(text)
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


@pytest.fixture(autouse=True)
def _keep_the_dtype_policy():
    """Puts Keras's global dtype policy back after each test: a run's entry point sets it
    for the process (`set_process_state`, support/runs.py), and so do some tests."""
    import keras

    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


@pytest.fixture(scope="session")
def binary_dir(tmp_path_factory):
    """A CIFAR-10 folder in the original's binary format (synthetic, learnable data)."""
    from support.fake_cifar import write_binary_cifar

    return write_binary_cifar(str(tmp_path_factory.mktemp("cifar_bin")))
