"""SphereConv2D, loss2, weight decay and the orth constraint against the original.

Fixtures: conv_layer.npz (one `_conv_layer` per config and norm), wnorm_score.npz
(score-style layer with every `w_norm`), losses.npz (loss2, orth, l2), all produced
by running the original TF1 code (tests/golden/README.md, items 1-3).
Tolerances (README section 4): 1e-5 relative to the largest magnitude on forward
values, 1e-4 on gradients.
"""

import numpy as np
import pytest
import tensorflow as tf

from support.golden_rules import check, load_npz
from spherenet_tf import SphereConv2D, formulas, portable_ops, sphere_ops
from spherenet_tf.fixtures import FORWARD_TOL, LAYER_CONFIGS, LAYER_NORMS, SCORE_SIZES, SCORE_W_NORMS
from spherenet_tf.losses import loss2
from spherenet_tf.regularizers import WEIGHT_DECAY, L2Loss, orthogonality_loss

# The table of golden checks (configurations, norms, the forward tolerance) is shared
# with `python -m spherenet_tf.selfcheck`: spherenet_tf/fixtures.py.
FWD_TOL = FORWARD_TOL
GRAD_TOL = 1e-4
CONFIGS = LAYER_CONFIGS  # name: (kernel size, padding, stride)
NORMS = list(LAYER_NORMS)


def _run_layer(layer, x, kernel, r, k_value=None):
    """Output, L = sum(out * R) and the gradients of L, like the fixture."""
    x = tf.constant(x)
    layer.build(x.shape)
    layer.kernel.assign(kernel)
    if k_value is not None:
        layer.k_value.assign(k_value)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
        loss = tf.reduce_sum(out * r)
    sources = [x, layer.kernel] + ([layer.k_value] if k_value is not None else [])
    grads = tape.gradient(loss, sources)
    return out.numpy(), loss.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("norm", NORMS)
def test_conv_layer_matches_original(config, norm):
    g = load_npz("conv_layer.npz")
    ksize, pad, stride = CONFIGS[config]
    layer = SphereConv2D(4, ksize, strides=stride, padding=pad, norm=norm)
    k_value = g[f"{config}/k_value_lr"] if norm == "lr_sigmoid" else None
    out, loss, grads = _run_layer(layer, g["x"], g[f"{config}/filter"], g[f"{config}/R"], k_value)
    key = f"{config}/{norm}"
    check("conv_layer.npz", f"{key}/out", out, g[f"{key}/out"], FWD_TOL)
    check("conv_layer.npz", f"{key}/L", loss, g[f"{key}/L"], FWD_TOL)
    check("conv_layer.npz", f"{key}/grad_x", grads[0], g[f"{key}/grad_x"], GRAD_TOL)
    check("conv_layer.npz", f"{key}/grad_filter", grads[1], g[f"{key}/grad_filter"], GRAD_TOL)
    if norm == "lr_sigmoid":
        check("conv_layer.npz", f"{key}/grad_k_value_lr", grads[2], g[f"{key}/grad_k_value_lr"], GRAD_TOL)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_internal_norms_match_original(config):
    """The patch norm (fast box-sum form) and the filter norm equal the original's tensors."""
    g = load_npz("conv_layer.npz")
    ksize, pad, stride = CONFIGS[config]
    x = tf.constant(g["x"])
    xnorm = sphere_ops.patch_norm(x, (ksize, ksize), (stride, stride), pad)
    wnorm = portable_ops.filter_norm(tf.constant(g[f"{config}/filter"]))
    for norm in NORMS:
        check("conv_layer.npz", f"{config}/{norm}/xnorm", xnorm, g[f"{config}/{norm}/xnorm"], FWD_TOL)
        check("conv_layer.npz", f"{config}/{norm}/wnorm", wnorm, g[f"{config}/{norm}/wnorm"], FWD_TOL)


