"""Where things are: the repository, the golden fixtures, the original's checkpoint; and
how the tests load and run the repository's scripts.

The golden fixtures (numbers produced by running the original TF1 code) ship in
`tests/golden/` (their README says how they were made); `SPHERENET_GOLDEN` may point to
another copy.  Only the original's 46 MB checkpoint `spherenet9_ckpt/` is not in the
repository: its tests look for it in `$SPHERENET_GOLDEN`, `tests/golden/` and
`../shared/golden` beside the checkout, and skip, saying where to put it, when absent.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_REPO_GOLDEN = REPO / "tests" / "golden"
GOLDEN_DIR = Path(os.environ.get("SPHERENET_GOLDEN", IN_REPO_GOLDEN))
#: Where the original's checkpoint (not in the repository) is looked for, in this order.
ORIGINAL_CHECKPOINT_DIRS = [GOLDEN_DIR, IN_REPO_GOLDEN, REPO.parent / "shared" / "golden"]
ORIGINAL_CHECKPOINT = "spherenet9_ckpt/spherenet9_adam3"
#: The small training script of the subprocess tests.
TINY = str(REPO / "tests" / "support" / "tiny_train.py")


def golden_path(name):
    """Path of a golden file; skips the calling test with the reason when it is absent."""
    path = GOLDEN_DIR / name
    if not path.exists():
        pytest.skip(
            f"golden fixture {path} not found: these tests compare against numbers made by "
            "running the original TF1 code, shipped in tests/golden/ (SPHERENET_GOLDEN "
            "points elsewhere)"
        )
    return path


def original_checkpoint():
    """Path prefix of the checkpoint the original code wrote (46 MB, not in the
    repository); skips the calling test, saying where to put it, when it is absent."""
    for folder in ORIGINAL_CHECKPOINT_DIRS:
        prefix = folder / ORIGINAL_CHECKPOINT
        if Path(str(prefix) + ".index").exists():
            return prefix
    pytest.skip(
        "the original's checkpoint spherenet9_ckpt/ (46 MB, not in the repository) was not "
        f"found in {', '.join(str(d) for d in dict.fromkeys(ORIGINAL_CHECKPOINT_DIRS))}: copy "
        "the folder into tests/golden/, or set SPHERENET_GOLDEN to a fixture folder holding it"
    )


class _NeighbourFinder(importlib.abc.MetaPathFinder):
    """Finds top-level modules in one folder, for `load_module`: a script's neighbours
    (`import sphere_resnet_v1` beside `train_sphere_resnet.py`), found as Python finds
    them when it runs the script, without changing the interpreter's import path."""

    def __init__(self, folder):
        self.folder = str(folder)

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or "." in fullname:  # submodules: the normal machinery's
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.folder])


def load_module(relative_path):
    """Import a repository file by path (the original's folders are not packages).

    While it loads, modules in its folder are found first, as they are when Python runs
    it (`python sphere_resnet/train_sphere_resnet.py`): the scripts import their
    neighbours by name (`import sphere_resnet_v1`), as the original's did.  A finder
    placed just before the standard path finder does this (built-in and frozen modules
    still come first, as for a script).
    """
    path = REPO / relative_path
    name = "_repo_" + relative_path.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    finder = _NeighbourFinder(path.parent)
    where = next((i for i, f in enumerate(sys.meta_path)
                  if f is importlib.machinery.PathFinder), len(sys.meta_path))
    sys.meta_path.insert(where, finder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.meta_path.remove(finder)
    return module


def script_env(**extra):
    """Environment for running the repository's scripts in a subprocess."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


#: Figures a test module wants in the CI log: title -> function returning one line
#: (printed by conftest at the end of the run).
REPORT = {}
