"""The arithmetic of SphereConv: norms, angles and the angular functions.

Ports `_get_input_norm`, `_get_filter_norm` and the `norm` / `w_norm` branches of
`_conv_layer` in the original `spherenet.py` / `sphere_resnet/sphere_resnet_v1.py`
(wy1iu/SphereNet), from "Deep Hyperspherical Learning", Liu et al., NIPS 2017
(arXiv:1711.03189), section 2.

Everything here is plain TensorFlow on NHWC tensors; `layers.SphereConv2D` wires it
into a Keras layer.  Where this module departs from the original arithmetic it
says so, and the departure only touches inputs on which the original returned
NaN or Inf (see docs/differences.md).
"""

import functools
import math

import numpy as np
import tensorflow as tf

# ---------------------------------------------------------------------------
# The original's constants, named once.
# ---------------------------------------------------------------------------
#: Added under both square roots (patch norm and filter norm).  It keeps the
#: cosine strictly inside (-1, 1) and all-zero patches finite.
NORM_EPS = 1e-4
#: Slope of the linear SphereConv.  Deliberately the original's literal, not 2/pi:
#: the original gives -3.6e-7 at cos = 0 and -1.0000007 at cos = -1.
LINEAR_SLOPE = 0.63662
#: Fixed k of the sigmoid SphereConv (and of the sigmoid `w_norm`).
SIGMOID_K = 0.3
#: Initial value of the learnable k of `lr_sigmoid`; the layer uses |k| + K_OFFSET.
LR_SIGMOID_K_INIT = 0.7
LR_SIGMOID_K_OFFSET = 0.05

#: The angular functions of section 2.2 of the paper, by their original names.
NORMS = ("none", "linear", "cosine", "sigmoid", "lr_sigmoid")
#: Weight-normalised score functions (the original `w_norm` argument).
W_NORMS = ("none", "linear", "cosine", "sigmoid")

# Smallest value of 1 - cos^2 used in the gradient of acos.  float32 cannot hold a
# nonzero 1 - c^2 smaller than this (c = 1 - 2**-24 gives exactly 2**-23), so the
# clamp only acts at |c| = 1 exactly, where TF's own gradient is infinite.
_ACOS_GRAD_MIN = float(np.finfo(np.float32).eps)
# The norms square their inputs after scaling them by 2**-32, so that squares of values
# up to ~7.7e28 (instead of ~1.8e19) stay finite.  Scaling by a power of two is exact,
# so the result has the same bits as the unscaled formula: the only squares that leave
# the normal range are those of |x| < 4.7e-10, which are far below half an ulp of the
# 1e-4 added to every sum.
_NORM_SCALE = 2.0**-32
_FLT_MIN = float(np.finfo(np.float32).tiny)
# Pixel norms below this are squared and box-summed directly (k*k * 2**100 stays below
# float32's 2**128 for any kernel); above it, the patch norm takes the scaled form.
_DIRECT_NORM_MAX = 2.0**50
# Largest power of two `_patch_norm_input_grad` divides by: dL/dxnorm * 2**80 stays finite
# for patch norms down to the 1e-2 floor of the 1e-4 epsilon (|d| <= ~1e4 per filter).
_RADIAL_MAX_EXPONENT = 80.0


def sigmoid_constant(k):
    """The sigmoid SphereConv's normalising constant C(k) = (1+e^{-pi/2k})/(1-e^{-pi/2k}).

    With this C the sigmoid function takes the values 1, 0, -1 at angles 0, pi/2, pi.
    For a Python number it is computed in float64 (as the original does with NumPy);
    for a tensor it is computed with TF ops (as the original's `lr_sigmoid` does), so
    that a learnable k also gets gradient through C.
    """
    if isinstance(k, (int, float)):
        e = math.exp(-math.pi / (2 * k))
        return (1 + e) / (1 - e)
    e = tf.exp(-np.pi / (2 * k))
    return (1 + e) / (1 - e)


