"""An inference-only copy of a SphereNet for the LiteRT and ONNX converters.

`SphereConv2D` ("Deep Hyperspherical Learning", Liu et al., NIPS 2017,
arXiv:1711.03189, section 2; `_conv_layer` of the original `spherenet.py`) computes
with ops the converters cannot take: `EuclideanNorm` (the fast patch norm), a
`tf.cond` between two patch-norm forms, `Bitcast` (the power-of-two kernel scale),
`Acos`/`Asin` (LiteRT has no built-in for either) and custom gradients.  In eval mode
the filters are constants, so everything that depends on them alone is folded here,
in NumPy float32, before conversion:

    unit filters  W / |W|,  |W| = sqrt(sum W^2 + 1e-4)          (per filter)
    k of lr_sigmoid: |k| + 0.05,  C(k) = (1 + e^{-pi/2k}) / (1 - e^{-pi/2k})

and the layer becomes plain ops on the input:

    |x|   = sqrt(box_sum(sum_c (x 2^-32)^2) + 1e-4 2^-64) / 2^-32   (`portable_ops.patch_norm`)
    cos   = conv(x, W / |W|) / |x|
    g     = cos | 1 - 0.63662 acos(cos) | C(k) tanh(asin(cos) / 2k)

the formulas of `portable_ops` (the 2^-32 scaling keeps the squares finite for
activations up to ~7.7e28, as the training graph's scaled branch does).  With
`angles="atan2"` (LiteRT) acos and asin are written with the built-in ATAN2:
acos(c) = atan2(sqrt((1 - c)(1 + c)), c), asin(c) = atan2(c, sqrt((1 - c)(1 + c))),
both exact identities on [-1, 1]; the factored (1 - c)(1 + c) keeps the precision
near |c| = 1 that 1 - c^2 loses.  Every other layer (Rescaling, BatchNormalization in
eval mode, ReLU, pooling, Add, Flatten) is the model's own, weights shared.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from .layers import SphereConv2D, all_layers
from .sphere_ops import (
    _NORM_SCALE,
    LINEAR_SLOPE,
    LR_SIGMOID_K_OFFSET,
    NORM_EPS,
    SIGMOID_K,
)

#: How acos and asin are written: 'tf' (the ops themselves: ONNX has Acos and Asin)
#: or 'atan2' (LiteRT's built-in ATAN2).
ANGLE_FORMS = ("tf", "atan2")


class UnsupportedLayerError(ValueError):
    """A layer the inference rewrite does not know (beyond the original's networks)."""


def _filter_norms(kernel):
    """|W| = sqrt(sum W^2 + 1e-4) per filter, [F] float32 (summed in float64 and rounded
    once: at least as exact as the float32 sum of the training graph)."""
    w = np.asarray(kernel, np.float64)
    return np.sqrt(np.sum(w * w, axis=(0, 1, 2)) + NORM_EPS).astype(np.float32)


def _sigmoid_constant(k):
    """C(k) in float32 from float32 k, as the training graph computes it for lr_sigmoid."""
    k = np.asarray(k, np.float32)
    e = np.exp(np.float32(-math.pi) / (np.float32(2) * k)).astype(np.float32)
    return ((1 + e) / (1 - e)).astype(np.float32)


class FoldedSphereConv(keras.layers.Layer):
    """Eval-mode SphereConv2D with its filter-only terms folded into constants.

    Built from a trained `SphereConv2D` (norm and w_norm of the original; magnitude
    'none'); computes the same function of its input with converter-friendly ops only.
    """

    def __init__(self, source, angles="tf", **kwargs):
        super().__init__(name=source.name, dtype="float32", **kwargs)
        if angles not in ANGLE_FORMS:
            raise ValueError(f"angles must be one of {ANGLE_FORMS}. Received: angles={angles!r}")
        self.angles = angles
        self.norm = source.norm
        self.w_norm = source.w_norm
        self.filters = source.filters
        self.kernel_size = tuple(source.kernel_size)
        self.strides = tuple(source.strides)
        self.padding = source.padding.upper()
        self.dilations = tuple(source.dilation_rate)
        kernel = np.asarray(keras.ops.convert_to_numpy(source.kernel), np.float32)
        self.wnorm = _filter_norms(kernel)
        self.unit_kernel = (kernel / self.wnorm).astype(np.float32)
        self.bias = (np.asarray(keras.ops.convert_to_numpy(source.bias), np.float32)
                     if source.use_bias else None)
        self.activation = source.activation
        self.k = None
        if self.norm == "lr_sigmoid":
            k_value = np.asarray(keras.ops.convert_to_numpy(source.k_value), np.float32)
            self.k = (np.abs(k_value) + np.float32(LR_SIGMOID_K_OFFSET)).astype(np.float32)

    def compute_output_shape(self, input_shape):
        probe = keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides,
                                    padding=self.padding.lower(), dilation_rate=self.dilations)
        return probe.compute_output_shape(input_shape)

    def _acos(self, c):
        c = tf.clip_by_value(c, -1.0, 1.0)
        if self.angles == "tf":
            return tf.acos(c)
        return tf.atan2(tf.sqrt((1.0 - c) * (1.0 + c)), c)

    def _asin(self, c):
        c = tf.clip_by_value(c, -1.0, 1.0)
        if self.angles == "tf":
            return tf.asin(c)
        return tf.atan2(c, tf.sqrt((1.0 - c) * (1.0 + c)))

    def _g(self, cos, norm, k=None):
        """The angular function g of `sphere_ops.angular_function` / `_response_forward`."""
        if norm == "cosine":
            return cos
        if norm == "linear":
            return 1.0 - LINEAR_SLOPE * self._acos(cos)
        if norm == "sigmoid":
            return np.float32(_sigmoid_constant(SIGMOID_K)) * tf.tanh(self._asin(cos) * (0.5 / SIGMOID_K))
        # lr_sigmoid: one k (and C(k)) per filter, broadcast over the last axis
        return tf.constant(_sigmoid_constant(k)) * tf.tanh(self._asin(cos) * tf.constant(0.5 / k))

    def _patch_norm(self, x):
        sumsq = tf.reduce_sum(tf.square(x * _NORM_SCALE), axis=-1, keepdims=True)
        ones = tf.ones(self.kernel_size + (1, 1), tf.float32)
        box = tf.nn.conv2d(sumsq, ones, strides=list(self.strides), padding=self.padding,
                           dilations=list(self.dilations))
        # + eps as the box sum's bias: tf2onnx's transpose optimiser fails on an Add of a
        # scalar (and leaves a transpose around every convolution), a Conv bias it folds
        eps = tf.constant([NORM_EPS * _NORM_SCALE * _NORM_SCALE], tf.float32)
        return tf.sqrt(tf.nn.bias_add(box, eps)) * (1.0 / _NORM_SCALE)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        # conv(x, W / |W|) = conv(x, W) / |W|: one division of the kernel, folded.
        conv = tf.nn.conv2d(x, tf.constant(self.unit_kernel), strides=list(self.strides),
                            padding=self.padding, dilations=list(self.dilations))
        xnorm = self._patch_norm(x)
        if self.w_norm == "none":
            out = self._g(conv / xnorm, self.norm, self.k)
        else:
            # The original applies w_norm first: x.W / |W| = |x| cos (cosine) or |x| g(theta)
            out = conv if self.w_norm == "cosine" else xnorm * self._g(conv / xnorm, self.w_norm)
            if self.norm != "none":
                out = self._g(out / xnorm / tf.constant(self.wnorm), self.norm, self.k)
        if self.bias is not None:
            out = out + tf.constant(self.bias)
        if self.activation is not None:
            out = self.activation(out)
        return out


