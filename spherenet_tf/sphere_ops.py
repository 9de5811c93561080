"""The TensorFlow fast path of SphereConv: hand-differentiated kernels.

"Deep Hyperspherical Learning", Liu et al., NIPS 2017 (arXiv:1711.03189), section 2;
`_conv_layer` of the original `spherenet.py` / `sphere_resnet/sphere_resnet_v1.py`
(wy1iu/SphereNet).  `formulas` states the arithmetic (and runs on every backend); this
module computes the same in fewer passes and less memory, on TensorFlow only:

- `patch_norm`: the patch norms as a channel sum of squares (one Euclidean-norm pass)
  and a k x k box sum, with a one-pass hand-written gradient; `patch_norm_original`, the
  original's ones-kernel convolution of x^2 (for the original's order of arithmetic);
- `sphere_convolution`: the whole SphereConv g(conv(x, W / |W|) / |x|) as one op, whose
  backward pass calls the convolution's backprop kernels itself and takes every
  derivative from the cosine (`_response_backward`).  Dilated convolutions and `w_norm`
  layers compute with `formulas` instead.

Each kernel is checked against `formulas` / `portable_ops` (values and gradients, every
`norm`, the adversarial grid: tests/test_kernels.py), and the gradients against a float64
reference in every precision (tests/test_gradient_accuracy.py).
"""

import functools
import math

import numpy as np
import tensorflow as tf

from .formulas import ACOS_GRAD_MIN, LINEAR_SLOPE, NORM_EPS, SIGMOID_K, sigmoid_constant
from .portable_ops import NORM_SCALE, filter_norm

# Pixel norms below this are squared and box-summed directly (k*k * 2**100 stays below
# float32's 2**128 for any kernel); above it, the patch norm takes the scaled form.
_DIRECT_NORM_MAX = 2.0**50
# Largest power of two `_patch_norm_input_grad` divides by: dL/dxnorm * 2**80 stays finite
# for patch norms down to the 1e-2 floor of the 1e-4 epsilon (|d| <= ~1e4 per filter).
_RADIAL_MAX_EXPONENT = 80.0


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
        sumsq = tf.reduce_sum(tf.square(x * NORM_SCALE), axis=-1, keepdims=True)
        return tf.sqrt(box_sum(sumsq) + NORM_EPS * NORM_SCALE * NORM_SCALE) / NORM_SCALE

    xnorm = tf.cond(tf.reduce_max(sumsq) < _DIRECT_NORM_MAX * _DIRECT_NORM_MAX, direct, scaled)
    return xnorm, ones


def _compiled_by_xla():
    """Whether the graph being traced is compiled by XLA (`tf.function(jit_compile=True)`,
    which traces inside an XLA context).  TF has no public call for this; if its
    internal function moves (ImportError, AttributeError), the answer is True, the form
    every compiler accepts.  Any other error is a real one and propagates."""
    try:
        from tensorflow.python.ops import control_flow_util

        in_xla = control_flow_util.GraphOrParentsInXlaContext
    except (ImportError, AttributeError):  # pragma: no cover - a TF without that function
        return True
    return in_xla(tf.compat.v1.get_default_graph())


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


def _divide_by_norms(kernel, wnorm):
    """The unit filters W / |W| in the kernel's dtype, from the float32 filter norms."""
    return kernel / tf.cast(wnorm, kernel.dtype)


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
        sin = tf.sqrt(tf.maximum(1.0 - tf.square(cos), ACOS_GRAD_MIN))
        if norm == "linear":
            d, scale = dy / sin, LINEAR_SLOPE  # the scale goes on the small 1 / |x| below
        else:
            kk = SIGMOID_K if norm == "sigmoid" else k
            c = sigmoid_constant(kk)
            phi = tf.asin(tf.clip_by_value(cos, -1.0, 1.0))
            scale = c / (2.0 * kk)
            if norm == "lr_sigmoid":
                a = tf.exp(-np.pi / (2 * kk))
                dc_dk = a * np.pi / (tf.square(kk) * tf.square(1.0 - a))
                # One input-sized temporary at a time beside cos, dy and phi: each sum
                # waits for the one before it, so the executor cannot hold tanh(u), sech^2
                # and w at once (in some orders it did: 1.2x the twin at batch 128); and
                # u = phi / 2k is formed twice rather than kept beside phi.
                dk_tanh = tf.reduce_sum(dy * tf.tanh(phi * (0.5 / kk)), axis=[0, 1, 2])
                with tf.control_dependencies([dk_tanh]):
                    # dy sech^2(u), u = phi / 2k: no cancellation
                    w = dy * tf.math.reciprocal(tf.square(tf.cosh(phi * (0.5 / kk))))
                dk_phi = tf.reduce_sum(phi * w, axis=[0, 1, 2])
                dk = dc_dk * dk_tanh - c / (2.0 * tf.square(kk)) * dk_phi
                with tf.control_dependencies([dk]):
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
            # The kernel gradient is off the path to the previous layer: left to the
            # executor it could wait, keeping grad_conv (output-sized) alive while the
            # layers below run their backward passes.  The input gradient waits for it.
            with tf.control_dependencies([gu]):
                gx = gx + _patch_norm_input_grad(x32, xnorm, grad_xnorm, ones, strides, padding)
            return tf.cast(gx, x.dtype), _unit_filters_grad(gu, unit, wnorm, kernel.dtype), dk

        return y, grad

    return sphere_conv
