"""The layer library on the running Keras backend: the same golden fixtures, the same
adversarial grid, the same NumPy references as the TensorFlow tests.

Written once, backend-neutral (gradients through `support.backend_grad`).  The main
test run executes this file under TensorFlow with the layers switched to the
keras.ops formulation (`formulation='portable'`, what JAX and PyTorch always run);
tests/test_backends.py runs it again under `KERAS_BACKEND=jax` and `torch`.
Tolerances are those of the TensorFlow tests: 1e-5 on forward values, 1e-4 on
gradients (tests/test_golden_layers.py), the grid's against float64 NumPy.
"""

import itertools
import os

import keras
import numpy as np
import pytest
from keras import ops

from support import numpy_beyond as beyond
from support import numpy_reference as ref
from support.adversarial import CONFIGS, FILTERS, grid, make_case, representable
from support.backend_grad import compiled_call, layer_fn, output, value_and_grads
from support.backend_models import first_fit_losses, fit_batch, small_spherenet
from support.golden_rules import check, load_npz, weight_prefix
from spherenet_tf import GASoftmaxScore, SphereConv2D, SphereNorm2D
from spherenet_tf.fixtures import LAYER_CONFIGS, LAYER_NORMS, assign_rule_weights
from spherenet_tf.losses import Loss2, loss2
from spherenet_tf.models import build_cnn9, build_resnet32, feature_model
from spherenet_tf.regularizers import WEIGHT_DECAY, L2Loss, orthogonality_loss, regularization_terms
from spherenet_tf.tf1_names import tf1_variables

BACKEND = keras.backend.backend()
#: On TensorFlow the keras.ops formulation is asked for; elsewhere it is the only one.
PORTABLE = {"formulation": "portable"}
FWD_TOL = 1e-5
GRAD_TOL = 1e-4
#: The ResNet-32s' forward values outside TensorFlow: 31 stacked convolutions, each
#: rounded by XLA's (JAX) or ATen's (PyTorch) own float32 kernels.  Measured on AMD EPYC
#: (AVX2), 2 threads: JAX 1.7e-5, PyTorch 1.6e-5 (SphereResNet-32 ref_eval/score; the
#: 9-layer models and the TF keras.ops run stay under 7e-6).
DEEP_FWD_TOL = 5e-5
NORMS = list(LAYER_NORMS)
W_NORMS = ["none", "linear", "cosine", "sigmoid"]
#: A .keras file's outputs on another backend.  The weights load bit for bit (asserted
#: exactly); the outputs differ by the two backends' float32 rounding, which the
#: lr_sigmoid SphereConvs amplify (a sigmoid of slope up to ~1/0.05 after acos):
#: measured 4.3e-6 TF (fast) -> JAX, 4.5e-6 TF -> PyTorch, on AMD EPYC (AVX2).  The
#: forward tolerance.
CROSS_TOL = FWD_TOL
#: Where tests/test_backends.py exchanges .keras files between backends.
CROSS_DIR = os.environ.get("SPHERENET_CROSS_BACKEND_DIR")


def _conv_layer_run(layer, x, weights, r):
    """(output, sum(output * r), gradients of that sum), from one compiled function."""
    layer.build(x.shape)
    value, grads = value_and_grads(layer_fn(layer), x, r, *weights, compiled={})
    out = grads.pop(1)  # d sum(out * r) / d r = out
    return out, value, grads


@pytest.mark.parametrize("config", list(LAYER_CONFIGS))
@pytest.mark.parametrize("norm", NORMS)
def test_conv_layer_matches_original(config, norm):
    g = load_npz("conv_layer.npz")
    ksize, pad, stride = LAYER_CONFIGS[config]
    layer = SphereConv2D(4, ksize, strides=stride, padding=pad, norm=norm, **PORTABLE)
    weights = [g[f"{config}/filter"]] + ([g[f"{config}/k_value_lr"]] if norm == "lr_sigmoid" else [])
    out, loss, grads = _conv_layer_run(layer, g["x"], weights, g[f"{config}/R"])
    key = f"{config}/{norm}"
    fixture = f"conv_layer.npz [{BACKEND}]"
    check(fixture, f"{key}/out", out, g[f"{key}/out"], FWD_TOL)
    check(fixture, f"{key}/L", loss, g[f"{key}/L"], FWD_TOL)
    check(fixture, f"{key}/grad_x", grads[0], g[f"{key}/grad_x"], GRAD_TOL)
    check(fixture, f"{key}/grad_filter", grads[1], g[f"{key}/grad_filter"], GRAD_TOL)
    if norm == "lr_sigmoid":
        check(fixture, f"{key}/grad_k_value_lr", grads[2], g[f"{key}/grad_k_value_lr"], GRAD_TOL)


