"""SphereConv2D, the hyperspherical convolution, as a Keras 3 layer.

Ports `_conv_layer` of the original `spherenet.py` / `sphere_resnet_v1.py`
(wy1iu/SphereNet): "Deep Hyperspherical Learning", Liu et al., NIPS 2017
(arXiv:1711.03189), section 2.  The arithmetic lives in `formulas` (every backend) and
`sphere_ops` (TensorFlow's fast kernels); this module adds the Keras contract (validated options, weights, losses, serialisation) and the
`conv_layer` helper that mirrors the original's conv -> BN -> ReLU block.
"""

import keras
import numpy as np
from keras import ops

from . import decoupled, formulas, portable_ops, regularizers, sphere_ops
from .messages import closest

#: BatchNormalization settings of the original's hand-written BN (`batch_norm`).
BN_DECAY = 0.999
BN_EPSILON = 1e-3
# The original's EMA update is `s -= (s - v) * (1 - 0.999)` in float32, i.e. with
# weight 1 - float32(0.999) = 0.00099998713 on the new value.  Keras computes
# `1 - momentum` in float64 and rounds it to 0.001, 1.3e-5 away, unless momentum is
# given as float32(0.999) to begin with.
BN_MOMENTUM = float(np.float32(BN_DECAY))


def validate_option(layer_name, argument, value, allowed):
    """Return `value` if it is one of `allowed`, else raise a ValueError that says
    what was received, what is allowed and the closest allowed value."""
    if isinstance(value, str) and value in allowed:
        return value
    match = closest(value, allowed)
    raise ValueError(
        f"Unknown value for `{argument}` argument of {layer_name}. "
        f"Allowed values are: {', '.join(repr(a) for a in allowed)}. "
        f"Received: {argument}={value!r}." + (f" Did you mean {match!r}?" if match else "")
    )


def _no_float16_compute(dtype):
    """The dtype policy of a SphereConv with an angular function: `dtype` (or the global
    policy), except that a float16 compute dtype becomes float32.

    Numerical safety under 'mixed_float16' (docs/differences.md):
    float16 stops at 65504, so a float16 x.W overflows for large patches or filters
    and the backward pass of near-parallel patches overflows too.  Such a layer takes
    the float16 inputs (exactly widened) and returns float32; the next layer casts
    back.  bfloat16 has float32's range and keeps its compute dtype, as do plain
    convolutions (norm = w_norm = 'none').
    """
    policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
    if policy.compute_dtype == "float16":
        return "float32"
    return dtype


#: How a SphereConv computes: 'fast' (TensorFlow: the hand-differentiated kernels of
#: `sphere_ops`), 'original' (TensorFlow: the original's order of arithmetic, a ones-kernel
#: patch norm, `conv / |x| / |W|`, acos then exp, autodiff) or 'portable' (`formulas` and
#: `portable_ops` in keras.ops, autodiff: what every other backend runs).  All three agree
#: to the last bits; the choice is a computation detail, not part of a saved model.
FORMULATIONS = ("fast", "original", "portable")


