"""The repository's Python files leave the interpreter's import path alone (issue 23).

The package is imported as installed (`pip install -e .`), test helpers as `support`
(tests/conftest.py), a benchmark's or a script's neighbours by name from the script's own
folder, which Python puts first when it runs the file.  A file that edits the import path
instead hides a packaging mistake on the developer's machine and breaks elsewhere; one
crept back once (benchmarks/memory_profile.py), so every .py file git tracks (or would
track) is read here.
Plain text checks, plus one load of a script with a neighbour (no TensorFlow model built).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from support.repo import REPO, load_module

#: Built in two pieces so that this file does not contain what it forbids.
FORBIDDEN = "sys." + "path"


def python_files():
    """The .py files git tracks or would (untracked, not ignored), or every .py file outside
    hidden and build folders when the checkout is not a git repository (an unpacked archive)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                              "--", "*.py"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
        files = [REPO / f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in REPO.rglob("*.py")
                 if not any(part.startswith(".") or part in ("build", "dist", "__pycache__")
                            for part in p.relative_to(REPO).parts)]
    return [f for f in files if f.exists()]


def forbidden_lines(files, root):
    """'path:line: text' of every line of `files` holding the forbidden text."""
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FORBIDDEN in line:
                hits.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return hits


def test_no_python_file_touches_the_import_path():
    files = python_files()
    assert len(files) > 50, f"found only {len(files)} .py files under {REPO}: is this the checkout?"
    assert REPO / "benchmarks" / "memory_profile.py" in files
    hits = forbidden_lines(files, REPO)
    assert not hits, (
        f"{len(hits)} line(s) use {FORBIDDEN}; import the installed package `spherenet_tf`, "
        "test helpers as `from support import ...`, and a script's neighbours by name "
        "(tests load scripts with support.repo.load_module):\n" + "\n".join(hits))


def test_the_search_reports_a_forbidden_line(tmp_path):
    """The search above can fail: a comment or a call holding the text is reported."""
    (tmp_path / "good.py").write_text("import sys\nprint(sys.argv)\n")
    (tmp_path / "bad.py").write_text(f"import sys\n# why\n{FORBIDDEN}.insert(0, '.')\n")
    hits = forbidden_lines(sorted(tmp_path.glob("*.py")), tmp_path)
    assert hits == [f"bad.py:3: {FORBIDDEN}.insert(0, '.')"]


def test_load_module_finds_a_scripts_neighbour_and_leaves_the_import_machinery_as_it_was():
    """`load_module` imports a script whose neighbour is imported by name (the ResNet
    baseline's `from baseline_resnet import ...`) without editing the import path."""
    path_before, finders_before = list(getattr(sys, "path")), list(sys.meta_path)
    module = load_module("sphere_resnet/baseline/train_baseline.py")
    assert list(getattr(sys, "path")) == path_before
    assert list(sys.meta_path) == finders_before
    neighbour = sys.modules["baseline_resnet"]
    assert Path(neighbour.__file__).resolve() == REPO / "sphere_resnet" / "baseline" / "baseline_resnet.py"
    assert module.build_baseline_resnet is neighbour.build_baseline_resnet


def test_load_module_of_a_missing_neighbour_fails_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import support.repo as repo

    script = tmp_path / "script.py"
    script.write_text("import no_such_neighbour_module_here\n")
    monkeypatch.setattr(repo, "REPO", tmp_path)
    finders_before = list(sys.meta_path)
    with pytest.raises(ModuleNotFoundError, match="no_such_neighbour_module_here"):
        repo.load_module("script.py")
    assert list(sys.meta_path) == finders_before
    assert "_repo_script" not in sys.modules
