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
# sin(theta) bound of the hand-written gradients: 1 / max(sin theta, this) is the bounded
# |d acos / dc| = 1 / sqrt(max(1 - c^2, 2**-23)) of `safe_acos`, with sin theta >= 0.
_SIN_MIN = float(np.sqrt(np.float32(_ACOS_GRAD_MIN)))
# The largest float32 below 1: the sigmoids' t = g / C(k) is kept within +-this.
_T_MAX = float(np.nextafter(np.float32(1), np.float32(0)))


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
    """dL/dx of xnorm = sqrt(box_sum(sum_c x^2) + eps): x * box_sum^T(dL/dxnorm / xnorm)."""
    pixels = tf.concat([tf.shape(x)[:-1], [1]], axis=0)
    spread = tf.nn.conv2d_transpose(grad_xnorm / xnorm, ones, pixels, strides=list(strides),
                                    padding=padding, dilations=list(dilations))
    return x * spread


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


def angular_function(cos, norm, k=None):
    """g(theta) of the paper for cos = cos(theta); `norm` names g as in the original.

    - 'cosine':  cos(theta)
    - 'linear':  1 - 0.63662 * theta   (0.63662 ~ 2/pi, the original's literal)
    - 'sigmoid': C(k) (1 - e^{theta/k - pi/2k}) / (1 + e^{theta/k - pi/2k}), k = 0.3
    - 'lr_sigmoid': the same with the per-filter k given (already |k| + 0.05).
    """
    if norm == "cosine":
        return cos
    theta = safe_acos(cos)
    if norm == "linear":
        return -LINEAR_SLOPE * theta + 1.0
    if norm == "sigmoid":
        k = SIGMOID_K
    elif norm != "lr_sigmoid":
        raise ValueError(f"angular_function: unknown norm {norm!r}; allowed: {NORMS[1:]}")
    return sigmoid_function(theta, k)[0]


def sigmoid_function(theta, k):
    """(g, e): the sigmoid SphereConv g(theta) = C(k) (1 - e) / (1 + e) and
    e = exp(theta / k - pi / 2k).  The same expression, in the same order, as the
    original (which evaluates exp twice; once here gives the same value)."""
    c = sigmoid_constant(k)
    e = tf.exp(theta / k - np.pi / (2 * k))
    return c * (1.0 - e) / (1.0 + e), e


def _response_forward(conv_unit, xnorm, norm, k):
    """g(cos) with cos = conv_unit / xnorm, for one angular function (float32)."""
    cos = conv_unit / xnorm
    if norm == "cosine":
        return cos
    if norm == "linear":
        return -LINEAR_SLOPE * tf.acos(tf.clip_by_value(cos, -1.0, 1.0)) + 1.0
    # C (1 - e) / (1 + e) with e = exp((theta - pi/2) / k) is C tanh((pi/2 - theta) / 2k),
    # and pi/2 - acos(c) = asin(c): two transcendental passes where the original's
    # expression takes acos, exp and a division.
    kk = SIGMOID_K if norm == "sigmoid" else k
    return sigmoid_constant(kk) * tf.tanh(tf.asin(tf.clip_by_value(cos, -1.0, 1.0)) * (0.5 / kk))


