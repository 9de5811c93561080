"""The SphereConv norms and their numerical guards in `keras.ops`, for every Keras 3 backend.

The patch norm |x| and the filter norm |W| of "Deep Hyperspherical Learning" (Liu et al.,
NIPS 2017, arXiv:1711.03189, section 2; `_get_input_norm` / `_get_filter_norm` of the
original `spherenet.py`), the guards that keep them finite from 1e-20 to 1e20 (the 2**-32
scaling of the squares, the per-filter power-of-two kernel scale; docs/differences.md),
and the decoupled operators' magnitudes.  The angular functions and how they combine are
in `formulas`.  The patch norm is computed as a channel sum of squares and a k x k box sum,
the fast path's order (`sphere_ops.patch_norm`), rather than the original's ones-kernel
convolution of x^2 (`sphere_ops.patch_norm_original`): the same sums, C_in times fewer
multiply-adds.  Gradients are autodiff.
"""

import numpy as np
from keras import ops

from .formulas import NORM_EPS

# The norms square their inputs after scaling them by 2**-32, so that squares of values up
# to ~7.7e28 (instead of ~1.8e19) stay finite.  Scaling by a power of two is exact, so the
# result has the same bits as the unscaled formula: the only squares that leave the normal
# range are those of |x| < 4.7e-10, far below half an ulp of the 1e-4 added to every sum.
NORM_SCALE = 2.0**-32
FLT_MIN = float(np.finfo(np.float32).tiny)

#: Decoupled operators (beyond the original repository): Liu, Liu, Yu, Dai, Lin, Wang, Rehg,
#: Song, "Decoupled Networks", CVPR 2018 (arXiv:1804.08071), code wy1iu/DCNets.  A
#: convolution output written as h(|x|) g(theta); SphereConv is h = 1.  Magnitude functions
#: h(|x|), by name ('none' is SphereConv):
MAGNITUDES = ("none", "ball", "tanh", "linear", "seg", "log")
#: The magnitudes whose shape depends on a radius rho.
MAGNITUDES_WITH_RHO = ("ball", "tanh", "seg")
#: How rho is obtained (a positive number gives a fixed rho): 'batch_mean' = (r^2 + 1e-4)
#: E[|x|], DCNets' CIFAR and ImageNet default; 'learned' = r^2 + 1e-4, DCNets' ImageNet
#: code with `xnorm_bn=False`.
RHO_MODES = ("batch_mean", "learned")
#: DCNets' `radius` variable: one per filter, initialised to 1, used as r^2 + 1e-4.
RHO_RADIUS_INIT = 1.0
RHO_RADIUS_EPS = 1e-4
#: Slopes of SegConv below and above rho in DCNets' `seg_cos` code (h = |x| below rho,
#: 0.5 |x| + 0.5 rho above: continuous at rho).
SEG_SLOPE_BELOW = 1.0
SEG_SLOPE_ABOVE = 0.5

# 2**e for e = -126 .. 127, every one exact in float32: `kernel_scale` looks its power
# of two up here (pow(2, e) is not exact on every backend).
_POWERS_OF_TWO = np.ldexp(np.float32(1.0), np.arange(-126, 128)).astype(np.float32)


def patch_norm(x, kernel_size, strides=(1, 1), padding="same", dilation_rate=(1, 1)):
    """Norm of every k x k x C_in input patch, [B, Ho, Wo, 1]: the original's
    sqrt(conv2d(x*x, ones) + 1e-4), as a channel sum of squares and a k x k box sum,
    with the convolution's stride and padding."""
    x = ops.cast(x, "float32")
    sumsq = ops.sum(ops.square(x * NORM_SCALE), axis=-1, keepdims=True)
    ones = ops.ones(tuple(kernel_size) + (1, 1), "float32")
    box = ops.conv(sumsq, ones, strides=tuple(strides), padding=padding.lower(),
                   dilation_rate=tuple(dilation_rate))
    return ops.sqrt(box + NORM_EPS * NORM_SCALE * NORM_SCALE) / NORM_SCALE