@tf.custom_gradient
def safe_acos(c):
    """acos with a finite gradient everywhere.

    Forward: acos(clip(c, -1, 1)), equal to tf.acos wherever tf.acos is finite.
    Backward: -1/sqrt(max(1 - c^2, 2**-23)), equal to TF's gradient wherever that
    is finite; at |c| = 1 (exactly parallel or anti-parallel input and filter) TF's
    is infinite and this one is about 2.9e3.  Beyond [-1, 1] (a `w_norm` applied
    before a `norm` gives "cosines" that are not bounded) the clipped forward is
    constant and the gradient is its derivative, 0: chaining two 2.9e3 factors there
    overflowed float16 input gradients.
    """
    y = tf.acos(tf.clip_by_value(c, -1.0, 1.0))

    def grad(dy):
        # Waits for dy, as TF's own acos gradient does, so that the executor does not
        # compute (and keep) the factor right after the forward pass.
        with tf.control_dependencies([dy]):
            c_ = tf.identity(c)
        one_minus_c2 = tf.maximum(1.0 - tf.square(c_), _ACOS_GRAD_MIN)
        g = -dy * tf.math.reciprocal(tf.sqrt(one_minus_c2))
        return tf.where(tf.abs(c_) > 1.0, tf.zeros_like(g), g)

    return y, grad


@tf.custom_gradient
def safe_asin(c):
    """asin with the bounded gradient of `safe_acos` (opposite sign): asin(clip(c, -1, 1))
    forward, 1/sqrt(max(1 - c^2, 2**-23)) inside [-1, 1] and 0 outside backward.

    pi/2 - theta = asin(cos theta) is what the port's angular functions are computed
    from: unlike acos, it keeps every bit of a cosine near 0 (a filter nearly
    orthogonal to its patch, or a tiny one), where pi/2 - acos(c) cancels to 1e-7.
    """
    y = tf.asin(tf.clip_by_value(c, -1.0, 1.0))

    def grad(dy):
        with tf.control_dependencies([dy]):
            c_ = tf.identity(c)
        g = dy * tf.math.reciprocal(tf.sqrt(tf.maximum(1.0 - tf.square(c_), _ACOS_GRAD_MIN)))
        return tf.where(tf.abs(c_) > 1.0, tf.zeros_like(g), g)

    return y, grad


#: How a SphereConv computes: 'fast' (the port's exact rewrites: box-sum patch norms,
#: unit-norm filters, hand-written gradients) or 'original' (the original's order of
#: arithmetic: ones-kernel patch norms, `conv / |x| / |W|`, autodiff).  Both give the
#: same values up to the last bits; 'original' lets tests replay the original's rounding
#: and benchmarks time it.
FORMULATIONS = ("fast", "original")


def patch_norm(x, kernel_size, strides=(1, 1), padding="same", dilation_rate=(1, 1),
               original=False):
    """Norm of every k x k x C_in input patch the convolution sees, shape [B, Ho, Wo, 1].

    Equals the original's `sqrt(conv2d(x*x, ones[k, k, C_in, 1]) + 1e-4)` with the
    convolution's own stride and padding (the stride-aware form of
    `sphere_resnet_v1.py`; `spherenet.py` always used stride 1, which fails for
    stride 2).  Computed as a channel-wise sum of squares followed by a k x k box sum,
    C_in times fewer multiply-adds than the ones-kernel convolution, with a
    hand-written gradient x * box_sum^T(d/xnorm) (one pass over the input).  With
    `original=True`, the original's ones-kernel convolution (`patch_norm_original`).
    """
    if original:
        return patch_norm_original(x, kernel_size, strides, padding, dilation_rate)
    fn = _patch_norm_fn(tuple(kernel_size), tuple(strides), padding.upper(), tuple(dilation_rate))
    return fn(tf.cast(x, tf.float32))


def _patch_norm_forward(x, kernel_size, strides, padding, dilations=(1, 1)):
    """(xnorm, ones kernel) of float32 x; see `patch_norm`.

    The per-pixel sum of squares over the channels is read off one Euclidean-norm
    reduction (one pass over x, instead of a scaling, a square and a sum: three);
    squaring the pixel norms back rounds the sums by at most one ulp.  That direct
    form overflows for pixel norms near 1.8e19, so when any pixel norm reaches
    `_DIRECT_NORM_MAX` the whole patch norm is computed in the 2**-32-scaled form
    instead (`tf.cond`: only that branch runs), finite up to |x| ~ 7.7e28.
    """
    ones = tf.ones(tuple(kernel_size) + (1, 1), tf.float32)

    def box_sum(t):
        return tf.nn.conv2d(t, ones, strides=list(strides), padding=padding,
                            dilations=list(dilations))

    if _compiled_by_xla():  # XLA has no EuclideanNorm; it fuses the square into the sum
        sumsq = tf.reduce_sum(tf.square(x), axis=-1, keepdims=True)
    else:
        sumsq = tf.square(tf.math.reduce_euclidean_norm(x, axis=-1, keepdims=True))

    def direct():
        return tf.sqrt(box_sum(sumsq) + NORM_EPS)

    def scaled():
        sumsq = tf.reduce_sum(tf.square(x * _NORM_SCALE), axis=-1, keepdims=True)
        return tf.sqrt(box_sum(sumsq) + NORM_EPS * _NORM_SCALE * _NORM_SCALE) / _NORM_SCALE

    xnorm = tf.cond(tf.reduce_max(sumsq) < _DIRECT_NORM_MAX * _DIRECT_NORM_MAX, direct, scaled)
    return xnorm, ones