def _response_backward(dy, y, xnorm, norm, k):
    """(dL/dconv_unit, dL/dxnorm, dL/dk) of y = g(conv_unit / xnorm), from y alone.

    Nothing but the output y (which the next layer keeps anyway) and the one-channel
    patch norm is kept for the backward pass; the angle comes back from y:
    - cosine:  cos = y.
    - linear:  theta = (1 - y) / 0.63662.
    - sigmoid, lr_sigmoid:  with t = y / C(k) = (1 - e) / (1 + e), e = exp((theta - pi/2) / k),
      phi = pi/2 - theta = 2 k atanh(t), so cos theta = sin(phi), sin theta = cos(phi), and
      dg/dtheta = -C (1 - t^2) / (2k), dg/dk = C'(k) t - C phi (1 - t^2) / (2 k^2).
    dg/dc = -dg/dtheta / sin(theta), with sin(theta) bounded below as in `safe_acos`.
    Each is the exact derivative; the rounding differs from autodiff of the forward
    expressions in the last bits (docs/differences.md, "order of the arithmetic").
    """
    dk = None
    if norm == "cosine":
        d, cos, scale = dy, y, 1.0
    else:
        # Everything below that depends on the output alone waits for dy: otherwise the
        # executor is free to compute it right after the forward pass, and every layer's
        # copy would then stay alive until the backward pass reaches that layer.
        with tf.control_dependencies([dy]):
            y = tf.identity(y)
        if norm == "linear":
            theta = (1.0 - y) * (1.0 / LINEAR_SLOPE)
            cos = tf.cos(theta)
            d = dy / tf.maximum(tf.sin(theta), _SIN_MIN)
            scale = LINEAR_SLOPE  # applied to the small [B, Ho, Wo, 1] tensors below
        else:
            kk = SIGMOID_K if norm == "sigmoid" else k
            c = sigmoid_constant(kk)
            # |t| < 1 always, but for small k (C(k) rounds to 1) the output saturates
            # at +-1, where the angle cannot come back and the derivative is 0 to float32
            # precision: t is kept below 1 so that atanh stays finite (1 - t^2 ~ 1.2e-7).
            t = tf.clip_by_value(y * (1.0 / c), -_T_MAX, _T_MAX)
            d, cos, dk = _sigmoid_backward(dy, t, kk, c, learnable=norm == "lr_sigmoid")
            scale = 1.0 if norm == "lr_sigmoid" else c / (2.0 * kk)
    inv_xnorm = scale / xnorm
    grad_xnorm = -tf.reduce_sum(d * cos, axis=-1, keepdims=True) * inv_xnorm
    # After the reduction, so that the product can take d's buffer (its last use): one
    # output-sized temporary less at the peak of the backward pass.
    with tf.control_dependencies([grad_xnorm]):
        grad_conv = d * inv_xnorm
    return grad_conv, grad_xnorm, dk


def _sigmoid_backward(dy, t, k, c, learnable):
    """(d, cos theta, dL/dk) of the sigmoid SphereConvs from t = g / C(k): see
    `_response_backward`.  d = dy (1 - t^2) / max(sin theta, bound), times C / 2k when
    `learnable` (k per filter); otherwise the caller applies C / 2k to 1 / |x|.

    The control dependencies order the passes so that each output-sized tensor is
    overwritten in place by the next pass once its last reader has run (TF reuses an
    input's buffer only when nothing else still needs it): four such tensors are alive at
    once, besides dy and the output, instead of seven.
    """
    dk_t = None
    at = tf.atanh(t)
    after_t = [at]
    if learnable:
        dk_t = tf.reduce_sum(dy * t, axis=[0, 1, 2])
        after_t.append(dk_t)
    with tf.control_dependencies(after_t):
        w = dy * (1.0 - tf.square(t))  # t's last use: the square takes its buffer
    phi = (2.0 * k) * at  # pi/2 - theta
    dk = None
    if learnable:
        a = tf.exp(-np.pi / (2 * k))
        dc_dk = a * np.pi / (tf.square(k) * tf.square(1.0 - a))
        dk = dc_dk * dk_t - c / (2.0 * tf.square(k)) * tf.reduce_sum(phi * w, axis=[0, 1, 2])
    cos = tf.sin(phi)
    with tf.control_dependencies([cos] + ([dk] if learnable else [])):
        sin = tf.maximum(tf.cos(phi), _SIN_MIN)  # phi's last use
    d = w / sin
    if learnable:
        d = d * (c / (2.0 * k))  # one scale per filter: not foldable into 1 / |x|
    return d, cos, dk


