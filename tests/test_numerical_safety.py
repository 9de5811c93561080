"""Numerical safety of SphereConv2D: no NaN or Inf, forward or backward, for every
norm x w_norm on the inputs where the angle maths is fragile.

Cases: all-zero patches (padding borders, blank images, a zero filter), inputs
exactly parallel or anti-parallel to a filter (|cos| = 1, where d acos / dc is
unbounded), magnitudes of inputs and filters from 1e-20 to 1e20, and the layer
under 'mixed_float16' and 'mixed_bfloat16' (inputs in the compute dtype, as a
mixed-precision model feeds them).

Each input is checked three ways: the output and the gradients of sum(out * R)
with respect to the input, the kernel and (lr_sigmoid) k_value are counted for
NaN/Inf (must be 0), and the output is compared with the float64 NumPy reference
(tests/support/numpy_reference.py) -- so a "fix" that hid NaN behind a wrong value would
fail.  A case is skipped only where the exact result itself cannot be represented
in the output dtype (a plain convolution, norm = w_norm = 'none', of 1e20-sized
inputs and filters is 1e40: Inf is the right float32 answer); those are counted.
The figures (inputs tried, NaN/Inf found, cases not representable) are printed at
the end of the test run.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import numpy_reference as ref
from support.adversarial import (CONFIGS, FILTERS, FLOAT16_MAX, STRUCTURES, X_MAX_EXP, grid as _grid,
                                 make_case, representable as _representable)
from support.repo import REPORT
from spherenet_tf import SphereConv2D, formulas, portable_ops, sphere_ops

NORMS = ["none", "linear", "cosine", "sigmoid", "lr_sigmoid"]
W_NORMS = ["none", "linear", "cosine", "sigmoid"]
VARIANTS = list(itertools.product(NORMS, W_NORMS))
POLICIES = ["float32", "mixed_float16", "mixed_bfloat16"]
FLOAT32_MAX = float(np.finfo(np.float32).max)

_runners = {}
COUNTS = {"tried": 0, "nonfinite": 0, "not_representable": 0, "values": 0,
          "float16_gradient_overflow": 0}


def _runner(norm, w_norm, config, policy):
    """A compiled (output, gradients) function of one layer, traced once and reused."""
    key = (norm, w_norm, config, policy)
    if key not in _runners:
        k, stride, padding, shape = CONFIGS[config]
        layer = SphereConv2D(FILTERS, k, strides=stride, padding=padding, norm=norm,
                             w_norm=w_norm, dtype=policy)
        in_dtype = {"float32": tf.float32, "mixed_float16": tf.float16,
                    "mixed_bfloat16": tf.bfloat16}[policy]
        layer.build(shape)
        cot = tf.constant(np.random.RandomState(7).choice([-1.0, 1.0], size=(1, 1, 1, FILTERS)),
                          tf.float32)

        @tf.function(input_signature=[tf.TensorSpec(shape, in_dtype),
                                      tf.TensorSpec((k, k, shape[-1], FILTERS), tf.float32),
                                      tf.TensorSpec((FILTERS,), tf.float32)])
        def run(x, w, k_value):
            layer.kernel.assign(w)
            sources = [x, layer.kernel]
            if layer.k_value is not None:
                layer.k_value.assign(k_value)
                sources.append(layer.k_value)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * cot)
            return y, tape.gradient(loss, sources)

        _runners[key] = (run, layer, cot)
    return _runners[key]


def check_case(norm, w_norm, config, policy, x, w, k_value):
    """Run one case; returns the number of NaN/Inf values found (0 expected)."""
    COUNTS["tried"] += 1
    if not _representable(norm, w_norm, config, x, w, policy):
        COUNTS["not_representable"] += 1
        return 0
    run, layer, _ = _runner(norm, w_norm, config, policy)
    xt = tf.constant(x)
    if policy == "mixed_bfloat16":
        xt = tf.cast(xt, tf.bfloat16)
    y, grads = run(xt, tf.constant(w), tf.constant(k_value))
    arrays = [np.asarray(tf.cast(t, tf.float32), np.float64) for t in [y] + list(grads)]
    if policy == "mixed_float16" and not np.isfinite(arrays[1]).all():
        # The input gradient is float16 like the input: where the exact gradient (the
        # same layer in float32) exceeds 65504, +-Inf is its float16 value.
        run32, _, _ = _runner(norm, w_norm, config, "float32")
        dx32 = run32(tf.constant(x.astype(np.float32)), tf.constant(w), tf.constant(k_value))[1][0]
        dx32 = np.asarray(dx32, np.float64)
        overflow = (np.abs(dx32) > FLOAT16_MAX) & (arrays[1] == np.sign(dx32) * np.inf)
        COUNTS["float16_gradient_overflow"] += int(overflow.sum())
        arrays[1] = np.where(overflow, 0.0, arrays[1])
    bad = sum(int(np.sum(~np.isfinite(a))) for a in arrays)
    COUNTS["values"] += sum(a.size for a in arrays)
    COUNTS["nonfinite"] += bad
    assert bad == 0, (f"{bad} NaN/Inf for norm={norm}, w_norm={w_norm}, {config}, {policy}, "
                      f"max|x|={np.abs(x).max():.3g}, max|w|={np.abs(w).max():.3g}")
    # and the finite values are the right ones (not for a bfloat16 norm-after-w_norm:
    # its "cosine" is cos / |W|, which multiplies bfloat16's 8-bit rounding by 1 / |W|)
    if policy == "mixed_bfloat16" and "none" not in (norm, w_norm):
        return bad
    k, stride, padding, _ = CONFIGS[config]
    expected = ref.sphere_conv(x.astype(np.float64), w, stride, padding, norm, w_norm,
                               k_value if norm == "lr_sigmoid" else None)
    got = arrays[0]
    if (norm, w_norm) == ("none", "none"):
        n = k * k * x.shape[-1]
        scale = n * float(np.abs(x).max()) * float(np.abs(w).max())
        if policy == "mixed_float16":  # float16 filter and products: below 6e-8 is 0
            tol = 2e-2 * scale + n * 6e-8 * (1 + float(np.abs(x).max()) + float(np.abs(w).max()))
        else:  # products below the smallest normal float32 may flush to zero; bfloat16: 8 bits
            tol = (3e-2 if policy == "mixed_bfloat16" else 1e-5) * scale + n * 1e-37
    elif norm == "none":  # |x| cos or |x| g: relative to the largest patch norm
        patches = ref.patches(x.astype(np.float64), k, stride, padding)
        tol = (0.1 if policy == "mixed_bfloat16" else 2e-3) * np.sqrt(
            np.sum(patches**2, axis=(3, 4, 5)) + ref.EPS).max()
    else:  # g(theta) in [-1, 1]; acos(c) near |c| = 1 amplifies the rounding of c
        # (float32: 2e-4; a bfloat16 x.W, 8 bits, moves a parallel cos by ~4e-3 and
        # theta = acos(cos) by ~0.09)
        tol = 0.15 if policy == "mixed_bfloat16" else 2e-3
    err = np.abs(got - expected).max()
    assert err <= tol, (f"norm={norm}, w_norm={w_norm}, {config}, {policy}: max error "
                        f"{err:.3g} > {tol:.3g} against the float64 reference")
    return bad


# ---------------------------------------------------------------------------
# The extremes on a grid, every variant
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("policy", [POLICIES[0]] + [pytest.param(p, marks=pytest.mark.slow)
                                                     for p in POLICIES[1:]])
@pytest.mark.parametrize("norm,w_norm", VARIANTS)
def test_no_nan_or_inf_at_the_extremes(norm, w_norm, policy):
    for i, (config, structure, xm, wm) in enumerate(_grid(policy)):
        x, w, k_value = make_case(config, structure, xm, wm, seed=i, policy=policy)
        check_case(norm, w_norm, config, policy, x, w, k_value)


# ---------------------------------------------------------------------------
# Random cases (property-based)
# ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=1000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(variant=st.sampled_from(VARIANTS), config=st.sampled_from(list(CONFIGS)),
       structure=st.sampled_from(STRUCTURES),
       x_exp=st.one_of(st.none(), st.floats(-20, 20)), w_exp=st.floats(-20, 20),
       seed=st.integers(0, 2**31 - 1))
def test_no_nan_or_inf_on_random_inputs(policy, variant, config, structure, x_exp, w_exp, seed):
    # x_exp in [-20, 20] mapped onto the policy's input range
    x_mag = 0.0 if x_exp is None else 10.0 ** (-20 + (x_exp + 20) * (X_MAX_EXP[policy] + 20) / 40)
    x, w, k_value = make_case(config, structure, x_mag, 10.0**w_exp, seed, policy)
    check_case(*variant, config, policy, x, w, k_value)


MAGNITUDE_CASES = [(m, r) for m in portable_ops.MAGNITUDES if m != "none"
                   for r in (["batch_mean", "learned", 2.0] if m in portable_ops.MAGNITUDES_WITH_RHO
                             else ["batch_mean"])]


@pytest.mark.slow
@pytest.mark.parametrize("magnitude,rho", MAGNITUDE_CASES)
def test_decoupled_operators_stay_finite_at_the_extremes(magnitude, rho):
    """The `magnitude` operators h(|x|) g(theta) (Decoupled Networks), training and
    inference, on the extremes: NaN/Inf in outputs and gradients counted (0 expected)."""
    for norm in ["linear", "cosine", "sigmoid", "lr_sigmoid"]:
        layer = SphereConv2D(FILTERS, 3, strides=2, padding="same", norm=norm, magnitude=magnitude, rho=rho)
        layer.build(CONFIGS["strided"][3])
        sources = [w for w in (layer.kernel, layer.k_value, layer.radius) if w is not None]

        @tf.function
        def run(x, w, training):
            layer.kernel.assign(w)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=training)
                loss = tf.reduce_sum(y * tf.cast(tf.range(FILTERS) % 2 * 2 - 1, y.dtype))
            return [y] + tape.gradient(loss, [x] + sources)

        mags = [0.0, 1e-20, 1.0, 1e20]
        cases = [("random", xm, wm) for xm in mags for wm in mags[1:]]
        cases += [(s, m, m) for s in ("parallel", "antiparallel", "zero_filter") for m in mags[1:]]
        for i, (structure, xm, wm) in enumerate(cases):
            x, w, _ = make_case("strided", structure, xm, wm, seed=i, policy="float32")
            for training in (True, False):
                COUNTS["tried"] += 1
                arrays = [np.asarray(t) for t in run(tf.constant(x), tf.constant(w), training)]
                bad = sum(int(np.sum(~np.isfinite(a))) for a in arrays)
                COUNTS["values"] += sum(a.size for a in arrays)
                COUNTS["nonfinite"] += bad
                assert bad == 0, (magnitude, rho, norm, structure, xm, wm, training)


def test_a_mixed_precision_model_stays_finite():
    """The global 'mixed_float16' policy: the angle layers compute in float32 (their
    filters stay float32, their float16 inputs are widened exactly), plain ones in
    float16; a zero image and a huge filter give finite outputs and gradients."""
    import keras

    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        from spherenet_tf.models import build_cnn9

        model = build_cnn9(norm="linear", w_norm="sigmoid", widths=(8, 8, 8))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    conv = model.get_layer("conv1_0")
    assert conv.compute_dtype == "float32" and model.get_layer("conv1_0_bn").compute_dtype == "float16"
    conv.kernel.assign(conv.kernel * 1e20)
    images = np.zeros((2, 32, 32, 3), np.float32)
    images[1] = 255.0
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_sum(tf.cast(logits, tf.float32))
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(logits.numpy()).all()
    assert all(np.isfinite(g.numpy()).all() for g in grads)


def test_spherical_layers_opt_out_of_float16_compute_only():
    assert SphereConv2D(4, 3, norm="cosine", dtype="mixed_float16").compute_dtype == "float32"
    assert SphereConv2D(4, 3, norm="none", w_norm="cosine", dtype="mixed_float16").compute_dtype == "float32"
    assert SphereConv2D(4, 3, norm="none", dtype="mixed_float16").compute_dtype == "float16"
    assert SphereConv2D(4, 3, norm="linear", dtype="mixed_bfloat16").compute_dtype == "bfloat16"
    assert SphereConv2D(4, 3, norm="cosine", dtype="float64").compute_dtype == "float64"


def test_the_rescaled_filter_keeps_every_bit():
    """Convolving with W / 2**k and dividing by |W| / 2**k gives the unscaled formula's
    outputs and gradients bit for bit (the golden tests depend on it).  The fast path of
    a `norm` without `w_norm` convolves with the unit filters W / |W| instead: the same
    in real arithmetic, summed in another order, so there it is held to the golden
    tolerances (1e-5 of the largest output, 1e-4 of the largest gradient)."""
    rng = np.random.RandomState(3)
    x = tf.constant(rng.standard_normal((2, 6, 6, 3)).astype(np.float32) * 30)
    w = tf.constant(rng.standard_normal((3, 3, 3, 4)).astype(np.float32) * 0.2)
    np.testing.assert_array_equal(portable_ops.kernel_scale(w).numpy().ravel(),
                                  2.0 ** np.ceil(np.log2(np.abs(w.numpy()).max(axis=(0, 1, 2)))))
    assert portable_ops.kernel_scale(tf.zeros((1, 1, 3, 1))).numpy().item() == 1.0
    assert portable_ops.kernel_scale(tf.fill((1, 1, 1, 1), 3e20)).numpy().item() == 2.0**69
    for norm, w_norm in VARIANTS:
        if (norm, w_norm) == ("none", "none"):
            continue
        layer = SphereConv2D(4, 3, norm=norm, w_norm=w_norm)
        layer.build(x.shape)
        layer.kernel.assign(w)
        k = tf.abs(layer.k_value) + 0.05 if norm == "lr_sigmoid" else None
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            got = layer(x)
            plain = formulas.sphere_response(tf.nn.conv2d(x, layer.kernel, 1, "SAME"),
                                               sphere_ops.patch_norm(x, (3, 3)),
                                               portable_ops.filter_norm(layer.kernel), norm, w_norm, k)
            losses = [tf.reduce_sum(t * t) for t in (got, plain)]
        grads = zip(tape.gradient(losses[0], [x, layer.kernel]),
                    tape.gradient(losses[1], [x, layer.kernel]))
        if w_norm == "none":  # unit-filter fast path
            np.testing.assert_allclose(got.numpy(), plain.numpy(), rtol=0,
                                       atol=1e-5 * np.abs(plain.numpy()).max())
            for a, b in grads:
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0,
                                           atol=1e-4 * np.abs(b.numpy()).max(),
                                           err_msg=f"{norm}/{w_norm}")
            continue
        np.testing.assert_array_equal(got.numpy(), plain.numpy())
        for a, b in grads:
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{norm}/{w_norm}")


def test_huge_inputs_and_filters_give_the_unscaled_angle():
    """x and W near 1e20 (x.W = 1e40 overflows float32): the response is that of
    x / 2**k and W / 2**k, which the angle does not depend on."""
    rng = np.random.RandomState(4)
    x = rng.standard_normal((1, 5, 5, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    for norm, w_norm in [("cosine", "none"), ("linear", "cosine"), ("none", "sigmoid")]:
        layer = SphereConv2D(4, 3, norm=norm, w_norm=w_norm)
        layer.build(x.shape)
        layer.kernel.assign(w * 1e20)
        huge = layer(x * 1e20).numpy()
        expected = ref.sphere_conv(x.astype(np.float64) * 1e20, w.astype(np.float64) * 1e20,
                                   norm=norm, w_norm=w_norm)
        assert np.isfinite(huge).all()
        # float32 rounding of g near 0 (linear g(pi/2) = -3.6e-7 is a cancellation)
        np.testing.assert_allclose(huge, expected, rtol=1e-5,
                                   atol=1e-6 * max(1.0, np.abs(expected).max()))


REPORT["numerical safety (SphereConv2D: every norm x w_norm, and the decoupled magnitudes)"] = lambda: (
    f"{COUNTS['tried']} inputs tried, {COUNTS['values']} output/gradient values checked, "
    f"{COUNTS['nonfinite']} NaN/Inf found; {COUNTS['not_representable']} inputs skipped as not "
    "representable (a plain convolution's exact result, or a float16 input, beyond the dtype); "
    f"{COUNTS['float16_gradient_overflow']} float16 input-gradient values beyond 65504 in float32 "
    "too, hence +-Inf in float16"
) if COUNTS["tried"] else ""