def original_kernel_initializer():
    """N(0, sqrt(2 / (k*k*C_in))), not truncated: the original's filter initialiser."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="untruncated_normal"
    )


@keras.saving.register_keras_serializable(package="SphereNet")
class SphereConv2D(keras.layers.Conv2D):
    """2D hyperspherical convolution (SphereConv).

    Each output is g(theta), theta the angle between the input patch and the filter,
    instead of the inner product |w||x|cos(theta) of a convolution (`formulas` states the
    arithmetic).  `w_norm` gives weight-normalised scores |x| g(theta), meant for the
    classifier layer with `norm='none'`.

    Reference: W. Liu, Y.-M. Zhang, X. Li, Z. Yu, B. Dai, T. Zhao, L. Song, "Deep
    Hyperspherical Learning", NIPS 2017, arXiv:1711.03189.  Ports `_conv_layer` of the
    original TF1 code (wy1iu/SphereNet); the patch norm uses the convolution's stride and
    padding (the original `spherenet.py` did not, and failed for stride 2).

    Args:
      filters, kernel_size, strides: as `Conv2D`.
      padding: 'same' or 'valid' (case-insensitive; the original wrote 'SAME').
      norm: 'none' (a plain convolution), 'linear' (1 - 0.63662 theta), 'cosine'
        (cos theta), 'sigmoid' (k = 0.3) or 'lr_sigmoid' (a learnable k per filter,
        initialised to 0.7, used as |k| + 0.05).
      w_norm: 'none', 'cosine' (|x| cos theta = x.w/|w|, the weight-normalised softmax
        logit), 'linear' or 'sigmoid' (|x| g(theta), the generalised angular softmax
        logit).  Applied before `norm`, as in the original.
      orth: add the original's orthogonality loss 2e-4 * l2_loss(W^T W - I) to the
        layer's losses (also `orthogonality_loss()`, for a loop that reports it apart).
      magnitude, rho: beyond the original, the decoupled operator h(|x|) g(theta) of
        "Decoupled Networks" (Liu et al., CVPR 2018; wy1iu/DCNets), see `decoupled`:
        magnitude 'none' (SphereConv), 'ball', 'tanh', 'linear', 'seg' or 'log'; rho
        'batch_mean', 'learned' or a positive number.  Needs an angular `norm`.
      formulation: how it computes, not saved with the layer (`FORMULATIONS`); outside
        TensorFlow always 'portable'.
      use_bias: default False: the original has no bias anywhere.
      kernel_initializer: default N(0, sqrt(2/(k*k*C_in))), the original's.
      **kwargs: anything `keras.layers.Conv2D` accepts.

    Weights: `kernel` [k, k, C_in, filters], then `k_value` [filters] for 'lr_sigmoid',
    and the decoupled operators' `radius` [filters] and `xnorm_moving_mean` [].

    Mixed precision: a SphereConv with an angle computes in float32 (the angle of a patch
    close to its filter is lost at 8 bits), with the float32 kernel: its autocasting is
    off and its inputs are cast in `convolution_op`; it returns the compute dtype.

    Input shape: [batch, H, W, C_in] (channels_last).  Output shape: [batch, H_out,
    W_out, filters].

    >>> layer = SphereConv2D(64, 3, norm="linear", orth=True)
    >>> y = layer(keras.random.normal((2, 32, 32, 3)))  # values in [-1, 1]
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", norm="cosine",
                 w_norm="none", orth=False, use_bias=False, kernel_initializer=None,
                 magnitude="none", rho="batch_mean", formulation="fast", **kwargs):
        name = type(self).__name__
        formulation = validate_option(name, "formulation", formulation, FORMULATIONS)
        norm = validate_option(name, "norm", norm, formulas.NORMS)
        w_norm = validate_option(name, "w_norm", w_norm, formulas.W_NORMS)
        magnitude = validate_option(name, "magnitude", magnitude, portable_ops.MAGNITUDES)
        rho = decoupled.validate_rho(name, rho)
        if magnitude != "none" and norm == "none":
            raise ValueError(
                f"{name}: magnitude={magnitude!r} multiplies the angular output g(theta), "
                f"so it needs an angular `norm`. Received: norm='none'. Use e.g. "
                f"norm='cosine' (DCNets' TanhConv + cosine is magnitude='tanh', norm='cosine')."
            )
        if not isinstance(orth, bool):
            raise ValueError(f"Invalid value for `orth` argument of {name}: expected True or "
                             f"False. Received: orth={orth!r}.")
        if norm != "none" or w_norm != "none":
            kwargs["dtype"] = _no_float16_compute(kwargs.get("dtype"))
            kwargs["autocast"] = False  # the float32 kernel, see "Mixed precision" above
        super().__init__(filters, kernel_size, strides=strides,
                         padding=padding.lower() if isinstance(padding, str) else padding,
                         use_bias=use_bias,
                         kernel_initializer=kernel_initializer or original_kernel_initializer(),
                         **kwargs)
        self.norm, self.w_norm, self.orth = norm, w_norm, orth
        self.magnitude, self.rho, self.formulation = magnitude, rho, formulation
        self.k_value = self.radius = self.xnorm_moving_mean = None
        if self.data_format != "channels_last":
            raise ValueError(
                f"{name} supports data_format='channels_last' only (the patch norm sums over "
                f"the last axis). Received: data_format={self.data_format!r}. Transpose the "
                "input to NHWC instead.")
        if self.groups != 1 and self._is_spherical:
            raise ValueError(
                f"{name}: groups > 1 is not supported with norm={self.norm!r} / "
                f"w_norm={self.w_norm!r} (the patch norm spans all input channels). "
                f"Received: groups={self.groups}. Use groups=1.")

    @property
    def _is_spherical(self):
        return self.norm != "none" or self.w_norm != "none"

    def build(self, input_shape):
        super().build(input_shape)
        if self.orth:
            # The constraint is a function of the kernel alone: a regulariser of it, beside
            # the layer's own weight decay (`kernel_regularizer`, unchanged).
            self._kernel.regularizer = regularizers.OrthogonalityRegularizer(self.kernel_regularizer)
        if self.norm == "lr_sigmoid":
            self.k_value = self.add_weight(
                name="k_value", shape=(self.filters,), trainable=True, dtype=self.dtype,
                initializer=keras.initializers.Constant(formulas.LR_SIGMOID_K_INIT))
        decoupled.build(self)

    def computes_with(self):
        """The formulation this layer runs: the one place that decides.  'fast' and
        'original' are TensorFlow programs; outside TensorFlow it is 'portable'."""
        return self.formulation if keras.backend.backend() == "tensorflow" else "portable"

    def convolution_op(self, inputs, kernel):
        if not self._is_spherical:
            return super().convolution_op(inputs, kernel)
        inputs = ops.cast(inputs, self.compute_dtype)  # what autocasting would have done
        formulation = self.computes_with()
        k = formulas.effective_k(self.k_value) if self.norm == "lr_sigmoid" else None
        if formulation == "fast" and self.w_norm == "none" and self.dilation_rate == (1, 1):
            # one hand-differentiated op, float32 inside, the output in the input's dtype
            return sphere_ops.sphere_convolution(inputs, kernel, self.norm, k, self.strides,
                                                 self.padding)
        # Everything else: the formulas, float32 throughout, with each filter divided by a
        # power of two that brings its largest entry near 1 (`portable_ops.kernel_scale`):
        # the cosine keeps every bit, and neither x.W nor the norm's gradient can overflow
        # when inputs are large and filters large or small (docs/differences.md).
        inputs, kernel = ops.cast(inputs, "float32"), ops.cast(kernel, "float32")
        w_scale = portable_ops.kernel_scale(kernel)
        scaled = kernel / w_scale
        out = formulas.sphere_response(
            super().convolution_op(inputs, scaled), self.patch_norm(inputs),
            portable_ops.scaled_filter_norm(scaled, w_scale), self.norm, self.w_norm, k,
            w_scale=w_scale, original=formulation == "original")
        return ops.cast(out, self.compute_dtype)

    def patch_norm(self, inputs):
        """|x| of every patch this layer sees, [B, Ho, Wo, 1] float32."""
        args = (inputs, self.kernel_size, self.strides, self.padding, self.dilation_rate)
        formulation = self.computes_with()
        if formulation == "portable":
            return portable_ops.patch_norm(*args)
        return sphere_ops.patch_norm(*args, original=formulation == "original")

    def filter_norm(self, kernel):
        """|W| of every filter, [1, 1, 1, filters] float32."""
        return portable_ops.filter_norm(kernel)

    def orthogonality_loss(self):
        """The original's orthogonality loss of this layer's filter (a scalar tensor)."""
        return regularizers.orthogonality_loss(self.kernel)

    def call(self, inputs, training=None):
        if self.magnitude != "none":
            return decoupled.call(self, inputs, training, BN_MOMENTUM)
        return super().call(inputs)

    # Conv2D saves only kernel and bias; k_value (and the decoupled operators' radius and
    # moving mean) must travel too.
    def _saved_variables(self):
        extra = (self.k_value, self.radius, self.xnorm_moving_mean)
        return ([self._kernel] + ([self.bias] if self.use_bias else [])
                + [v for v in extra if v is not None])

    def save_own_variables(self, store):
        if not self.built:
            return
        for i, variable in enumerate(self._saved_variables()):
            store[str(i)] = self.kernel if variable is self._kernel else variable

    def load_own_variables(self, store):
        if not self.built:
            return
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer {self.name!r} ({type(self).__name__}, norm={self.norm!r}, "
                f"use_bias={self.use_bias}) expects {len(variables)} saved variables "
                f"({', '.join(v.name for v in variables)}), but the weights file has "
                f"{len(store.keys())}. The file was saved from a different layer configuration."
            )
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])

    def get_config(self):
        config = super().get_config()
        config.update({"norm": self.norm, "w_norm": self.w_norm, "orth": self.orth,
                       "magnitude": self.magnitude, "rho": self.rho})
        return config