def _compiled_by_xla():
    """Whether the graph being traced is compiled by XLA (`tf.function(jit_compile=True)`,
    which traces inside an XLA context).  TF has no public call for this; if its
    internal one moves, the answer is True, the form every compiler accepts."""
    try:
        from tensorflow.python.ops import control_flow_util

        return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
    except Exception:  # pragma: no cover - a TensorFlow without that internal function
        return True


def _patch_norm_input_grad(x, xnorm, grad_xnorm, ones, strides, padding, dilations=(1, 1)):
    """dL/dx of xnorm = sqrt(box_sum(sum_c x^2) + eps): x * box_sum^T(dL/dxnorm / xnorm).

    dL/dxnorm / xnorm falls like 1 / |x|^2, below float32's smallest number for patches
    above ~1e19 (the radial part of dx then came out exactly 0).  So it is formed as
    (dL/dxnorm * S) / xnorm and multiplied by x / S, with S a power of two near the
    batch's largest patch norm (exact scalings; 1 below 1).  The terms that underflow
    instead are those of patches some 2**60 smaller than the largest, far below the
    largest gradient's rounding.
    """
    # Everything here waits for the incoming gradient: x / s, computed as soon as the
    # forward pass allows, would keep an input-sized tensor per layer until the backward
    # pass reached it.
    with tf.control_dependencies([grad_xnorm]):
        largest = tf.reduce_max(xnorm)
    exponent = tf.clip_by_value(tf.math.floor(tf.math.log(largest) / math.log(2.0)), 0.0,
                                _RADIAL_MAX_EXPONENT)
    s = tf.bitcast((tf.cast(exponent, tf.int32) + 127) * (2**23), tf.float32)  # exactly 2**e
    pixels = tf.concat([tf.shape(x)[:-1], [1]], axis=0)
    spread = tf.nn.conv2d_transpose(grad_xnorm * s / xnorm, ones, pixels, strides=list(strides),
                                    padding=padding, dilations=list(dilations))
    # x / s first, as a division: grappler reorders a chain of multiplications to do the
    # small ones first, which would make spread / s, the very product that underflows.
    with tf.control_dependencies([spread]):
        x_scaled = tf.math.divide(x, s)
    return x_scaled * spread


@functools.lru_cache(maxsize=None)
def _patch_norm_fn(kernel_size, strides, padding, dilations):
    @tf.custom_gradient
    def norm(x):
        xnorm, ones = _patch_norm_forward(x, kernel_size, strides, padding, dilations)

        def grad(dxnorm):
            return _patch_norm_input_grad(x, xnorm, dxnorm, ones, strides, padding, dilations)

        return xnorm, grad

    return norm


def patch_norm_original(x, kernel_size, strides=(1, 1), padding="same", dilation_rate=(1, 1)):
    """The original formulation of `patch_norm`: one convolution of x*x with ones."""
    x = tf.cast(x, tf.float32)
    ones = tf.ones(tuple(kernel_size) + (x.shape[-1], 1), tf.float32)
    conv = tf.nn.conv2d(
        x * x, ones, strides=list(strides), padding=padding.upper(), dilations=list(dilation_rate)
    )
    return tf.sqrt(conv + NORM_EPS)


def kernel_scale(kernel):
    """Per filter, a power of two s such that max|filter / s| lies in (1/2, 1] (s = 1
    for an all-zero filter): shape [1, 1, 1, C_out], the kernel's dtype, no gradient.

    `SphereConv2D` convolves with kernel / s and divides by the norms of the rescaled
    filters (`scaled_filter_norm`): the cosine is the same to the last bit (dividing a
    filter and its norm by a power of two changes no rounding), while x.W cannot
    overflow (inputs and filters both near 1e20 gave Inf / Inf = NaN), tiny filters
    do not underflow, and the gradients in the rescaled units stay in range.
    """
    w = tf.cast(kernel, tf.float32)
    maxabs = tf.stop_gradient(tf.reduce_max(tf.abs(w), axis=[0, 1, 2], keepdims=True))
    exponent = tf.math.ceil(tf.math.log(maxabs) / math.log(2.0))
    exponent = tf.where(maxabs > 0, tf.clip_by_value(exponent, -126.0, 127.0), 0.0)
    bits = (tf.cast(exponent, tf.int32) + 127) * (2**23)  # exactly 2**exponent
    return tf.cast(tf.bitcast(bits, tf.float32), kernel.dtype)