@functools.lru_cache(maxsize=None)
def _unit_filter_response_fn(norm):
    @tf.custom_gradient
    def response(conv_unit, xnorm, k):
        y = _response_forward(conv_unit, xnorm, norm, k)

        def grad(dy):
            return _response_backward(dy, y, xnorm, norm, k)

        return y, grad

    return response


def unit_filter_response(conv_unit, xnorm, norm, k=None):
    """g(cos theta) from the convolution with unit-norm filters: cos = conv(x, W / |W|) / |x|,
    with the hand-written gradient of `_response_backward` (it keeps only the output).
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
    are computed inside one `tf.custom_gradient`, whose backward pass calls the
    convolution's two backprop kernels itself.  What it keeps for the backward pass is
    its output, the one-channel patch norm and the filter norms (one number per
    filter); the input and the kernel are kept by the layers around it anyway.  The
    unit filters are computed again in the backward pass (a kernel-sized division, the
    same bits) rather than kept, and nothing is computed before the output gradient
    arrives.  Inputs: x [B, H, W, C_in], kernel [k, k, C_in, F], k [F] for
    `lr_sigmoid`; the output has x's dtype (the norms and angles are float32 inside).
    Dilation 1, one group (SphereConv2D falls back otherwise).
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

    @tf.custom_gradient
    def sphere_conv(x, kernel, k):
        wnorm = filter_norm(kernel)
        conv = tf.nn.conv2d(x, _divide_by_norms(kernel, wnorm), conv_strides, padding)
        xnorm, ones = _patch_norm_forward(tf.cast(x, tf.float32), kernel_size, strides, padding)
        # The output in the input's dtype is what is kept (and returned): under bfloat16 a
        # float32 copy of the output, and of the input, would double what the layer keeps.
        y = tf.cast(_response_forward(tf.cast(conv, tf.float32), xnorm, norm, k), x.dtype)

        def grad(dy):
            grad_conv, grad_xnorm, dk = _response_backward(
                tf.cast(dy, tf.float32), tf.cast(y, tf.float32), xnorm, norm, k)
            grad_conv = tf.cast(grad_conv, conv.dtype)
            with tf.control_dependencies([grad_conv]):
                unit = _divide_by_norms(kernel, wnorm)
            gx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=unit, out_backprop=grad_conv,
                strides=conv_strides, padding=padding)
            gu = tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=tf.shape(kernel), out_backprop=grad_conv,
                strides=conv_strides, padding=padding)
            with tf.control_dependencies([grad_xnorm]):
                x32 = tf.cast(x, tf.float32)
            gx = gx + tf.cast(_patch_norm_input_grad(x32, xnorm, grad_xnorm, ones, strides, padding),
                              gx.dtype)
            return gx, _unit_filters_grad(gu, unit, wnorm, kernel.dtype), dk

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
    return _sphere_response_autodiff(conv, xnorm, wnorm, norm, w_norm, k, w_scale)


def _sphere_response_autodiff(conv, xnorm, wnorm, norm, w_norm, k, w_scale=None):
    """`sphere_response` written as plain TF expressions (autodiff gradient)."""
    if w_norm == "cosine":
        conv = conv / wnorm
    elif w_norm in ("linear", "sigmoid"):
        conv = xnorm * angular_function(conv / xnorm / wnorm, w_norm)
    elif w_norm != "none":
        raise ValueError(f"sphere_response: unknown w_norm {w_norm!r}; allowed: {W_NORMS}")

    if norm == "none":
        return conv
    # Divided in the original's order: first by the patch norm, then by the filter norm.
    cos = conv / xnorm / wnorm
    if w_scale is not None and w_norm != "none":
        # the w_norm output above does not depend on the filter's scale, so dividing it
        # by the rescaled filter's norm left a factor w_scale too many
        cos = cos / w_scale
    return angular_function(cos, norm, k)


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