@pytest.mark.parametrize("w_norm", W_NORMS[1:] + ["none"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_weight_normalised_score(w_norm, size):
    """'none' / 'cosine' against the original's values; 'linear' / 'sigmoid' (NaN in
    the original on large inputs) against NumPy's |x| g(theta), finite everywhere."""
    g = load_npz("wnorm_score.npz")
    layer = SphereConv2D(10, 1, padding="VALID", norm="none", w_norm=w_norm, **PORTABLE)
    x, w = g[f"x_{size}"], g["wnorm_score/filter"]
    out, loss, grads = _conv_layer_run(layer, x, [w], g["R"])
    fixture = f"wnorm_score.npz [{BACKEND}]"
    key = f"{w_norm}/{size}"
    if w_norm in ("none", "cosine"):
        check(fixture, f"{key}/out", out, g[f"{key}/out"], FWD_TOL)
        check(fixture, f"{key}/grad_x", grads[0], g[f"{key}/grad_x"], GRAD_TOL)
        check(fixture, f"{key}/grad_filter", grads[1], g[f"{key}/grad_filter"], GRAD_TOL)
    else:
        assert np.isfinite(out).all() and all(np.isfinite(gr).all() for gr in grads)
        expected = ref.sphere_conv(x.astype(np.float64), w, 1, "valid", "none", w_norm)
        check(fixture, f"{key}/out (NumPy |x|g(theta))", out, expected, FWD_TOL)


@pytest.mark.parametrize("tag", ["normal", "saturated"])
def test_loss2_matches_original(tag):
    g = load_npz("losses.npz")
    labels = ops.convert_to_tensor(g["loss2/labels"])
    value, (grad,) = value_and_grads(lambda logits: loss2(logits, labels, 10), g[f"loss2/{tag}/logits"])
    check(f"losses.npz [{BACKEND}]", f"loss2/{tag}/value", value, g[f"loss2/{tag}/value"], FWD_TOL)
    check(f"losses.npz [{BACKEND}]", f"loss2/{tag}/grad_logits", grad, g[f"loss2/{tag}/grad_logits"],
          GRAD_TOL)
    keras_loss = Loss2()(labels, ops.convert_to_tensor(g[f"loss2/{tag}/logits"]))
    check(f"losses.npz [{BACKEND}]", f"loss2/{tag}/value (Loss2)", ops.convert_to_numpy(keras_loss),
          g[f"loss2/{tag}/value"], FWD_TOL)


@pytest.mark.parametrize("i", [0, 1])
def test_orthogonality_and_weight_decay_match_original(i):
    g = load_npz("losses.npz")
    value, (grad,) = value_and_grads(orthogonality_loss, g[f"orth{i}/filter"])
    check(f"losses.npz [{BACKEND}]", f"orth{i}/value", value, g[f"orth{i}/value"], FWD_TOL)
    check(f"losses.npz [{BACKEND}]", f"orth{i}/grad", grad, g[f"orth{i}/grad"], GRAD_TOL)
    value, (grad,) = value_and_grads(L2Loss(WEIGHT_DECAY), g["l2/tensor"])
    check(f"losses.npz [{BACKEND}]", "l2/value", value, g["l2/value"], FWD_TOL)
    check(f"losses.npz [{BACKEND}]", "l2/grad", grad, g["l2/grad"], GRAD_TOL)


# ---------------------------------------------------------------------------
# The four models' forward values
# ---------------------------------------------------------------------------
def build_golden_model(name):
    """The model of fixture `name`, as its training script builds it, on this backend."""
    options = dict(formulation="portable") if BACKEND == "tensorflow" else {}
    if name == "spherenet9":
        return build_cnn9(10, norm="cosine", w_norm="none", reg=False, orth=True,
                          name="spherenet9", **options)
    if name == "baseline_cnn":
        return build_cnn9(10, norm="none", w_norm="none", reg=True, orth=False,
                          name="baseline_cnn", **options)
    if name == "sphere_resnet32":
        return build_resnet32(10, norm="linear", w_norm="none", reg=False, orth=True,
                              name="sphere_resnet32", **options)
    return build_resnet32(10, norm="none", w_norm="none", reg=True, orth=False,
                          name="baseline_resnet32", **options)


def set_golden_weights(model):
    assign_rule_weights(tf1_variables(model), weight_prefix())


@pytest.mark.parametrize("name", ["spherenet9", "baseline_cnn", "sphere_resnet32", "baseline_resnet32"])
def test_model_forward_matches_original(name):
    """Training-mode pass 1 (score, feature, fit, reg, orth) and eval mode with the
    fixture's reference moving averages (`ref_eval`), as tests/test_golden_models.py."""
    g = load_npz(f"model_{name}.npz")
    model = build_golden_model(name)
    set_golden_weights(model)
    with_features = feature_model(model)
    fixture = f"model_{name}.npz forward [{BACKEND}]"
    logits, feature = compiled_call(with_features, training=True)(g["images"])
    reg, orth = regularization_terms(model)
    values = {"score": logits, "feature": feature, "fit": loss2(logits, g["labels"]),
              "reg": reg, "orth": orth}
    tol = DEEP_FWD_TOL if (name.endswith("resnet32") and BACKEND != "tensorflow") else FWD_TOL
    for key, value in values.items():
        check(fixture, f"init/train/{key}", ops.convert_to_numpy(value), g[f"init/train/{key}"], tol)
    for bn_name in g["bn_layer_names"]:
        bn_name = str(bn_name)
        layer = model.get_layer(bn_name.removesuffix("/bn").replace("/", "_") + "_bn")
        layer.moving_mean.assign(g[f"ema_ref/{bn_name}/mean"])
        layer.moving_variance.assign(g[f"ema_ref/{bn_name}/var"])
    logits = compiled_call(model, training=False)(g["images"])
    check(fixture, "ref_eval/score", logits, g["ref_eval/score"], tol)


# ---------------------------------------------------------------------------
# The adversarial grid (float32): no NaN/Inf, and the NumPy values
# ---------------------------------------------------------------------------
NONFINITE = {"cases": 0, "values": 0, "nonfinite": 0}


@pytest.mark.parametrize("norm,w_norm", list(itertools.product(NORMS, W_NORMS)))
def test_no_nan_or_inf_on_the_adversarial_grid(norm, w_norm):
    layers, compiled = {}, {}
    for config, structure, xm, wm in grid("float32"):
        x, w, k_value = make_case(config, structure, xm, wm, seed=0, policy="float32")
        if not representable(norm, w_norm, config, x, w, "float32"):
            continue
        k, stride, padding, shape = CONFIGS[config]
        if config not in layers:
            layers[config] = SphereConv2D(FILTERS, k, strides=stride, padding=padding, norm=norm,
                                          w_norm=w_norm, **PORTABLE)
            layers[config].build(shape)
            compiled[config] = {}
        layer = layers[config]
        weights = [w] + ([k_value] if norm == "lr_sigmoid" else [])
        # the output comes back as the gradient of sum(out * C) with respect to C
        cot = np.random.RandomState(7).choice([-1.0, 1.0], size=layer.compute_output_shape(shape))
        _, grads = value_and_grads(layer_fn(layer), x, cot, *weights, compiled=compiled[config])
        out = grads.pop(1)  # d sum(out * cot) / d cot = out
        arrays = [out] + grads
        bad = sum(int(np.sum(~np.isfinite(a))) for a in arrays)
        NONFINITE["cases"] += 1
        NONFINITE["values"] += sum(a.size for a in arrays)
        NONFINITE["nonfinite"] += bad
        assert bad == 0, (f"[{BACKEND}] {bad} NaN/Inf: norm={norm}, w_norm={w_norm}, {config}, "
                          f"{structure}, max|x|={xm:g}, max|w|={wm:g}")
        if (norm, w_norm) == ("none", "none"):
            continue
        expected = ref.sphere_conv(x.astype(np.float64), w, stride, padding, norm, w_norm,
                                   k_value if norm == "lr_sigmoid" else None)
        if norm == "none":
            patches = ref.patches(x.astype(np.float64), k, stride, padding)
            tol = 2e-3 * np.sqrt(np.sum(patches**2, axis=(3, 4, 5)) + ref.EPS).max()
        else:
            tol = 2e-3
        err = np.abs(out - expected).max()
        assert err <= tol, f"[{BACKEND}] norm={norm}, w_norm={w_norm}, {config}: {err:.3g} > {tol:.3g}"


# ---------------------------------------------------------------------------
# The layers beyond the original
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("g_name", ["linear", "cosine", "sigmoid"])
def test_ga_softmax_score_with_margin_matches_numpy(g_name):
    rng = np.random.RandomState(3)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0, 1], np.int32)
    head = GASoftmaxScore(4, g=g_name, margin=1.5)
    head.build((None, 5))
    head.kernel.assign(w)
    plain = ops.convert_to_numpy(head(ops.convert_to_tensor(x)))
    margin = ops.convert_to_numpy(head(ops.convert_to_tensor(x), ops.convert_to_tensor(labels)))
    check(f"GA-softmax [{BACKEND}]", f"{g_name}/logits", plain, beyond.ga_logits(x, w, g_name)[0], FWD_TOL)
    check(f"GA-softmax [{BACKEND}]", f"{g_name}/margin logits", margin,
          beyond.ga_margin_logits(x, w, labels, g_name, 1.5), FWD_TOL)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_sphere_norm_matches_numpy(alpha):
    rng = np.random.RandomState(4)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    layer = SphereNorm2D(4, 3, alpha_init=alpha, beta_init=1.0 - alpha, **PORTABLE)
    layer.build(x.shape)
    a = np.full(4, alpha, np.float32)
    out = output(layer, x, w, a, 1.0 - a)
    check(f"SphereNorm2D [{BACKEND}]", f"alpha={alpha}", out,
          beyond.sphere_norm(x.astype(np.float64), w, a, 1.0 - a), FWD_TOL)