def scaled_filter_norm(scaled_kernel, scale):
    """filter_norm(scaled_kernel * scale) / scale, computed from the rescaled kernel.

    With scale = `kernel_scale(kernel)` (every filter's largest entry in (1/2, 1]) the
    sum of squares can neither overflow nor underflow, and neither can its gradient
    (the 2**-32 form of `filter_norm` multiplies the incoming gradient by 2**63 / |W|
    on the way, which overflowed for large inputs and small filters).  For ordinary
    values the result has the bits of filter_norm(kernel) / scale.
    """
    w = tf.cast(scaled_kernel, tf.float32)
    sumsq = tf.reduce_sum(tf.square(w), axis=[0, 1, 2], keepdims=True)
    # Filters with entries below 1 (scale < 1): sqrt(sum W^2 + 1e-4) / scale, the
    # original's formula (the 1e-4 in rescaled units, 1e-4 / scale^2, would overflow
    # for filters below ~1e-17).  Larger filters: sqrt(sum + 1e-4 / scale^2), whose
    # 1e-4 term is kept at least the smallest normal float (above ~1e19 it is far
    # below half an ulp of any nonzero filter's sum, and keeps a zero filter's norm
    # nonzero).  Each branch sees only scales it can take, so no gradient is NaN.
    small = scale < 1.0
    s_small = tf.where(small, scale, 1.0)
    s_large = tf.where(small, 1.0, scale)
    norm_small = tf.sqrt(sumsq * s_small * s_small + NORM_EPS) / s_small
    norm_large = tf.sqrt(sumsq + tf.maximum(NORM_EPS / s_large / s_large, _FLT_MIN))
    return tf.where(small, norm_small, norm_large)


def filter_norm(kernel):
    """Norm of every filter, shape [1, 1, 1, C_out]: sqrt(sum(W*W over k, k, C_in) + 1e-4)."""
    scaled = tf.cast(kernel, tf.float32) * _NORM_SCALE
    sumsq = tf.reduce_sum(tf.square(scaled), axis=[0, 1, 2], keepdims=True)
    return tf.sqrt(sumsq + NORM_EPS * _NORM_SCALE * _NORM_SCALE) / _NORM_SCALE


def unit_filters(kernel):
    """kernel / filter_norm(kernel): every filter divided by its norm, in the kernel's dtype.

    The same value, bit for bit, as `kernel / tf.cast(filter_norm(kernel), kernel.dtype)`,
    with the gradient written out: for u = W / n, n = sqrt(sum W^2 + 1e-4),
    dL/dW = (g - u * sum(g * u)) / n (the sums over each filter's k x k x C_in entries).
    It keeps only u and n, one number per filter; autodiff through the norm kept two more
    kernel-sized tensors per layer (the scaled kernel for the square's gradient and -W
    for the division's, the latter computed before the backward pass even started).
    """
    return _unit_filters(tf.convert_to_tensor(kernel))  # a variable read, not the variable


def _divide_by_norms(kernel, wnorm):
    """The unit filters W / |W| in the kernel's dtype, from the float32 filter norms."""
    return kernel / tf.cast(wnorm, kernel.dtype)


@tf.custom_gradient
def _unit_filters(kernel):
    wnorm = filter_norm(kernel)
    unit = _divide_by_norms(kernel, wnorm)

    def grad(g):
        return _unit_filters_grad(g, unit, wnorm, kernel.dtype)

    return unit, grad


