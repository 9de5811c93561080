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

    |x|   = sqrt(sum over the patch of (x 2^-32)^2 + 1e-4 2^-64) / 2^-32
    cos   = conv(x, W / |W|) / |x|
    g     = `formulas.angular_function` of cos: cos | (1 - 0.63662 pi/2) + 0.63662 asin(cos)
            | C(k) tanh(asin(cos) / 2k)

the formulas of `portable_ops` (the 2^-32 scaling keeps the squares finite for
activations up to ~7.7e28, as the training graph's scaled branch does).  Two targets:

- 'litert': the patch norm as the port computes it (a channel sum of squares, then a
  k x k box sum), and asin with the built-in ATAN2 (LiteRT has no asin):
  asin(c) = atan2(c, sqrt((1 - c)(1 + c))), an exact identity on [-1, 1]; the factored
  (1 - c)(1 + c) keeps the precision near |c| = 1 that 1 - c^2 loses.
- 'onnx': Asin itself, and the patch norm as the original computed it, one
  convolution of x^2 with a ones kernel [k, k, C_in, 1] plus eps as its bias (one output
  channel: ~1/F of the layer's own convolution).  The box sum's one-channel
  convolution, and a scalar Add, trip tf2onnx 1.17's transpose optimiser: the first
  into a wrong broadcast, the second into leaving a transpose around every convolution.

Every other layer (Rescaling, BatchNormalization in eval mode, ReLU, pooling, Add,
Flatten) is the model's own, weights shared.
"""

import keras
import numpy as np
import tensorflow as tf

from .layers import SphereConv2D, all_layers

from . import formulas
from .formulas import NORM_EPS
from .portable_ops import NORM_SCALE, filter_norm

#: The converters the rewrite is made for (module docstring).
TARGETS = ("litert", "onnx")


class UnsupportedLayerError(ValueError):
    """A layer the inference rewrite does not know (beyond the original's networks)."""


class FoldedSphereConv(keras.layers.Layer):
    """Eval-mode SphereConv2D with its filter-only terms folded into constants.

    Built from a trained `SphereConv2D` (norm and w_norm of the original; magnitude
    'none'); computes the same function of its input with converter-friendly ops only.
    """

    def __init__(self, source, target, **kwargs):
        super().__init__(name=source.name, dtype="float32", **kwargs)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}. Received: target={target!r}")
        self.target = target
        self.norm = source.norm
        self.w_norm = source.w_norm
        self.filters = source.filters
        self.kernel_size = tuple(source.kernel_size)
        self.strides = tuple(source.strides)
        self.padding = source.padding.upper()
        self.dilations = tuple(source.dilation_rate)
        kernel = np.asarray(keras.ops.convert_to_numpy(source.kernel), np.float32)
        self.wnorm = np.asarray(filter_norm(kernel), np.float32).reshape(-1)
        self.unit_kernel = (kernel / self.wnorm).astype(np.float32)
        self.bias = (np.asarray(keras.ops.convert_to_numpy(source.bias), np.float32)
                     if source.use_bias else None)
        self.activation = source.activation
        self.k = None
        if self.norm == "lr_sigmoid":
            self.k = np.asarray(formulas.effective_k(source.k_value), np.float32)

    def compute_output_shape(self, input_shape):
        probe = keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides,
                                    padding=self.padding.lower(), dilation_rate=self.dilations)
        return probe.compute_output_shape(input_shape)

    def _asin(self, c):
        c = tf.clip_by_value(c, -1.0, 1.0)
        if self.target == "onnx":
            return tf.asin(c)
        return tf.atan2(c, tf.sqrt((1.0 - c) * (1.0 + c)))

    def _g(self, cos, norm, k=None):
        """The angular function of `formulas`, with this target's asin."""
        return formulas.angular_function(cos, norm, None if k is None else tf.constant(k),
                                         asin=self._asin)

    def _patch_norm(self, x):
        scaled = x * NORM_SCALE
        eps = tf.constant([NORM_EPS * NORM_SCALE * NORM_SCALE], tf.float32)
        if self.target == "litert":
            sumsq = tf.reduce_sum(tf.square(scaled), axis=-1, keepdims=True)
            ones = tf.ones(self.kernel_size + (1, 1), tf.float32)
        else:
            sumsq = tf.square(scaled)
            ones = tf.ones(self.kernel_size + (int(x.shape[-1]), 1), tf.float32)
        box = tf.nn.conv2d(sumsq, ones, strides=list(self.strides), padding=self.padding,
                           dilations=list(self.dilations))
        return tf.sqrt(tf.nn.bias_add(box, eps)) * (1.0 / NORM_SCALE)

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


def float32_model(model):
    """`model` itself when every layer computes in float32; else (a model trained under
    mixed precision) a float32 copy with the same weights, which mixed precision keeps
    in float32: what the converters and runtimes take, and what is served."""
    if all(layer.dtype_policy.name == "float32" for layer in all_layers(model)):
        return model

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def inference_model(model, target):
    """A Keras model computing `model(x, training=False)` with every SphereConv2D
    replaced by its `FoldedSphereConv` (the other layers shared, not copied)."""
    check_exportable(model)

    def replace(layer):
        if isinstance(layer, SphereConv2D) and (layer.norm != "none" or layer.w_norm != "none"):
            return FoldedSphereConv(layer, target)
        return layer

    return keras.models.clone_model(model, clone_function=replace, recursive=True)