@pytest.mark.parametrize("magnitude", ["ball", "tanh", "linear", "seg", "log"])
def test_decoupled_operators_match_numpy(magnitude):
    rng = np.random.RandomState(5)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    layer = SphereConv2D(4, 3, norm="cosine", magnitude=magnitude, rho=2.0, **PORTABLE)
    layer.build(x.shape)
    out = output(layer, x, w)
    check(f"decoupled [{BACKEND}]", magnitude, out,
          beyond.decoupled_conv(x.astype(np.float64), w, magnitude, "cosine", rho=2.0)[0], FWD_TOL)


# ---------------------------------------------------------------------------
# Saving, and model.fit with the original's losses
# ---------------------------------------------------------------------------
def test_fit_trains_with_weight_decay_and_orthogonality():
    """A few `fit` steps: the loss includes the regularisers and goes down; the first
    step's loss equals loss2 + reg + orth computed by hand before any update."""
    model = small_spherenet(PORTABLE if BACKEND == "tensorflow" else {})
    images, labels = fit_batch()
    logits = compiled_call(model, training=True)(images)
    reg, orth = regularization_terms(model)
    expected = float(ops.convert_to_numpy(loss2(logits, labels) + reg + orth))
    assert float(ops.convert_to_numpy(orth)) > 0 and float(ops.convert_to_numpy(reg)) > 0
    losses = first_fit_losses(small_spherenet(PORTABLE if BACKEND == "tensorflow" else {}))
    assert abs(losses[0] - expected) <= 1e-5 * abs(expected), (losses[0], expected)
    assert losses[-1] < losses[0], losses
    if CROSS_DIR:
        np.save(os.path.join(CROSS_DIR, f"{BACKEND}_fit.npy"), np.array(losses))