def vector_norm(x, axis, keepdims=False):
    """sqrt(sum(x^2 over `axis`) + 1e-4), float32, the squares scaled by 2**-32."""
    scaled = ops.cast(x, "float32") * NORM_SCALE
    sumsq = ops.sum(ops.square(scaled), axis=axis, keepdims=keepdims)
    return ops.sqrt(sumsq + NORM_EPS * NORM_SCALE * NORM_SCALE) / NORM_SCALE


def filter_norm(kernel):
    """Norm of every filter, [1, 1, 1, C_out]: sqrt(sum(W*W over k, k, C_in) + 1e-4)."""
    return vector_norm(kernel, axis=(0, 1, 2), keepdims=True)


def kernel_scale(kernel):
    """Per filter, a power of two s such that max|filter / s| lies in (1/2, 1] (s = 1 for
    an all-zero filter): [1, 1, 1, C_out], the kernel's dtype, no gradient.

    A SphereConv with a `w_norm` convolves with kernel / s and divides by the norms of the
    rescaled filters (`scaled_filter_norm`): the cosine is the same to the last bit
    (dividing a filter and its norm by a power of two changes no rounding), while x.W
    cannot overflow (inputs and filters both near 1e20 gave Inf / Inf = NaN), tiny
    filters do not underflow, and the gradients in the rescaled units stay in range.
    """
    w = ops.cast(kernel, "float32")
    maxabs = ops.stop_gradient(ops.max(ops.abs(w), axis=(0, 1, 2), keepdims=True))
    safe = ops.where(maxabs > 0, maxabs, 1.0)
    exponent = ops.clip(ops.ceil(ops.log2(safe)), -126.0, 127.0)
    scale = ops.take(ops.convert_to_tensor(_POWERS_OF_TWO), ops.cast(exponent, "int32") + 126)
    return ops.cast(ops.stop_gradient(scale), kernel.dtype)


def scaled_filter_norm(scaled_kernel, scale):
    """filter_norm(scaled_kernel * scale) / scale, computed from the rescaled kernel.

    Filters with entries below 1 (scale < 1): sqrt(sum W^2 + 1e-4) / scale, the original's
    formula (the 1e-4 in rescaled units, 1e-4 / scale^2, would overflow for filters below
    ~1e-17).  Larger filters: sqrt(sum + 1e-4 / scale^2), whose 1e-4 term is kept at least
    the smallest normal float (above ~1e19 it is far below half an ulp of any nonzero
    filter's sum, and keeps a zero filter's norm nonzero).  Each branch sees only scales it
    can take, so no gradient is NaN.
    """
    w = ops.cast(scaled_kernel, "float32")
    sumsq = ops.sum(ops.square(w), axis=(0, 1, 2), keepdims=True)
    small = scale < 1.0
    s_small = ops.where(small, scale, 1.0)
    s_large = ops.where(small, 1.0, scale)
    norm_small = ops.sqrt(sumsq * s_small * s_small + NORM_EPS) / s_small
    norm_large = ops.sqrt(sumsq + ops.maximum(NORM_EPS / s_large / s_large, FLT_MIN))
    return ops.where(small, norm_small, norm_large)


def radius_to_rho_scale(radius):
    """DCNets' rho factor r^2 + 1e-4."""
    return ops.square(radius) + RHO_RADIUS_EPS


def magnitude_function(xnorm, magnitude, rho=None):
    """h(|x|) of a decoupled operator for patch norms `xnorm` ([B, Ho, Wo, 1]).

    - 'none':   1 (SphereConv)
    - 'ball':   min(|x| / rho, 1)            (BallConv, as DCNets' conv / (rho + relu(|x| - rho)))
    - 'tanh':   tanh(|x| / rho)              (TanhConv)
    - 'linear': |x|                          (LinearConv)
    - 'seg':    |x| if |x| < rho, else 0.5 |x| + 0.5 rho   (SegConv)
    - 'log':    log(1 + |x|)                 (LogConv)
    `rho` broadcasts against `xnorm` (e.g. one per filter, [C_out]).
    """
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