def angular_function(cos, norm, k=None, original=False):
    """g(theta) of the paper for cos = cos(theta); `norm` names g as in the original.

    - 'cosine':  cos(theta)
    - 'linear':  1 - 0.63662 * theta   (0.63662 ~ 2/pi, the original's literal)
    - 'sigmoid': C(k) (1 - e^{theta/k - pi/2k}) / (1 + e^{theta/k - pi/2k}), k = 0.3
    - 'lr_sigmoid': the same with the per-filter k given (already |k| + 0.05).

    With `original=True` in the original's order (acos, then exp; autodiff through
    `safe_acos`); otherwise from asin(cos) = pi/2 - theta (`safe_asin`), the same values
    to float32 rounding.
    """
    if norm not in NORMS[1:]:
        raise ValueError(f"angular_function: unknown norm {norm!r}; allowed: {NORMS[1:]}")
    if norm == "cosine":
        return cos
    if not original:
        # From phi = asin(c) = pi/2 - theta, exact where c is near 0 (tiny filters), where
        # pi/2 - acos(c) and 1 - 0.63662 acos(c) keep c only to 1e-7: with a `w_norm` the
        # score |x| g is differentiated through g's value, not only its slope.
        phi = safe_asin(cos)
        if norm == "linear":
            return LINEAR_AT_RIGHT_ANGLE + LINEAR_SLOPE * phi
        kk = SIGMOID_K if norm == "sigmoid" else k
        return sigmoid_constant(kk) * tf.tanh(phi * (0.5 / kk))
    theta = safe_acos(cos)
    if norm == "linear":
        return -LINEAR_SLOPE * theta + 1.0
    if norm == "sigmoid":
        k = SIGMOID_K
    return sigmoid_function(theta, k)[0]


def sigmoid_function(theta, k):
    """(g, e): the sigmoid SphereConv g(theta) = C(k) (1 - e) / (1 + e) and
    e = exp(theta / k - pi / 2k).  The same expression, in the same order, as the
    original (which evaluates exp twice; once here gives the same value)."""
    c = sigmoid_constant(k)
    e = tf.exp(theta / k - np.pi / (2 * k))
    return c * (1.0 - e) / (1.0 + e), e


#: g at theta = pi/2 of the linear SphereConv, 1 - 0.63662 pi/2 = -3.6e-7 (float64).
LINEAR_AT_RIGHT_ANGLE = 1.0 - LINEAR_SLOPE * math.pi / 2


def _response_forward(cos, norm, k):
    """g(cos theta) for one angular function (float32), the fast path's forward pass.

    - linear: -0.63662 acos(c) + 1, the original's expression, whose rounding the golden
      fixtures hold (a SphereResNet-32's BN statistics moved by 1e-5 when it was
      computed from asin);
    - sigmoids: C (1 - e) / (1 + e) with e = exp((theta - pi/2) / k) is
      C tanh((pi/2 - theta) / 2k), and pi/2 - acos(c) = asin(c): two transcendental
      passes where the original's expression takes acos, exp and a division.
    The gradients do not depend on how the value is rounded: `_response_backward`
    takes them from the cosine.
    """
    if norm == "cosine":
        return cos
    cos = tf.clip_by_value(cos, -1.0, 1.0)
    if norm == "linear":
        return -LINEAR_SLOPE * tf.acos(cos) + 1.0
    kk = SIGMOID_K if norm == "sigmoid" else k
    return sigmoid_constant(kk) * tf.tanh(tf.asin(cos) * (0.5 / kk))


def _response_backward(dy, cos, xnorm, norm, k):
    """(dL/dconv_unit, dL/dxnorm, dL/dk) of y = g(cos), cos = conv_unit / xnorm, from the
    float32 cosine itself.

    - cosine:  dg/dc = 1.
    - linear:  dg/dc = 0.63662 / sin(theta).
    - sigmoid, lr_sigmoid:  with phi = asin(c) = pi/2 - theta and u = phi / 2k,
      g = C(k) tanh(u), dg/dc = C sech^2(u) / (2k sin theta),
      dg/dk = C'(k) tanh(u) - C phi sech^2(u) / (2k^2).
    sin(theta) = sqrt(max(1 - c^2, 2**-23)), bounded below as in `safe_acos`.  Every factor
    is taken from c, never from the output g: the output is flat in theta where a filter
    matches its patch (|c| near 1) and, for 'linear', holds c only to 1e-7 absolute, so
    an angle read back from it (as this port once did) was wrong by up to 100x there
    under bfloat16, and by 1e10 in float32 for tiny filters (docs/differences.md).
    """
    dk = None
    if norm == "cosine":
        d, scale = dy, 1.0
    else:
        # Everything below waits for dy: otherwise the executor is free to compute it
        # right after the forward pass and keep it until the backward pass gets here.
        with tf.control_dependencies([dy]):
            cos = tf.identity(cos)
        sin = tf.sqrt(tf.maximum(1.0 - tf.square(cos), _ACOS_GRAD_MIN))
        if norm == "linear":
            d, scale = dy / sin, LINEAR_SLOPE  # the scale goes on the small 1 / |x| below
        else:
            kk = SIGMOID_K if norm == "sigmoid" else k
            c = sigmoid_constant(kk)
            phi = tf.asin(tf.clip_by_value(cos, -1.0, 1.0))
            scale = c / (2.0 * kk)
            if norm == "lr_sigmoid":
                u = phi * (0.5 / kk)
                w = dy * tf.math.reciprocal(tf.square(tf.cosh(u)))  # dy sech^2: no cancellation
                a = tf.exp(-np.pi / (2 * kk))
                dc_dk = a * np.pi / (tf.square(kk) * tf.square(1.0 - a))
                dk = (dc_dk * tf.reduce_sum(dy * tf.tanh(u), axis=[0, 1, 2])
                      - c / (2.0 * tf.square(kk)) * tf.reduce_sum(phi * w, axis=[0, 1, 2]))
                d = w * scale / sin  # one scale per filter: not foldable into 1 / |x|
                scale = 1.0
            else:
                # one chain of elementwise passes, each taking its input's buffer
                d = dy / (sin * tf.square(tf.cosh(phi * (0.5 / kk))))
    inv_xnorm = scale / xnorm
    grad_xnorm = -tf.reduce_sum(d * cos, axis=-1, keepdims=True) * inv_xnorm
    # After the reduction, so that the product can take d's buffer (its last use).
    with tf.control_dependencies([grad_xnorm]):
        grad_conv = d * inv_xnorm
    return grad_conv, grad_xnorm, dk