def check_exportable(model):
    """Raise UnsupportedLayerError naming the first layer the rewrite cannot take."""
    for layer in all_layers(model):
        if isinstance(layer, SphereConv2D):
            if type(layer) is not SphereConv2D or layer.magnitude != "none":
                what = type(layer).__name__ + (f" with magnitude={layer.magnitude!r}"
                                               if type(layer) is SphereConv2D else "")
                raise UnsupportedLayerError(
                    f"layer {layer.name!r} ({what}) is beyond the original's networks and has "
                    "no LiteRT / ONNX form here; export it with --format savedmodel, which "
                    "keeps every layer of the port."
                )
        elif type(layer).__module__.startswith("spherenet_tf"):
            raise UnsupportedLayerError(
                f"layer {layer.name!r} ({type(layer).__name__}) is beyond the original's networks "
                "and has no LiteRT / ONNX form here; export it with --format savedmodel."
            )


def inference_model(model, angles="tf"):
    """A Keras model computing `model(x, training=False)` with every SphereConv2D
    replaced by its `FoldedSphereConv` (the other layers shared, not copied)."""
    check_exportable(model)

    def replace(layer):
        if isinstance(layer, SphereConv2D) and (layer.norm != "none" or layer.w_norm != "none"):
            return FoldedSphereConv(layer, angles=angles)
        return layer

    return keras.models.clone_model(model, clone_function=replace, recursive=True)
