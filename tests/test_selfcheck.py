"""`python -m spherenet_tf.selfcheck`: passes on this machine, fails on a wrong fixture.

The self-check is what a user runs first on a new machine (README, quick start): the
golden forward fixtures in float32 and under the mixed policy, and a short timing.  Here
it runs in its CPU-sized form (`--fast`) as a user would start it; a copy of the
fixtures with one value moved by 1e-3 of its maximum (100x the float32 tolerance) must
make it fail, naming the check and the variant.
"""

import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from support.repo import GOLDEN_DIR, REPO, script_env
from spherenet_tf import selfcheck
from spherenet_tf.fixtures import REPO_GOLDEN


def test_the_selfcheck_passes_on_this_machine():
    out = subprocess.run([sys.executable, "-m", "spherenet_tf.selfcheck", "--fast"],
                         capture_output=True, text=True, env=script_env(), timeout=600, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("SphereNet port self-check: TensorFlow 2.") and "on CPU:0" in lines[0]
    assert lines[2] == "mixed policy: mixed_bfloat16 (--mixed_precision auto: no GPU, bfloat16 on the CPU)"
    rows = [l for l in lines if l.endswith((" pass", " FAIL"))]
    assert len(rows) == 13 and all("FAIL" not in r for r in rows), out.stdout
    gradients = [r for r in rows if r.startswith("SphereConv2D gradients, patches matching a filter")]
    assert len(gradients) == 1 and "mixed_bfloat16" in gradients[0], rows  # issue 22
    for name in ("conv_layer.npz", "wnorm_score.npz", "model_spherenet9.npz", "model_baseline_cnn.npz",
                 "model_sphere_resnet32.npz", "model_baseline_resnet32.npz"):
        assert sum(name in r for r in rows) == 2, name  # float32 and mixed
    timing = [l for l in lines if l.startswith("training ")]
    assert len(timing) == 4 and "x the time of CNN-9" in timing[0] and "x the time of CNN-9" in timing[2]
    assert lines[-1].startswith("13 of 13 checks passed")


@pytest.fixture
def perturbed_fixtures(tmp_path):
    for path in GOLDEN_DIR.glob("*.npz"):
        shutil.copy(path, tmp_path)
    shutil.copy(GOLDEN_DIR / "facts.json", tmp_path)
    data = dict(np.load(tmp_path / "conv_layer.npz"))
    key = "k3_SAME_s2/sigmoid/out"
    data[key] = data[key] + np.float32(1e-3) * np.abs(data[key]).max()
    np.savez(tmp_path / "conv_layer.npz", **data)
    return tmp_path


def test_a_perturbed_fixture_makes_it_fail(perturbed_fixtures, capsys):
    assert selfcheck.main(["--golden", str(perturbed_fixtures), "--no-timing"]) == 1
    out = capsys.readouterr().out
    failing = [l for l in out.splitlines() if l.endswith(" FAIL")]
    assert len(failing) == 1, out  # float32 fails; 1e-3 is within bfloat16's 2e-2
    assert "conv_layer.npz" in failing[0] and "float32" in failing[0]
    assert "1.0e-03 (k3_SAME_s2/sigmoid)" in failing[0]
    assert "12 of 13 checks passed" in out and "FAILED: SphereConv2D, 20 variants" in out


def test_missing_fixtures_are_named(tmp_path, capsys):
    assert selfcheck.main(["--golden", str(tmp_path / "nowhere"), "--no-timing"]) == 2
    err = capsys.readouterr().err
    assert f"not found in {tmp_path / 'nowhere'}" in err and "--golden DIR" in err


def test_the_mixed_tolerances_are_above_the_measured_errors():
    # Measured on this project's CPUs (docs/testing.md, "The self-check"): the worst over
    # oneDNN on / off, capped at AVX512_CORE, and 1 / 2 threads.
    measured = {"mixed_bfloat16": {"layer": 7.7e-3, "network": 3.9e-2},
                "mixed_float16": {"layer": 4.9e-4, "network": 4.9e-3}}
    for policy, tolerances in selfcheck.MIXED_TOL.items():
        for kind, tol in tolerances.items():
            assert tol >= 2 * measured[policy][kind], (policy, kind)


def test_an_installed_package_carries_the_fixtures():
    # pyproject.toml maps tests/golden/ into the wheel as spherenet_tf/golden/, where
    # spherenet_tf.fixtures looks when there is no repository beside the package.
    with open(REPO / "pyproject.toml", "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    assert setuptools["package-dir"]["spherenet_tf.golden"] == "tests/golden"
    assert "spherenet_tf.golden" in setuptools["packages"]
    assert set(setuptools["package-data"]["spherenet_tf.golden"]) >= {"*.npz", "*.json"}
    assert REPO_GOLDEN == REPO / "tests" / "golden"


@pytest.mark.parametrize("flag", ["--batch", "--steps"])
def test_a_zero_batch_or_step_count_is_refused(flag, capsys):
    with pytest.raises(SystemExit) as e:
        selfcheck.main([flag, "0"])
    assert e.value.code == 2
    assert "--batch and --steps must be at least 1" in capsys.readouterr().err