@functools.lru_cache(maxsize=None)
def _unit_filter_response_fn(norm):
    @tf.custom_gradient
    def response(conv_unit, xnorm, k):
        cos = conv_unit / xnorm

        def grad(dy):
            return _response_backward(dy, cos, xnorm, norm, k)

        return _response_forward(cos, norm, k), grad

    return response


def unit_filter_response(conv_unit, xnorm, norm, k=None):
    """g(cos theta) from the convolution with unit-norm filters: cos = conv(x, W / |W|) / |x|
    (float32), with the hand-written gradient of `_response_backward` (it keeps the cosine).
    `norm` is one of NORMS other than 'none'; k [F] is the effective k of `lr_sigmoid`."""
    if norm != "lr_sigmoid":
        k = tf.zeros([], tf.float32)
    return _unit_filter_response_fn(norm)(conv_unit, xnorm, k)


def _unit_filters_grad(g, unit, wnorm, dtype):
    """dL/dW of u = W / n, n = sqrt(sum W^2 + 1e-4) per filter: (g - u sum(g u)) / n."""
    u = tf.cast(unit, tf.float32)
    g = tf.cast(g, tf.float32)
    radial = tf.reduce_sum(g * u, axis=[0, 1, 2], keepdims=True)
    return tf.cast((g - u * radial) / wnorm, dtype)


def sphere_convolution(x, kernel, norm, k=None, strides=(1, 1), padding="same"):
    """The whole fast SphereConv, g(conv(x, W / |W|) / |x|), as one hand-differentiated op.

    The filter normalisation, the convolution, the patch norm and the angular function
    are computed inside one `tf.custom_gradient`, in float32 whatever x's dtype (the
    angle of a patch close to its filter is lost in a bfloat16 convolution), and whose
    backward pass calls the convolution's two backprop kernels itself.  What it keeps
    for the backward pass is the one-channel patch norm, the filter norms (one number
    per filter) and, for a float32 'cosine' layer, its output (which is the cosine); the
    input and the kernel are kept by the layers around it anyway.  The other layers
    compute the cosine again in the backward pass (one more convolution, in float32)
    rather than keep a float32 copy of it: every derivative is taken from the cosine,
    never read back from the output (`_response_backward`).  The unit filters are
    computed again too (a kernel-sized division, the same bits), and nothing is
    computed before the output gradient arrives.  Inputs: x [B, H, W, C_in] (float32 or
    bfloat16), kernel [k, k, C_in, F] (float32: the variable, not a bfloat16 copy),
    k [F] for `lr_sigmoid`; the output has x's dtype.  Dilation 1, one group
    (SphereConv2D falls back otherwise).
    """
    kernel = tf.convert_to_tensor(kernel)
    kernel_size = tuple(int(d) for d in kernel.shape[:2])
    fn = _sphere_convolution_fn(norm, kernel_size, tuple(strides), padding.upper())
    if norm != "lr_sigmoid":
        k = tf.zeros([], tf.float32)
    return fn(x, kernel, k)