@pytest.mark.parametrize("w_norm", SCORE_W_NORMS)
@pytest.mark.parametrize("size", SCORE_SIZES)
def test_weight_normalised_score_matches_original(w_norm, size):
    """w_norm 'none' and 'cosine' are finite in the original: values must match."""
    g = load_npz("wnorm_score.npz")
    layer = SphereConv2D(10, 1, padding="VALID", norm="none", w_norm=w_norm)
    out, loss, grads = _run_layer(layer, g[f"x_{size}"], g["wnorm_score/filter"], g["R"])
    key = f"{w_norm}/{size}"
    check("wnorm_score.npz", f"{key}/out", out, g[f"{key}/out"], FWD_TOL)
    check("wnorm_score.npz", f"{key}/L", loss, g[f"{key}/L"], FWD_TOL)
    check("wnorm_score.npz", f"{key}/grad_x", grads[0], g[f"{key}/grad_x"], GRAD_TOL)
    check("wnorm_score.npz", f"{key}/grad_filter", grads[1], g[f"{key}/grad_filter"], GRAD_TOL)
    wnorm = portable_ops.filter_norm(tf.constant(g["wnorm_score/filter"]))
    check("wnorm_score.npz", f"{key}/wnorm", wnorm, g[f"{key}/wnorm"], FWD_TOL)


@pytest.mark.parametrize("w_norm", ["linear", "sigmoid"])
def test_generalised_weight_normalised_score(w_norm):
    """w_norm 'linear'/'sigmoid' give |x| g(theta) (a documented difference).

    The original applied acos to |x| cos(theta) and returned NaN on the large inputs
    (stored in the fixture); the port must be finite there and equal an independent
    NumPy evaluation of |x| g(theta) on both input sizes.
    """
    g = load_npz("wnorm_score.npz")
    assert np.isnan(g[f"{w_norm}/large/out"]).any(), "fixture should hold the original's NaNs"
    w = g["wnorm_score/filter"].astype(np.float64)
    for size in ["small", "large"]:
        x = g[f"x_{size}"]
        layer = SphereConv2D(10, 1, padding="VALID", norm="none", w_norm=w_norm)
        out, _, grads = _run_layer(layer, x, g["wnorm_score/filter"], g["R"])
        assert np.isfinite(out).all() and all(np.isfinite(gr).all() for gr in grads)
        x64 = x.astype(np.float64)
        xnorm = np.sqrt(np.sum(x64**2, axis=-1, keepdims=True) + 1e-4)
        wn = np.sqrt(np.sum(w**2, axis=(0, 1, 2)) + 1e-4)
        cos = np.einsum("bhwc,cf->bhwf", x64, w[0, 0]) / xnorm / wn
        theta = np.arccos(cos)
        if w_norm == "linear":
            gfun = 1 - 0.63662 * theta
        else:
            k = 0.3
            c = (1 + np.exp(-np.pi / (2 * k))) / (1 - np.exp(-np.pi / (2 * k)))
            e = np.exp(theta / k - np.pi / (2 * k))
            gfun = c * (1 - e) / (1 + e)
        check("wnorm_score.npz", f"{w_norm}/{size}/out (port: |x|g(theta), NumPy)", out, xnorm * gfun, FWD_TOL)


@pytest.mark.parametrize("tag", ["normal", "saturated"])
def test_loss2_matches_original(tag):
    g = load_npz("losses.npz")
    logits = tf.constant(g[f"loss2/{tag}/logits"])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = loss2(logits, g["loss2/labels"], 10)
    grad = tape.gradient(value, logits)
    check("losses.npz", f"loss2/{tag}/value", value, g[f"loss2/{tag}/value"], FWD_TOL)
    check("losses.npz", f"loss2/{tag}/grad_logits", grad, g[f"loss2/{tag}/grad_logits"], GRAD_TOL)


@pytest.mark.parametrize("i", [0, 1])
def test_orthogonality_loss_matches_original(i):
    g = load_npz("losses.npz")
    w = tf.Variable(g[f"orth{i}/filter"])
    with tf.GradientTape() as tape:
        value = orthogonality_loss(w)
    grad = tape.gradient(value, w)
    check("losses.npz", f"orth{i}/value", value, g[f"orth{i}/value"], FWD_TOL)
    check("losses.npz", f"orth{i}/grad", grad, g[f"orth{i}/grad"], GRAD_TOL)


def test_weight_decay_matches_original():
    g = load_npz("losses.npz")
    assert float(g["l2/wd"]) == pytest.approx(WEIGHT_DECAY)
    w = tf.Variable(g["l2/tensor"])
    with tf.GradientTape() as tape:
        value = L2Loss(WEIGHT_DECAY)(w)
    grad = tape.gradient(value, w)
    check("losses.npz", "l2/value", value, g["l2/value"], FWD_TOL)
    check("losses.npz", "l2/grad", grad, g["l2/grad"], GRAD_TOL)