@pytest.mark.skipif(CROSS_DIR is None, reason="run by tests/test_backends.py, which sets "
                    "SPHERENET_CROSS_BACKEND_DIR to exchange .keras files between backends")
def test_keras_files_cross_backends():
    """Load every .keras file another backend saved there and compare its outputs with
    those it saved (1e-6); then save this backend's own file and outputs."""
    images, _ = fit_batch()
    loaded = 0
    for name in sorted(os.listdir(CROSS_DIR)):
        if name.endswith(".keras") and not name.startswith(BACKEND):
            model = keras.saving.load_model(os.path.join(CROSS_DIR, name))
            for saved, loaded_weight in zip(small_spherenet().get_weights(), model.get_weights()):
                np.testing.assert_array_equal(loaded_weight, saved)  # every weight, every bit
            expected = np.load(os.path.join(CROSS_DIR, name.replace(".keras", ".npy")))
            got = ops.convert_to_numpy(model(images, training=False))
            err = np.abs(got - expected).max() / np.abs(expected).max()
            assert err <= CROSS_TOL, f"[{BACKEND}] {name}: relative error {err:.3g}"
            loaded += 1
    model = small_spherenet()
    model.save(os.path.join(CROSS_DIR, f"{BACKEND}.keras"))
    np.save(os.path.join(CROSS_DIR, f"{BACKEND}.npy"), ops.convert_to_numpy(model(images, training=False)))
    with open(os.path.join(CROSS_DIR, f"{BACKEND}.loaded"), "w") as f:
        f.write(str(loaded))
