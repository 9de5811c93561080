"""The SphereConv arithmetic, stated once: its constants and its formulas.

"Deep Hyperspherical Learning", W. Liu, Y.-M. Zhang, X. Li, Z. Yu, B. Dai, T. Zhao,
L. Song, NIPS 2017 (arXiv:1711.03189), section 2: a SphereConv replaces the inner
product w.x = |w||x| cos(theta) of a convolution by g(theta), a function of the angle
between the patch x and the filter w alone.  Ported from `_conv_layer` of the original
`spherenet.py` / `sphere_resnet/sphere_resnet_v1.py` (wy1iu/SphereNet):

    cos(theta) = conv(x, W) / |x| / |W|,   |x| = sqrt(sum over the patch x^2 + 1e-4),
                                            |W| = sqrt(sum over the filter W^2 + 1e-4)
    linear      g = 1 - 0.63662 theta                      (0.63662 ~ 2/pi: the original's literal)
    cosine      g = cos(theta)
    sigmoid     g = C(k) (1 - e) / (1 + e),  e = exp(theta/k - pi/2k),  k = 0.3,
                C(k) = (1 + exp(-pi/2k)) / (1 - exp(-pi/2k))   (g = 1, 0, -1 at 0, pi/2, pi)
    lr_sigmoid  the sigmoid with one learnable k per filter, used as |k| + 0.05 (init 0.7)
    w_norm      the weight-normalised scores of the classifier layer: 'cosine' conv / |W|
                = |x| cos(theta) (the original's), 'linear' / 'sigmoid' |x| g(theta) (the
                paper's generalised angular softmax logit; the original computed NaN there)

Written with `keras.ops`, this module is the formulation every Keras backend runs
(`SphereConv2D` on JAX and PyTorch, and with `formulation="portable"` on TensorFlow) and
the reference of the TensorFlow fast path (`sphere_ops`, whose hand-differentiated
kernels are the only other statement of these formulas and are tested against this
module in tests/test_kernels.py).  The norms and their numerical guards are in
`portable_ops`.  The paper numbers none of these formulas' variants; the names are the
original code's `norm` / `w_norm` values.
"""

import math

import numpy as np
from keras import ops

# ---------------------------------------------------------------------------
# The original's constants
# ---------------------------------------------------------------------------
#: Added under both square roots (patch norm and filter norm).  It keeps the cosine
#: strictly inside (-1, 1) and all-zero patches finite.
NORM_EPS = 1e-4
#: Slope of the linear SphereConv.  Deliberately the original's literal, not 2/pi: the
#: original gives -3.6e-7 at cos = 0 and -1.0000007 at cos = -1.
LINEAR_SLOPE = 0.63662
#: g of the linear SphereConv at theta = pi/2, 1 - 0.63662 pi/2 = -3.6e-7 (float64).
LINEAR_AT_RIGHT_ANGLE = 1.0 - LINEAR_SLOPE * math.pi / 2
#: Fixed k of the sigmoid SphereConv (and of the sigmoid `w_norm`).
SIGMOID_K = 0.3
#: Initial value of the learnable k of `lr_sigmoid`; the layer uses |k| + LR_SIGMOID_K_OFFSET.
LR_SIGMOID_K_INIT = 0.7
LR_SIGMOID_K_OFFSET = 0.05
#: Smallest 1 - cos^2 in the gradient of acos / asin.  float32 cannot hold a nonzero
#: 1 - c^2 smaller than this (c = 1 - 2**-24 gives exactly 2**-23), so the bound only acts
#: at |c| = 1 exactly, where the exact gradient is infinite (it is then about 2.9e3).
ACOS_GRAD_MIN = float(np.finfo(np.float32).eps)

#: The angular functions, by their original names.
NORMS = ("none", "linear", "cosine", "sigmoid", "lr_sigmoid")
#: Weight-normalised score functions (the original `w_norm` argument).
W_NORMS = ("none", "linear", "cosine", "sigmoid")


def effective_k(k_value):
    """The k an `lr_sigmoid` SphereConv uses: |k_value| + 0.05, float32, one per filter."""
    return ops.abs(ops.cast(k_value, "float32")) + LR_SIGMOID_K_OFFSET


def sigmoid_constant(k):
    """C(k) = (1 + e^{-pi/2k}) / (1 - e^{-pi/2k}).  For a Python number in float64 (as the
    original does with NumPy); for a tensor with ops (as the original's `lr_sigmoid`), so
    that a learnable k also gets gradient through C."""
    if isinstance(k, (int, float)):
        e = math.exp(-math.pi / (2 * k))
        return (1 + e) / (1 - e)
    e = ops.exp(-np.pi / (2 * k))
    return (1 + e) / (1 - e)


def _inverse_sine_slope(c, upstream):
    """upstream / sqrt(max(1 - c^2, 2**-23)) inside [-1, 1], 0 outside (where the clipped
    forward is constant: chaining two 2.9e3 factors there overflowed float16 gradients)."""
    g = upstream / ops.sqrt(ops.maximum(1.0 - ops.square(c), ACOS_GRAD_MIN))
    return ops.where(ops.abs(c) > 1.0, ops.zeros_like(g), g)


