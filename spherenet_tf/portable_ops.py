"""The SphereConv arithmetic in `keras.ops`: one formulation for every Keras 3 backend.

Ports the same formulas as `sphere_ops` ("Deep Hyperspherical Learning", Liu et al.,
NIPS 2017, arXiv:1711.03189, section 2; `_conv_layer` of the original `spherenet.py`),
written with `keras.ops` only, so that `SphereConv2D`, `SphereNorm2D` and
`GASoftmaxScore` run under `KERAS_BACKEND=tensorflow`, `jax` and `torch`.

On TensorFlow the layers keep `sphere_ops` (hand-differentiated, fused TF ops: the
default and the fastest there); on JAX and PyTorch they use this module, whose
gradients come from autodiff except where the original's would be infinite
(`safe_acos`, a `keras.ops.custom_gradient`).  Every numerical safeguard of
`sphere_ops` is kept: the 2**-32 scaling of the norms, the per-filter power-of-two
kernel scale and the bounded acos gradient (docs/differences.md).  The order of the
arithmetic is that of the fast path (box-sum patch norm, unit-norm filters), so the
values agree with the original's to float32 rounding on every backend.
"""

import math

import numpy as np
from keras import ops

from .sphere_ops import (
    _ACOS_GRAD_MIN,
    _FLT_MIN,
    _NORM_SCALE,
    LINEAR_SLOPE,
    MAGNITUDES,
    MAGNITUDES_WITH_RHO,
    NORM_EPS,
    NORMS,
    RHO_RADIUS_EPS,
    SEG_SLOPE_ABOVE,
    SEG_SLOPE_BELOW,
    SIGMOID_K,
    W_NORMS,
)

# 2**e for e = -126 .. 127, every one exact in float32: `kernel_scale` looks its power
# of two up here (pow(2, e) is not exact on every backend).
_POWERS_OF_TWO = np.ldexp(np.float32(1.0), np.arange(-126, 128)).astype(np.float32)


def patch_norm(x, kernel_size, strides=(1, 1), padding="same", dilation_rate=(1, 1)):
    """Norm of every k x k x C_in input patch, [B, Ho, Wo, 1]: the original's
    sqrt(conv2d(x*x, ones) + 1e-4), as a channel sum of squares and a k x k box sum
    (the order of `sphere_ops.patch_norm`), with the convolution's stride and padding."""
    x = ops.cast(x, "float32")
    sumsq = ops.sum(ops.square(x * _NORM_SCALE), axis=-1, keepdims=True)
    ones = ops.ones(tuple(kernel_size) + (1, 1), "float32")
    box = ops.conv(sumsq, ones, strides=tuple(strides), padding=padding.lower(),
                   dilation_rate=tuple(dilation_rate))
    return ops.sqrt(box + NORM_EPS * _NORM_SCALE * _NORM_SCALE) / _NORM_SCALE


def filter_norm(kernel):
    """Norm of every filter, [1, 1, 1, C_out]: sqrt(sum(W*W over k, k, C_in) + 1e-4)."""
    scaled = ops.cast(kernel, "float32") * _NORM_SCALE
    sumsq = ops.sum(ops.square(scaled), axis=(0, 1, 2), keepdims=True)
    return ops.sqrt(sumsq + NORM_EPS * _NORM_SCALE * _NORM_SCALE) / _NORM_SCALE


def kernel_scale(kernel):
    """Per filter a power of two s with max|filter / s| in (1/2, 1] (1 for a zero
    filter), [1, 1, 1, C_out], no gradient: see `sphere_ops.kernel_scale`."""
    w = ops.cast(kernel, "float32")
    maxabs = ops.stop_gradient(ops.max(ops.abs(w), axis=(0, 1, 2), keepdims=True))
    safe = ops.where(maxabs > 0, maxabs, 1.0)
    exponent = ops.clip(ops.ceil(ops.log2(safe)), -126.0, 127.0)
    scale = ops.take(ops.convert_to_tensor(_POWERS_OF_TWO), ops.cast(exponent, "int32") + 126)
    return ops.cast(ops.stop_gradient(scale), kernel.dtype)


