"""SphereConv2D, the hyperspherical convolution, as a Keras 3 layer.

Ports `_conv_layer` of the original `spherenet.py` / `sphere_resnet_v1.py`
(wy1iu/SphereNet): "Deep Hyperspherical Learning", Liu et al., NIPS 2017
(arXiv:1711.03189), section 2.  The arithmetic lives in `sphere_ops`; this module
adds the Keras contract (validated options, weights, losses, serialisation) and the
`conv_layer` helper that mirrors the original's conv -> BN -> ReLU block.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from . import portable_ops, regularizers, sphere_ops
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


#: `formulation` values of a layer: those of `sphere_ops` (TensorFlow) and 'portable'
#: (`portable_ops`: keras.ops, what every other backend runs; selectable on TF for tests).
LAYER_FORMULATIONS = sphere_ops.FORMULATIONS + ("portable",)


def uses_portable_ops(formulation):
    """Whether a layer computes with `portable_ops`: always outside TensorFlow (the
    'fast' and 'original' formulations are TF programs), or when asked for."""
    return formulation == "portable" or keras.backend.backend() != "tensorflow"


def original_kernel_initializer():
    """N(0, sqrt(2 / (k*k*C_in))), not truncated: the original's filter initialiser."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="untruncated_normal"
    )


@keras.saving.register_keras_serializable(package="SphereNet")
class SphereConv2D(keras.layers.Conv2D):
    """2D hyperspherical convolution (SphereConv).

    Each output is g(theta) where theta is the angle between the input patch and
    the filter, instead of the inner product |w||x|cos(theta) of a convolution.
    The choice of g is `norm`; `w_norm` gives weight-normalised scores
    |x| g(theta) (meant for the classifier layer, with `norm='none'`).

    Reference: W. Liu, Y.-M. Zhang, X. Li, Z. Yu, B. Dai, T. Zhao, L. Song,
    "Deep Hyperspherical Learning", NIPS 2017, arXiv:1711.03189.  Ports
    `_conv_layer` of the original TF1 code (wy1iu/SphereNet); the patch norm uses
    the convolution's stride and padding (the original `spherenet.py` did not, and
    failed for stride 2).

    Args:
      filters: number of output channels (C_out).
      kernel_size: int or pair, the window k.
      strides: int or pair.
      padding: 'same' or 'valid' (case-insensitive; the original wrote 'SAME').
      norm: angular function of the SphereConv: 'none' (a plain convolution),
        'linear' (1 - 0.63662 theta), 'cosine' (cos theta), 'sigmoid' (k = 0.3) or
        'lr_sigmoid' (learnable per-filter k, initialised to 0.7, used as |k|+0.05).
      w_norm: weight-normalised score: 'none', 'cosine' (|x| cos theta = x.w/|w|,
        the weight-normalised softmax logit), 'linear' or 'sigmoid'
        (|x| g(theta), the generalised angular softmax logit).  Applied before
        `norm`, as in the original.
      magnitude: beyond the original: the decoupled operator h(|x|) * g(theta)
        of "Decoupled Networks" (Liu et al., CVPR 2018; code wy1iu/DCNets), with
        g the `norm` above and h: 'none' (SphereConv, h = 1, the default),
        'ball' (min(|x|/rho, 1)), 'tanh' (tanh(|x|/rho)), 'linear' (|x|),
        'seg' (|x| below rho, 0.5|x| + 0.5 rho above) or 'log' (log(1 + |x|)).
        Needs `norm` other than 'none'.
      rho: the radius of 'ball', 'tanh' and 'seg': 'batch_mean' (DCNets' default:
        (r^2 + 1e-4) * mean |x|, with r a learnable weight per filter initialised
        to 1 and mean |x| the patch-norm mean of the batch in training, its moving
        average (decay 0.999, from zero) in inference), 'learned' ((r^2 + 1e-4)
        alone) or a positive number (fixed).
      orth: add the original's orthogonality loss 2e-4 * l2_loss(W^T W - I) to the
        layer's losses.  It is also available on its own as `orthogonality_loss()`
        so a training loop can report it apart from weight decay.
      formulation: 'fast' (default: the port's exact rewrites, see `sphere_ops`),
        'original' (the original's order of arithmetic: a ones-kernel patch norm,
        `conv / |x| / |W|` and autodiff; slower, for comparisons with the original)
        or 'portable' (`portable_ops`, keras.ops and autodiff).  The three agree to
        the last bits.  'fast' and 'original' are TensorFlow programs: under the JAX
        and PyTorch backends every layer computes with 'portable'.
      use_bias: default False: the original has no bias anywhere.
      kernel_initializer: default N(0, sqrt(2/(k*k*C_in))), the original's.
      **kwargs: anything `keras.layers.Conv2D` accepts (`kernel_regularizer`,
        `kernel_constraint`, `activation`, `dilation_rate`, `name`, `dtype`, ...).

    Weights: `kernel` [k, k, C_in, filters], then for 'lr_sigmoid' `k_value`
    [filters]; for `magnitude` 'ball'/'tanh'/'seg' with a learnable rho, `radius`
    [filters] and (rho='batch_mean') the non-trainable `xnorm_moving_mean` [].

    Input shape: [batch, H, W, C_in] (channels_last).
    Output shape: [batch, H_out, W_out, filters].

    Example:

    >>> layer = SphereConv2D(64, 3, norm="linear", orth=True)
    >>> y = layer(keras.random.normal((2, 32, 32, 3)))  # values in [-1, 1]
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        norm="cosine",
        w_norm="none",
        orth=False,
        use_bias=False,
        kernel_initializer=None,
        magnitude="none",
        rho="batch_mean",
        formulation="fast",
        **kwargs,
    ):
        name = type(self).__name__
        formulation = validate_option(name, "formulation", formulation, LAYER_FORMULATIONS)
        norm = validate_option(name, "norm", norm, sphere_ops.NORMS)
        w_norm = validate_option(name, "w_norm", w_norm, sphere_ops.W_NORMS)
        magnitude = validate_option(name, "magnitude", magnitude, sphere_ops.MAGNITUDES)
        rho = _validate_rho(name, rho)
        if magnitude != "none" and norm == "none":
            raise ValueError(
                f"{name}: magnitude={magnitude!r} multiplies the angular output g(theta), "
                f"so it needs an angular `norm`. Received: norm='none'. Use e.g. "
                f"norm='cosine' (DCNets' TanhConv + cosine is magnitude='tanh', norm='cosine')."
            )
        if not isinstance(orth, bool):
            raise ValueError(
                f"Invalid value for `orth` argument of {name}: expected True or False. "
                f"Received: orth={orth!r}."
            )
        if isinstance(padding, str):
            padding = padding.lower()
        if norm != "none" or w_norm != "none":
            kwargs["dtype"] = _no_float16_compute(kwargs.get("dtype"))
            # The kernel reaches `convolution_op` as the float32 variable, not a bfloat16
            # copy: the angle between a patch and a filter it matches is lost at 8 bits
            # (docs/differences.md, "mixed precision").  Inputs are cast there instead.
            kwargs["autocast"] = False
        if kernel_initializer is None:
            kernel_initializer = original_kernel_initializer()
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            **kwargs,
        )
        self.norm = norm
        self.w_norm = w_norm
        self.orth = orth
        self.magnitude = magnitude
        self.rho = rho
        self.formulation = formulation
        self.radius = None
        self.xnorm_moving_mean = None
        if self.data_format != "channels_last":
            raise ValueError(
                f"{name} supports data_format='channels_last' only (the patch norm sums "
                f"over the last axis). Received: data_format={self.data_format!r}. "
                "Transpose the input to NHWC instead."
            )
        if self.groups != 1 and self._is_spherical:
            raise ValueError(
                f"{name}: groups > 1 is not supported with norm={self.norm!r} / "
                f"w_norm={self.w_norm!r} (the patch norm spans all input channels). "
                f"Received: groups={self.groups}. Use groups=1."
            )
        self.k_value = None

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
                name="k_value",
                shape=(self.filters,),
                initializer=keras.initializers.Constant(sphere_ops.LR_SIGMOID_K_INIT),
                trainable=True,
                dtype=self.dtype,
            )
        if self.magnitude in sphere_ops.MAGNITUDES_WITH_RHO and isinstance(self.rho, str):
            self.radius = self.add_weight(
                name="radius",
                shape=(self.filters,),
                initializer=keras.initializers.Constant(sphere_ops.RHO_RADIUS_INIT),
                trainable=True,
                dtype=self.dtype,
            )
            if self.rho == "batch_mean":
                self.xnorm_moving_mean = self.add_weight(
                    name="xnorm_moving_mean", shape=(), initializer="zeros",
                    trainable=False, autocast=False,
                )

    def convolution_op(self, inputs, kernel):
        if not self._is_spherical:
            return super().convolution_op(inputs, kernel)
        # What autocasting would have done to the inputs (it is off for this layer, so
        # that `kernel` is the float32 variable): the compute dtype, e.g. bfloat16.
        inputs = ops.cast(inputs, self.compute_dtype)
        if uses_portable_ops(self.formulation):
            return ops.cast(self._portable_convolution(ops.cast(inputs, "float32"), kernel),
                            self.compute_dtype)
        original = self.formulation == "original"
        if self.w_norm == "none" and not original and self.dilation_rate == (1, 1):
            # One op, float32 inside, the output in the input's dtype.
            return sphere_ops.sphere_convolution(inputs, kernel, self.norm, self._effective_k(),
                                                 self.strides, self.padding)
        # The other formulations compute in float32 throughout (inputs exactly widened).
        out = self._spherical_convolution(ops.cast(inputs, "float32"), ops.cast(kernel, "float32"),
                                          original)
        return ops.cast(out, self.compute_dtype)

    def _spherical_convolution(self, inputs, kernel, original):
        """`w_norm`, the original's order of arithmetic, dilation: float32 throughout."""
        if self.w_norm == "none" and not original:
            return self._unit_filter_convolution(inputs, kernel)
        # The convolution and the filter norm use the filter rescaled by a power of two
        # to max|W| ~ 1 (`sphere_ops.kernel_scale`): the cosine keeps every bit, and
        # neither x.W nor the norm's gradient can overflow when inputs are large and
        # filters large or small (docs/differences.md).
        w_scale = sphere_ops.kernel_scale(kernel)
        scaled_kernel = kernel / w_scale
        conv = super().convolution_op(inputs, scaled_kernel)
        xnorm = sphere_ops.patch_norm(
            inputs, self.kernel_size, self.strides, self.padding, self.dilation_rate, original
        )
        wnorm = sphere_ops.scaled_filter_norm(scaled_kernel, w_scale)
        return sphere_ops.sphere_response(conv, xnorm, wnorm, self.norm, self.w_norm,
                                          self._effective_k(), w_scale=w_scale, original=original)

    def _unit_filter_convolution(self, inputs, kernel):
        """A `norm` without `w_norm` at dilation > 1: g(conv(x, W / |W|) / |x|).

        conv(x, W) / |W| = conv(x, W / |W|) because |W| is one number per output channel,
        so dividing the (small) kernel replaces a division of the (large) output.  Unit-norm
        filters also keep x.W finite for any filter magnitude (docs/differences.md).
        """
        conv = super().convolution_op(inputs, sphere_ops.unit_filters(kernel))
        xnorm = sphere_ops.patch_norm(
            inputs, self.kernel_size, self.strides, self.padding, self.dilation_rate
        )
        return sphere_ops.unit_filter_response(conv, xnorm, self.norm, self._effective_k())

    def _effective_k(self):
        """|k| + 0.05 of `lr_sigmoid` (float32), else None."""
        if self.norm != "lr_sigmoid":
            return None
        return ops.abs(ops.cast(self.k_value, "float32")) + sphere_ops.LR_SIGMOID_K_OFFSET

    def _portable_convolution(self, inputs, kernel):
        """The SphereConv in keras.ops (`portable_ops`): every backend, autodiff."""
        w_scale = portable_ops.kernel_scale(kernel)
        scaled_kernel = kernel / w_scale
        conv = super().convolution_op(inputs, scaled_kernel)
        xnorm = portable_ops.patch_norm(inputs, self.kernel_size, self.strides, self.padding,
                                        self.dilation_rate)
        w_scale = ops.cast(w_scale, "float32")
        wnorm = portable_ops.scaled_filter_norm(scaled_kernel, w_scale)
        out = portable_ops.sphere_response(ops.cast(conv, "float32"), xnorm, wnorm, self.norm,
                                           self.w_norm, self._effective_k(), w_scale=w_scale)
        return ops.cast(out, conv.dtype)

    def patch_norm(self, inputs):
        """|x| of every patch this layer sees, [B, Ho, Wo, 1] float32."""
        ops_module = portable_ops if uses_portable_ops(self.formulation) else sphere_ops
        return ops_module.patch_norm(inputs, self.kernel_size, self.strides, self.padding,
                                     self.dilation_rate)

    def filter_norm(self, kernel):
        """|W| of every filter, [1, 1, 1, filters] float32."""
        ops_module = portable_ops if uses_portable_ops(self.formulation) else sphere_ops
        return ops_module.filter_norm(kernel)

    def orthogonality_loss(self):
        """The original's orthogonality loss of this layer's filter (a scalar tensor)."""
        return regularizers.orthogonality_loss(self.kernel)

    def call(self, inputs, training=None):
        if self.magnitude != "none":
            return self._decoupled_call(inputs, training)
        return super().call(inputs)

    def _decoupled_call(self, inputs, training):
        """h(|x|) * g(theta) (+ bias, activation): the `magnitude` path only."""
        angular = self.convolution_op(inputs, self.kernel)
        xnorm = self.patch_norm(inputs)
        rho = self._rho(xnorm, training) if self.magnitude in sphere_ops.MAGNITUDES_WITH_RHO else None
        h = portable_ops.magnitude_function(xnorm, self.magnitude, rho)
        outputs = ops.cast(ops.cast(angular, "float32") * h, angular.dtype)
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, outputs.dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _rho(self, xnorm, training):
        if not isinstance(self.rho, str):
            return ops.convert_to_tensor(self.rho, "float32")
        scale = portable_ops.radius_to_rho_scale(ops.cast(self.radius, "float32"))
        if self.rho == "learned":
            return scale
        if training and self.trainable:
            mean = ops.mean(xnorm)
            # The moving average of DCNets' `xnorm_batch_norm`, with the BN weights.
            self.xnorm_moving_mean.assign(
                self.xnorm_moving_mean * BN_MOMENTUM + ops.stop_gradient(mean) * (1.0 - BN_MOMENTUM)
            )
        else:
            mean = ops.convert_to_tensor(self.xnorm_moving_mean)
        return scale * mean

    # Conv2D saves only kernel and bias; k_value (and the decoupled operators'
    # radius and moving mean) must travel too.
    def _saved_variables(self):
        variables = [self._kernel]
        if self.use_bias:
            variables.append(self.bias)
        if self.k_value is not None:
            variables.append(self.k_value)
        for extra in (self.radius, self.xnorm_moving_mean):
            if extra is not None:
                variables.append(extra)
        return variables

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
                       "magnitude": self.magnitude, "rho": self.rho,
                       "formulation": self.formulation})
        return config


def _validate_rho(layer_name, rho):
    if isinstance(rho, str) and rho in sphere_ops.RHO_MODES:
        return rho
    if isinstance(rho, (int, float, np.floating, np.integer)) and not isinstance(rho, bool):
        if np.isfinite(rho) and rho > 0:
            return float(rho)
    raise ValueError(
        f"Invalid value for `rho` argument of {layer_name}. Allowed values are: "
        f"{', '.join(repr(m) for m in sphere_ops.RHO_MODES)} or a positive number. "
        f"Received: rho={rho!r}."
    )


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