@ops.custom_gradient
def safe_acos(c):
    """acos(clip(c, -1, 1)), with the gradient -1/sqrt(max(1 - c^2, 2**-23)): equal to the
    exact one wherever that is finite, about -2.9e3 at |c| = 1, 0 beyond."""
    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        return -_inverse_sine_slope(c, upstream)

    return ops.arccos(ops.clip(c, -1.0, 1.0)), grad


@ops.custom_gradient
def safe_asin(c):
    """asin(clip(c, -1, 1)) = pi/2 - theta, with the bounded gradient of `safe_acos`
    (opposite sign).  Unlike pi/2 - acos(c), it keeps every bit of a cosine near 0 (a
    filter nearly orthogonal to its patch, or a tiny one)."""
    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        return _inverse_sine_slope(c, upstream)

    return ops.arcsin(ops.clip(c, -1.0, 1.0)), grad


def g_of_theta(theta, norm, k=None):
    """g(theta) in the original's expressions ('linear', 'cosine', 'sigmoid', 'lr_sigmoid'
    with k = |k| + 0.05 given).  GA-softmax's margin functions take it at m theta."""
    if norm == "cosine":
        return ops.cos(theta)
    if norm == "linear":
        return -LINEAR_SLOPE * theta + 1.0
    k = SIGMOID_K if norm == "sigmoid" else k
    e = ops.exp(theta / k - np.pi / (2 * k))
    return sigmoid_constant(k) * (1.0 - e) / (1.0 + e)


def angular_function(cos, norm, k=None, original=False, asin=None):
    """g(theta) for cos = cos(theta); `norm` one of NORMS but 'none'.

    With `original=True` in the original's order: theta = acos(c), then `g_of_theta`.
    Otherwise from phi = asin(c) = pi/2 - theta, the same values to float32 rounding:
    linear (1 - 0.63662 pi/2) + 0.63662 phi; sigmoids C(k) tanh(phi / 2k) (e = exp(-phi/k)
    turns C (1 - e) / (1 + e) into a tanh), two transcendental passes instead of three,
    and exact near cos = 0, where pi/2 - acos(c) keeps c only to 1e-7.  `asin` replaces
    `safe_asin` (an inference graph for a runtime without asin passes its own).
    """
    if norm not in NORMS[1:]:
        raise ValueError(f"angular_function: unknown norm {norm!r}; allowed: {NORMS[1:]}")
    if norm == "cosine":
        return cos
    if original:
        return g_of_theta(safe_acos(cos), norm, k)
    phi = (asin or safe_asin)(cos)
    if norm == "linear":
        return LINEAR_AT_RIGHT_ANGLE + LINEAR_SLOPE * phi
    k = SIGMOID_K if norm == "sigmoid" else k
    return sigmoid_constant(k) * ops.tanh(phi * (0.5 / k))


def sphere_response(conv, xnorm, wnorm, norm="cosine", w_norm="none", k=None, w_scale=None,
                    original=False):
    """The SphereConv output from a convolution and the norms (float32, autodiff).

    Args:
      conv: conv2d(x, W) [B, Ho, Wo, C_out] (of the filters W / w_scale when given).
      xnorm: the patch norms |x| [B, Ho, Wo, 1].
      wnorm: the filter norms |W| [1, 1, 1, C_out] (of W / w_scale when given).
      norm, w_norm: as NORMS, W_NORMS; `w_norm` first, as in the original.
      k: the effective k of 'lr_sigmoid' (`effective_k`), else None.
      w_scale: the per-filter power of two the filters were divided by
        (`portable_ops.kernel_scale`), or None.  Every response is the same for W and
        W / w_scale except a `norm` applied after a `w_norm`, which this corrects.
      original: the original's order of arithmetic (`conv / |x| / |W|`, acos then exp).

    A `norm` after a `w_norm` (no example of the original does this) takes the cosine
    score / (|x| |W|) = g_w(theta) / |W|; in the original's order score / |x| / |W|, which
    leaves the rounding of |x| g in gradients that are themselves tiny for filters near 0.
    """
    if w_norm not in W_NORMS:
        raise ValueError(f"sphere_response: unknown w_norm {w_norm!r}; allowed: {W_NORMS}")
    if w_norm == "none":
        if norm == "none":
            return conv
        return angular_function(conv / xnorm / wnorm, norm, k, original)
    cos = conv / xnorm / wnorm
    if w_norm == "cosine":
        score, angular = conv / wnorm, cos
    else:
        angular = angular_function(cos, w_norm, original=original)
        score = xnorm * angular
    if norm == "none":
        return score
    filter_norm = wnorm if w_scale is None else wnorm * w_scale  # the filter's own norm
    if original:
        return angular_function(score / xnorm / filter_norm, norm, k, original)
    return angular_function(angular / filter_norm, norm, k)