def batch_norm(name):
    """The original's hand-written BN as a Keras layer.

    Moments over (N, H, W) with the biased variance, epsilon 1e-3, moving averages
    with decay 0.999 that both start at zero (the original averages tensors, so its
    moving variance starts at 0, not 1), and gamma/beta weight decay
    `5e-4 * l2_loss` (gamma is pulled towards 0, as in the original).  (TF's fused
    batch-norm kernel was measured slower than these unfused ops on the CPU, so the
    plain Keras layer is used.)
    """
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        moving_mean_initializer="zeros",
        moving_variance_initializer="zeros",
        gamma_regularizer=regularizers.L2Loss(regularizers.WEIGHT_DECAY),
        beta_regularizer=regularizers.L2Loss(regularizers.WEIGHT_DECAY),
        name=name,
    )


def conv_layer(
    x,
    kernel_size,
    filters,
    name,
    strides=1,
    bn=False,
    relu=True,
    padding="same",
    norm="none",
    reg=False,
    orth=False,
    w_norm="none",
    layer_class=None,
    **layer_options,
):
    """The original `_conv_layer`: SphereConv, then optional BN, then optional ReLU.

    Layer names follow the original scopes: the convolution is `name`, its BN
    `name_bn`, its ReLU `name_relu`.  `reg=True` adds the original's filter weight
    decay (5e-4 * l2_loss).  Arguments in the original's order and meaning.
    Beyond the original: `layer_class` replaces SphereConv2D by a subclass (e.g.
    `SphereNorm2D`) and `layer_options` (e.g. `magnitude='tanh'`) go to the layer.
    """
    y = (layer_class or SphereConv2D)(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        norm=norm,
        w_norm=w_norm,
        orth=orth,
        kernel_regularizer=regularizers.L2Loss(regularizers.WEIGHT_DECAY) if reg else None,
        name=name,
        **layer_options,
    )(x)
    if bn:
        y = batch_norm(f"{name}_bn")(y)
    if relu:
        y = keras.layers.ReLU(name=f"{name}_relu")(y)
    return y


def all_layers(model):
    """Every layer of a Keras model, those of nested models included, in model order."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def sphere_conv_layers(model):
    """Every SphereConv2D layer of a (possibly nested) Keras model, in model order."""
    return [layer for layer in all_layers(model) if isinstance(layer, SphereConv2D)]