@functools.lru_cache(maxsize=None)
def _sphere_convolution_fn(norm, kernel_size, strides, padding):
    conv_strides = [1, strides[0], strides[1], 1]

    def cosine(x32, unit, xnorm):
        return tf.nn.conv2d(x32, unit, conv_strides, padding) / xnorm

    @tf.custom_gradient
    def sphere_conv(x, kernel, k):
        kernel32 = tf.cast(kernel, tf.float32)
        wnorm = filter_norm(kernel32)
        x32 = tf.cast(x, tf.float32)
        xnorm, ones = _patch_norm_forward(x32, kernel_size, strides, padding)
        y = tf.cast(_response_forward(cosine(x32, _divide_by_norms(kernel32, wnorm), xnorm), norm, k),
                    x.dtype)
        # A float32 cosine layer's output is its cosine, bit for bit: kept, not recomputed.
        keep_output = norm == "cosine" and x.dtype == tf.float32

        def grad(dy):
            with tf.control_dependencies([dy]):
                unit = _divide_by_norms(tf.cast(kernel, tf.float32), wnorm)
                x32 = tf.cast(x, tf.float32)
            cos = y if keep_output else cosine(x32, unit, xnorm)
            grad_conv, grad_xnorm, dk = _response_backward(tf.cast(dy, tf.float32), cos, xnorm,
                                                           norm, k)
            gx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=unit, out_backprop=grad_conv,
                strides=conv_strides, padding=padding)
            gu = tf.raw_ops.Conv2DBackpropFilter(
                input=x32, filter_sizes=tf.shape(kernel), out_backprop=grad_conv,
                strides=conv_strides, padding=padding)
            gx = gx + _patch_norm_input_grad(x32, xnorm, grad_xnorm, ones, strides, padding)
            return tf.cast(gx, x.dtype), _unit_filters_grad(gu, unit, wnorm, kernel.dtype), dk

        return y, grad

    return sphere_conv


def sphere_response(conv, xnorm, wnorm, norm="cosine", w_norm="none", k=None, w_scale=None,
                    original=False):
    """Turn a plain convolution output into the SphereConv output.

    Args:
      conv: conv2d(x, W), float32 [B, Ho, Wo, C_out].
      xnorm: `patch_norm(x)`, [B, Ho, Wo, 1].
      wnorm: `filter_norm(W)`, [1, 1, 1, C_out].
      norm: SphereConv angular function, one of `NORMS`.
      w_norm: weight-normalised score function, one of `W_NORMS`, applied first as
        in the original (it is meant for `norm='none'`, e.g. the score layer).
      k: the per-filter k (|k_value| + 0.05) for `norm='lr_sigmoid'`.
      w_scale: when given, `conv` and `wnorm` are those of the filters W / w_scale
        (`kernel_scale`, one power of two per filter).  Every response is the same for
        W and W / w_scale except a `norm` applied after a `w_norm`, which this corrects.

    `w_norm='cosine'` gives conv/|W| = |x| cos(theta), exactly as the original.
    `w_norm='linear'|'sigmoid'` give the generalised angular softmax logit
    |x| g(theta) with theta the angle between patch and filter.  The original
    applied acos to |x| cos(theta) instead, which is NaN whenever that exceeds 1
    (ordinary feature norms); see docs/differences.md.

    The usual case (a `norm` and no `w_norm`) runs the fused form with a hand-written
    gradient (`SphereConv2D` goes one step further and folds 1/|W| into the filters,
    see `unit_filter_response`); with `original=True` (the original's order of
    arithmetic), and for the rare combinations, plain autodiff of the same expressions.
    """
    if w_norm == "none" and norm != "none" and not original:
        return unit_filter_response(conv / wnorm, xnorm, norm, k)
    return _sphere_response_autodiff(conv, xnorm, wnorm, norm, w_norm, k, w_scale, original)


