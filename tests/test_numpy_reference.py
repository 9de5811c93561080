"""SphereConv2D against an independent NumPy implementation, over random shapes,
kernel sizes, strides, paddings and dilations, for every norm and w_norm."""

import numpy as np
import pytest
import tensorflow as tf

from support import numpy_reference as ref
from spherenet_tf import SphereConv2D
from spherenet_tf.losses import loss2
from spherenet_tf.regularizers import orthogonality_loss

NORMS = ["none", "linear", "cosine", "sigmoid", "lr_sigmoid"]
W_NORMS = ["none", "linear", "cosine", "sigmoid"]


def _random_case(seed):
    rng = np.random.RandomState(seed)
    k = int(rng.choice([1, 2, 3, 4, 5]))
    stride = int(rng.choice([1, 2, 3]))
    dilation = 1 if stride > 1 else int(rng.choice([1, 2]))
    padding = str(rng.choice(["same", "valid"]))
    k_eff = (k - 1) * dilation + 1
    h = int(rng.randint(k_eff, k_eff + 7))
    w = int(rng.randint(k_eff, k_eff + 7))
    c_in, c_out = int(rng.randint(1, 7)), int(rng.randint(1, 7))
    x = rng.standard_normal((2, h, w, c_in)).astype(np.float32)
    x[0, : h // 2, : w // 2] = 0.0  # an all-zero region, as the fixtures have
    kernel = (rng.standard_normal((k, k, c_in, c_out)) * 0.5).astype(np.float32)
    k_value = (0.7 + 0.3 * rng.standard_normal(c_out)).astype(np.float32)
    return dict(k=k, stride=stride, dilation=dilation, padding=padding, x=x, kernel=kernel,
                k_value=k_value)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("norm", NORMS)
def test_layer_matches_numpy(seed, norm):
    case = _random_case(seed)
    layer = SphereConv2D(case["kernel"].shape[-1], case["k"], strides=case["stride"],
                         padding=case["padding"], dilation_rate=case["dilation"], norm=norm)
    layer.build(case["x"].shape)
    layer.kernel.assign(case["kernel"])
    if norm == "lr_sigmoid":
        layer.k_value.assign(case["k_value"])
    out = layer(case["x"]).numpy()
    expected = ref.sphere_conv(case["x"], case["kernel"], case["stride"], case["padding"], norm,
                               k_value=case["k_value"] if norm == "lr_sigmoid" else None,
                               dilation=case["dilation"])
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("w_norm", W_NORMS)
@pytest.mark.parametrize("norm", ["none", "cosine", "linear"])
def test_w_norm_matches_numpy(seed, w_norm, norm):
    case = _random_case(100 + seed)
    layer = SphereConv2D(case["kernel"].shape[-1], case["k"], strides=case["stride"],
                         padding=case["padding"], dilation_rate=case["dilation"], norm=norm,
                         w_norm=w_norm)
    layer.build(case["x"].shape)
    layer.kernel.assign(case["kernel"])
    out = layer(case["x"]).numpy()
    expected = ref.sphere_conv(case["x"], case["kernel"], case["stride"], case["padding"], norm,
                               w_norm, dilation=case["dilation"])
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norm", ["linear", "cosine", "sigmoid", "lr_sigmoid"])
def test_gradients_match_numpy_finite_differences(seed, norm):
    """d sum(out * R) / d x and / d kernel against central differences of the NumPy model."""
    case = _random_case(200 + seed)
    x, kernel = case["x"].astype(np.float64), case["kernel"].astype(np.float64)
    layer = SphereConv2D(kernel.shape[-1], case["k"], strides=case["stride"],
                         padding=case["padding"], dilation_rate=case["dilation"], norm=norm)
    layer.build(x.shape)
    layer.kernel.assign(kernel.astype(np.float32))
    kv = case["k_value"] if norm == "lr_sigmoid" else None
    if kv is not None:
        layer.k_value.assign(kv)
    xt = tf.constant(x.astype(np.float32))
    out_shape = layer.compute_output_shape(x.shape)
    r = np.random.RandomState(seed).standard_normal(out_shape)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt) * r.astype(np.float32))
    gx, gw = [g.numpy() for g in tape.gradient(loss, [xt, layer.kernel])]

    def f(xx, ww):
        return np.sum(ref.sphere_conv(xx, ww, case["stride"], case["padding"], norm, k_value=kv,
                                      dilation=case["dilation"]) * r)

    rng = np.random.RandomState(seed)
    for grad, arr, which in [(gx, x, 0), (gw, kernel, 1)]:
        scale = np.abs(grad).max()
        for _ in range(8):
            idx = tuple(rng.randint(s) for s in arr.shape)
            h = 1e-5
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += h
            minus[idx] -= h
            args_p = (plus, kernel) if which == 0 else (x, plus)
            args_m = (minus, kernel) if which == 0 else (x, minus)
            numeric = (f(*args_p) - f(*args_m)) / (2 * h)
            assert abs(grad[idx] - numeric) <= 1e-3 * scale + 1e-4, (which, idx, grad[idx], numeric)


def test_loss2_and_orth_match_numpy():
    rng = np.random.RandomState(0)
    logits = (rng.standard_normal((16, 10)) * 5).astype(np.float32)
    labels = rng.randint(0, 10, 16)
    assert float(loss2(logits, labels)) == pytest.approx(ref.loss2(logits, labels, 10), rel=1e-5)
    w = (rng.standard_normal((3, 3, 7, 12)) * 0.3).astype(np.float32)
    assert float(orthogonality_loss(w)) == pytest.approx(ref.orth_loss(w), rel=1e-5)
