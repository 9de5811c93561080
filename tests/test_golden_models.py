"""Whole models against the original: logits, losses, BN statistics, 3 Adam steps.

Fixtures model_<name>.npz, made by running the original TF1 code
(tests/golden/README.md, item 4).  The procedure is replayed twice per model:

* **replay**: the way the fixtures were made (oneDNN off) and with patch norms
  computed as the original did (a ones-kernel convolution).  Everything must match:
  forward values to 1e-5, values after Adam steps to the measured spread of float32
  TF across CPUs (REPLAY_TOL below).
* **port**: the port as users run it (TF defaults, fast box-sum patch norm).  Forward
  values must still match to 1e-5.  After Adam steps the fixtures are sensitive to
  last-bit differences (README section 4): in SphereNet-9 the gradients of
  conv1_0 ... conv2_1 come out of heavy cancellation, so the exact rewrite of the
  patch norm alone moves them by ~2e-3 of their maximum, and Adam's sign-like first
  steps turn that into lr-sized weight changes.  Logits and losses are then held to
  the measured spread (PORT_ADAM_TOL below).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from support.repo import REPO, golden_path
from support.golden_rules import check, load_npz
from spherenet_tf.fixtures import FORWARD_TOL, NETWORKS

FWD_TOL = FORWARD_TOL  # shared with the self-check: spherenet_tf/fixtures.py
# After one or more Adam steps, float32 TF does not reproduce itself when only the
# thread count or the kernel library changes (tests/golden/README.md, section 4), and
# the values derived from cancellation-dominated gradients (features, BN betas, Adam
# slots) move most.  Each tolerance is 2x the worst error against the fixture measured
# over intra-op threads 1 and 2, oneDNN off, on, and capped at AVX2
# (ONEDNN_MAX_CPU_ISA=AVX2), on an Intel Ice Lake (AVX-512), and above the first
# failures seen on CI's AMD EPYC; rounded up to 1, 2 or 5 x 10^k.  The figures and how
# they were measured: docs/testing.md.
#
# Categories: "after_adam" = adam/step1+ and after_adam/{train,eval} logits and losses;
# "feature" = their fc6 / pooled features; "state" = weights and BN moving statistics
# after the steps; "slot" = Adam's moments.
REPLAY_TOL = {
    # measured: after_adam 6.9e-4 (score), feature 1.1e-2, state 3.8e-3, slot 1.1e-1
    "spherenet9": {"after_adam": 2e-3, "feature": 5e-2, "state": 1e-2, "slot": 5e-1},
    # measured: after_adam 1.1e-4 (AMD EPYC: 2.0e-4), feature 7.4e-4, state 4.4e-4,
    # slot 2.4e-2
    "baseline_cnn": {"after_adam": 5e-4, "feature": 2e-3, "state": 1e-3, "slot": 5e-2},
    # measured: after_adam 1.2e-3, feature 6.3e-3, state 1.7e-2, slot 4.6e-2
    "sphere_resnet32": {"after_adam": 5e-3, "feature": 2e-2, "state": 5e-2, "slot": 1e-1},
    # measured: after_adam 2.9e-2 (a single ReLU input within float noise of 0 moves
    # the gradients by ~1%, README section 4), feature 1.7e-2, state 1.7e-2, slot 4.7e-2
    "baseline_resnet32": {"after_adam": 1e-1, "feature": 5e-2, "state": 5e-2, "slot": 1e-1},
}
# Eval-mode outputs of the non-sphere models are ~1e11 (zero-started moving
# averages, README section 5.3): README section 4 compares them at 1e-4 of the max
# (measured: 2.3e-6).
HUGE_EVAL_TOL = 1e-4
# The port as users run it (TF defaults, fast patch norm), after-Adam logits and
# losses; measured as above: spherenet9 1.1e-3, baseline_cnn 1.1e-4,
# sphere_resnet32 1.2e-3, baseline_resnet32 2.9e-2.
PORT_ADAM_TOL = {"spherenet9": 5e-3, "baseline_cnn": 5e-4, "sphere_resnet32": 5e-3,
                 "baseline_resnet32": 1e-1}

MODELS = list(NETWORKS)
FORWARD_PREFIXES = ("init/train/", "warmup/", "ema_after_pass1/", "ema_after_warmup/",
                    "ref_eval/", "ref_eval_W1/", "adam/step0/", "init/eval/")


def _category(key):
    if key.startswith(FORWARD_PREFIXES):
        return "forward"
    if key.endswith("/feature") and not key.startswith("after_adam/var/"):
        return "feature"
    if key.startswith("after_adam/var/") and key.endswith(("/Adam", "/Adam_1")):
        return "slot"
    if key.startswith("after_adam/var/") or key.startswith("ema_after_adam/"):
        return "state"
    return "after_adam"


@pytest.fixture(scope="module", params=MODELS)
def replay(request, tmp_path_factory):
    name = request.param
    golden_path(f"model_{name}.npz")
    out = tmp_path_factory.mktemp("golden") / f"{name}.npz"
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(
        [sys.executable, "-m", "support.golden_models", name, str(out),
         "--original-formulation"],
        check=True, env=env, cwd=str(REPO / "tests"),
    )
    return name, dict(np.load(out))


@pytest.fixture(scope="module", params=MODELS)
def port(request):
    from support.golden_models import run_procedure

    name = request.param
    golden_path(f"model_{name}.npz")
    return name, run_procedure(name)[1]


def test_replay_matches_original_everywhere(replay):
    name, results = replay
    g = load_npz(f"model_{name}.npz")
    tolerances = {"forward": FWD_TOL, **REPLAY_TOL[name]}
    for key, value in results.items():
        category = _category(key)
        check(f"model_{name}.npz replay {category}", key, value, g[key], tolerances[category])
    assert "after_adam/train/score" in results and "adam/step2/fit" in results


def test_port_forward_matches_original(port):
    name, results = port
    g = load_npz(f"model_{name}.npz")
    fixture = f"model_{name}.npz port forward"
    huge = name != "spherenet9"
    n = 0
    for key, value in results.items():
        if _category(key) != "forward":
            continue
        tol = HUGE_EVAL_TOL if (huge and key.startswith("init/eval/")) else FWD_TOL
        check(fixture, key, value, g[key], tol)
        n += 1
    assert n > 40


def test_port_after_adam_logits_and_losses(port):
    name, results = port
    g = load_npz(f"model_{name}.npz")
    fixture = f"model_{name}.npz port after_adam"
    keys = [k for k in results if _category(k) == "after_adam"]
    assert len(keys) >= 15
    for key in keys:
        check(fixture, key, results[key], g[key], PORT_ADAM_TOL[name])