def scaled_filter_norm(scaled_kernel, scale):
    """filter_norm(scaled_kernel * scale) / scale from the rescaled kernel, with the two
    branches of `sphere_ops.scaled_filter_norm` (no overflow, no NaN gradient)."""
    w = ops.cast(scaled_kernel, "float32")
    sumsq = ops.sum(ops.square(w), axis=(0, 1, 2), keepdims=True)
    small = scale < 1.0
    s_small = ops.where(small, scale, 1.0)
    s_large = ops.where(small, 1.0, scale)
    norm_small = ops.sqrt(sumsq * s_small * s_small + NORM_EPS) / s_small
    norm_large = ops.sqrt(sumsq + ops.maximum(NORM_EPS / s_large / s_large, _FLT_MIN))
    return ops.where(small, norm_small, norm_large)


@ops.custom_gradient
def safe_acos(c):
    """acos(clip(c, -1, 1)) with the bounded gradient of `sphere_ops.safe_acos`:
    -1/sqrt(max(1 - c^2, 2**-23)) inside [-1, 1], 0 outside."""
    y = ops.arccos(ops.clip(c, -1.0, 1.0))

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        one_minus_c2 = ops.maximum(1.0 - ops.square(c), _ACOS_GRAD_MIN)
        g = -upstream / ops.sqrt(one_minus_c2)
        return ops.where(ops.abs(c) > 1.0, ops.zeros_like(g), g)

    return y, grad


def sigmoid_constant(k):
    """C(k) = (1 + e^{-pi/2k}) / (1 - e^{-pi/2k}); float64 for a number, ops for a tensor."""
    if isinstance(k, (int, float)):
        e = math.exp(-math.pi / (2 * k))
        return (1 + e) / (1 - e)
    e = ops.exp(-np.pi / (2 * k))
    return (1 + e) / (1 - e)


def angular_function(cos, norm, k=None):
    """g(theta) for cos = cos(theta), as `sphere_ops.angular_function`."""
    if norm == "cosine":
        return cos
    theta = safe_acos(cos)
    if norm == "linear":
        return -LINEAR_SLOPE * theta + 1.0
    if norm == "sigmoid":
        k = SIGMOID_K
    elif norm != "lr_sigmoid":
        raise ValueError(f"angular_function: unknown norm {norm!r}; allowed: {NORMS[1:]}")
    c = sigmoid_constant(k)
    e = ops.exp(theta / k - np.pi / (2 * k))
    return c * (1.0 - e) / (1.0 + e)


def sphere_response(conv, xnorm, wnorm, norm="cosine", w_norm="none", k=None, w_scale=None):
    """The SphereConv output from conv2d(x, W) ([B, Ho, Wo, C_out], float32), the patch
    norms and the filter norms: `sphere_ops.sphere_response` in keras.ops (autodiff)."""
    if w_norm == "cosine":
        conv = conv / wnorm
    elif w_norm in ("linear", "sigmoid"):
        conv = xnorm * angular_function(conv / xnorm / wnorm, w_norm)
    elif w_norm != "none":
        raise ValueError(f"sphere_response: unknown w_norm {w_norm!r}; allowed: {W_NORMS}")
    if norm == "none":
        return conv
    cos = conv / xnorm / wnorm
    if w_scale is not None and w_norm != "none":
        cos = cos / w_scale
    return angular_function(cos, norm, k)


def radius_to_rho_scale(radius):
    """DCNets' rho factor r^2 + 1e-4."""
    return ops.square(radius) + RHO_RADIUS_EPS


def magnitude_function(xnorm, magnitude, rho=None):
    """h(|x|) of a decoupled operator, as `sphere_ops.magnitude_function`."""
    if magnitude == "none":
        return ops.ones_like(xnorm)
    if magnitude == "linear":
        return xnorm
    if magnitude == "log":
        return ops.log1p(xnorm)
    if magnitude not in MAGNITUDES_WITH_RHO:
        raise ValueError(f"magnitude_function: unknown magnitude {magnitude!r}; allowed: {MAGNITUDES}")
    if rho is None:
        raise ValueError(f"magnitude_function: magnitude {magnitude!r} needs rho")
    if magnitude == "ball":
        return xnorm / ops.maximum(xnorm, rho)
    if magnitude == "tanh":
        return ops.tanh(xnorm / rho)
    return ops.where(xnorm < rho, SEG_SLOPE_BELOW * xnorm,
                     SEG_SLOPE_ABOVE * xnorm + (SEG_SLOPE_BELOW - SEG_SLOPE_ABOVE) * rho)
