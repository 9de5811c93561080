"""The TensorFlow fast path (`sphere_ops`) against the statement of the formulas
(`formulas`, with the norms of `portable_ops`): values and gradients of every kernel, for
every `norm`, on the adversarial grid of the numerical-safety tests (all-zero patches, a
zero filter, inputs exactly (anti)parallel to a filter, magnitudes from 1e-20 to 1e20).

The two are independent statements of the same arithmetic: hand-written gradients that
take every derivative from the cosine, against autodiff of the formulas.  Both are also
held to a float64 reference (tests/test_gradient_accuracy.py); this module is the check
an engineer who changes a formula in one place runs first.
"""

import numpy as np
import pytest
import tensorflow as tf

from support.adversarial import CONFIGS, FILTERS, grid, make_case
from spherenet_tf import formulas, portable_ops, sphere_ops

# Values, relative to max(largest |value|, 1) (|g| <= 1; a layer whose outputs are all
# near 0 is compared at g's own scale): float32 rounding of two orders of the same
# arithmetic (the fast path divides the filters, the formulas the convolution, and the
# fast linear is the original's 1 - 0.63662 acos(c)).  Worst measured 3.7e-7 (AMD EPYC).
VALUE_TOL = 1e-5
# Gradients, relative to the largest: the hand-written backward pass and autodiff of the
# formulas agree to float32 rounding.  Worst measured 4.1e-6 (lr_sigmoid, a zero filter
# beside 1e6-sized ones).
GRADIENT_TOL = 1e-5
# Patches exactly (anti)parallel to a filter: d g / d cos is bounded only by the 2**-23
# clamp of 1 - cos^2 (2.9e3), so the two formulations' roundings of the same cosine (6e-8
# apart) move g and its gradients by up to 2.9e3 x 6e-8 x C(k)/2k.  Worst measured 3.1e-4
# (values, linear) and 3.9e-4 (gradients, lr_sigmoid at k = 0.05).
PARALLEL_TOL = 1e-3
# Gradients whose exact value lies below float32's normal range (~1e-38: 1e-20 inputs with
# 1e20 filters, or the reverse) come out as denormals that differ between any two orders
# of arithmetic; they are not compared.
SMALLEST_COMPARED = 1e-30
ANGULAR_NORMS = ["linear", "cosine", "sigmoid", "lr_sigmoid"]
CASES = [c for c in grid("float32")]


def _rel(a, b, floor=0.0):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), floor)
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a).max())


def _both(norm, config, x, w, k_value):
    """(fast, formulas) as [y, dx, dW(, dk)] for sum(y * R)."""
    ksize, stride, padding, _ = CONFIGS[config]
    x, w = tf.constant(x), tf.constant(w)
    k_value = tf.constant(k_value)
    r = tf.constant(np.random.RandomState(3).standard_normal((1, 1, 1, FILTERS)), tf.float32)
    results = []
    for fast in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([x, w, k_value])
            k = formulas.effective_k(k_value) if norm == "lr_sigmoid" else None
            if fast:
                y = sphere_ops.sphere_convolution(x, w, norm, k, (stride, stride), padding)
            else:
                conv = tf.nn.conv2d(x, w, stride, padding.upper())
                xnorm = portable_ops.patch_norm(x, (ksize, ksize), (stride, stride), padding)
                y = formulas.sphere_response(conv, xnorm, portable_ops.filter_norm(w), norm, "none", k)
            loss = tf.reduce_sum(y * r)
        sources = [x, w] + ([k_value] if norm == "lr_sigmoid" else [])
        results.append([y.numpy()] + [g.numpy() for g in tape.gradient(loss, sources)])
    return results


@pytest.mark.parametrize("norm", ANGULAR_NORMS)
def test_sphere_convolution_matches_the_formulas(norm):
    failures = []
    for config, structure, x_mag, w_mag in CASES:
        if x_mag * w_mag > 1e30 or (0 < x_mag * w_mag < 1e-30):
            continue  # plain x.W beyond float32: the formulas' unscaled convolution overflows
        x, w, k_value = make_case(config, structure, x_mag, w_mag, seed=11, policy="float32")
        fast, reference = _both(norm, config, x, w, k_value)
        parallel = structure in ("parallel", "antiparallel")
        for i, (name, a, b) in enumerate(zip(("y", "dx", "dW", "dk"), fast, reference)):
            if i and np.abs(b).max() < SMALLEST_COMPARED:
                continue
            tol = PARALLEL_TOL if parallel else (GRADIENT_TOL if i else VALUE_TOL)
            err = _rel(a, b, floor=0.0 if i else 1.0)
            if not err <= tol:
                failures.append(f"{config} {structure} x {x_mag:g} w {w_mag:g}: {name} {err:.2e} > {tol:g}")
    assert not failures, f"{norm}: " + "; ".join(failures[:10])


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("x_mag", [0.0, 1e-20, 1.0, 1e20])
def test_patch_norms_match_the_formula(config, x_mag):
    ksize, stride, padding, shape = CONFIGS[config]
    x = tf.constant(np.random.RandomState(5).standard_normal(shape).astype(np.float32) * np.float32(x_mag))
    dy = tf.constant(np.random.RandomState(6).standard_normal((1,) * 4), tf.float32)
    norms = {}
    for name, fn in (("fast", sphere_ops.patch_norm),
                     ("original", lambda *a: sphere_ops.patch_norm(*a, original=True)),
                     ("formula", portable_ops.patch_norm)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            n = fn(x, (ksize, ksize), (stride, stride), padding)
            loss = tf.reduce_sum(n * dy)
        norms[name] = (n.numpy(), tape.gradient(loss, x).numpy())
    # The original's order squares unscaled inputs: Inf from ~1.8e19, as the original did
    # (the 'original' formulation replays it; only the port's own forms are guarded).
    for name in ("fast", "original") if x_mag < 1e19 else ("fast",):
        assert _rel(norms[name][0], norms["formula"][0]) <= VALUE_TOL, name
        assert _rel(norms[name][1], norms["formula"][1]) <= GRADIENT_TOL, name
