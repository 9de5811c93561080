"""The decoupled operators of SphereConv2D's `magnitude` option (beyond the original).

Liu, Liu, Yu, Dai, Lin, Wang, Rehg, Song, "Decoupled Networks", CVPR 2018
(arXiv:1804.08071), code wy1iu/DCNets: a convolution output written as h(|x|) g(theta),
a magnitude function of the patch norm (`portable_ops.magnitude_function`) times the
SphereConv's angular output.  This module holds what a layer with a magnitude adds: its
weights, its radius rho and its call.
"""

import keras
import numpy as np
from keras import ops

from .portable_ops import (MAGNITUDES_WITH_RHO, RHO_MODES, RHO_RADIUS_INIT, magnitude_function,
                           radius_to_rho_scale)


def validate_rho(layer_name, rho):
    """`rho` as 'batch_mean', 'learned' or a positive float, or a ValueError saying what
    was received."""
    if isinstance(rho, str) and rho in RHO_MODES:
        return rho
    if isinstance(rho, (int, float, np.floating, np.integer)) and not isinstance(rho, bool):
        if np.isfinite(rho) and rho > 0:
            return float(rho)
    raise ValueError(
        f"Invalid value for `rho` argument of {layer_name}. Allowed values are: "
        f"{', '.join(repr(m) for m in RHO_MODES)} or a positive number. Received: rho={rho!r}."
    )


def build(layer):
    """The learnable radius (one per filter) and, for 'batch_mean', the moving mean of the
    patch norms, when the layer's magnitude has a learnable rho."""
    if layer.magnitude not in MAGNITUDES_WITH_RHO or not isinstance(layer.rho, str):
        return
    layer.radius = layer.add_weight(
        name="radius", shape=(layer.filters,), initializer=keras.initializers.Constant(RHO_RADIUS_INIT),
        trainable=True, dtype=layer.dtype,
    )
    if layer.rho == "batch_mean":
        layer.xnorm_moving_mean = layer.add_weight(
            name="xnorm_moving_mean", shape=(), initializer="zeros", trainable=False, autocast=False,
        )


def call(layer, inputs, training, momentum):
    """h(|x|) * g(theta) (+ bias, activation) of a SphereConv2D with a magnitude."""
    angular = layer.convolution_op(inputs, layer.kernel)
    xnorm = layer.patch_norm(inputs)
    rho = _rho(layer, xnorm, training, momentum) if layer.magnitude in MAGNITUDES_WITH_RHO else None
    outputs = ops.cast(ops.cast(angular, "float32") * magnitude_function(xnorm, layer.magnitude, rho),
                       angular.dtype)
    if layer.use_bias:
        outputs = outputs + ops.cast(layer.bias, outputs.dtype)
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


def _rho(layer, xnorm, training, momentum):
    if not isinstance(layer.rho, str):
        return ops.convert_to_tensor(layer.rho, "float32")
    scale = radius_to_rho_scale(ops.cast(layer.radius, "float32"))
    if layer.rho == "learned":
        return scale
    if training and layer.trainable:
        mean = ops.mean(xnorm)
        # The moving average of DCNets' `xnorm_batch_norm`, with the BN weights.
        layer.xnorm_moving_mean.assign(
            layer.xnorm_moving_mean * momentum + ops.stop_gradient(mean) * (1.0 - momentum))
    else:
        mean = ops.convert_to_tensor(layer.xnorm_moving_mean)
    return scale * mean