def _sphere_response_autodiff(conv, xnorm, wnorm, norm, w_norm, k, w_scale=None, original=False):
    """`sphere_response` written as plain TF expressions (autodiff gradient)."""
    if w_norm not in W_NORMS:
        raise ValueError(f"sphere_response: unknown w_norm {w_norm!r}; allowed: {W_NORMS}")
    if w_norm == "none":
        if norm == "none":
            return conv
        # Divided in the original's order: first by the patch norm, then by the filter norm.
        return angular_function(conv / xnorm / wnorm, norm, k, original)
    cos = conv / xnorm / wnorm
    if w_norm == "cosine":
        score, angular = conv / wnorm, cos
    else:
        angular = angular_function(cos, w_norm, original=original)
        score = xnorm * angular
    if norm == "none":
        return score
    # A `norm` after a `w_norm` (no example of the original does this) takes the cosine
    # score / (|x| |W|) = angular / |W|.  The original's order, score / |x| / |W|, is kept
    # for `original`; otherwise |x| is not multiplied in and divided out again, which left
    # the rounding of |x| g in gradients that are themselves tiny (filters near 0).
    true_wnorm = wnorm if w_scale is None else wnorm * w_scale  # the filter's own norm
    if original:
        # the score does not depend on the filter's scale, so dividing it by the rescaled
        # filter's norm left a factor w_scale too many
        return angular_function(score / xnorm / true_wnorm, norm, k, original)
    return angular_function(angular / true_wnorm, norm, k)


# ---------------------------------------------------------------------------
# Decoupled operators (beyond the original repository)
# ---------------------------------------------------------------------------
# Liu, Liu, Yu, Dai, Lin, Wang, Rehg, Song, "Decoupled Networks", CVPR 2018
# (arXiv:1804.08071), code wy1iu/DCNets: a convolution output is written as
# f(w, x) = h(|x|) * g(theta), a magnitude function of the patch norm times an
# angular function.  SphereConv is h = 1; the other magnitudes below are the
# paper's operators with DCNets' constants.  Nothing here is used unless a layer
# asks for a magnitude, so the original SphereConv arithmetic above is untouched.

#: Magnitude functions h(|x|), by name.  'none' is SphereConv (h = 1).
MAGNITUDES = ("none", "ball", "tanh", "linear", "seg", "log")
#: The magnitudes whose shape depends on a radius rho.
MAGNITUDES_WITH_RHO = ("ball", "tanh", "seg")
#: How rho is obtained (a positive number gives a fixed rho):
#: 'batch_mean' = (r^2 + 1e-4) * E[|x|], DCNets' CIFAR and ImageNet default;
#: 'learned'    = r^2 + 1e-4, DCNets' ImageNet code with `xnorm_bn=False`.
RHO_MODES = ("batch_mean", "learned")
#: DCNets' `radius` variable: one per filter, initialised to 1, used as r^2 + 1e-4.
RHO_RADIUS_INIT = 1.0
RHO_RADIUS_EPS = 1e-4
#: Slopes of SegConv below and above rho in DCNets' `seg_cos` code
#: (h = |x| below rho, 0.5 |x| + 0.5 rho above: continuous at rho).
SEG_SLOPE_BELOW = 1.0
SEG_SLOPE_ABOVE = 0.5


def radius_to_rho_scale(radius):
    """DCNets' rho factor from the learnable radius: r^2 + 1e-4 (always positive)."""
    return tf.square(radius) + RHO_RADIUS_EPS


def magnitude_function(xnorm, magnitude, rho=None):
    """h(|x|) of a decoupled operator for patch norms `xnorm` ([B, Ho, Wo, 1]).

    - 'none':   1 (SphereConv)
    - 'ball':   min(|x| / rho, 1)            (BallConv)
    - 'tanh':   tanh(|x| / rho)              (TanhConv)
    - 'linear': |x|                          (LinearConv)
    - 'seg':    |x| if |x| < rho, else 0.5 |x| + 0.5 rho   (SegConv)
    - 'log':    log(1 + |x|)                 (LogConv)

    `rho` broadcasts against `xnorm` (e.g. one per filter, [C_out]).  BallConv is
    computed as |x| / max(|x|, rho), DCNets' `conv / (rho + relu(|x| - rho))`.
    """
    if magnitude == "none":
        return tf.ones_like(xnorm)
    if magnitude == "linear":
        return xnorm
    if magnitude == "log":
        return tf.math.log1p(xnorm)
    if magnitude not in MAGNITUDES_WITH_RHO:
        raise ValueError(f"magnitude_function: unknown magnitude {magnitude!r}; allowed: {MAGNITUDES}")
    if rho is None:
        raise ValueError(f"magnitude_function: magnitude {magnitude!r} needs rho")
    if magnitude == "ball":
        return xnorm / tf.maximum(xnorm, rho)
    if magnitude == "tanh":
        return tf.tanh(xnorm / rho)
    return tf.where(
        xnorm < rho, SEG_SLOPE_BELOW * xnorm, SEG_SLOPE_ABOVE * xnorm + (SEG_SLOPE_BELOW - SEG_SLOPE_ABOVE) * rho
    )
