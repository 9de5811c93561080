"""NaN / Inf in training: the per-step guard and the diagnosis of where it came from.

The original applies a NaN update and goes on printing `nan`; the port does not apply
such a step and stops at the next log line or checkpoint, naming the iteration, the
values and the first layer concerned (docs/differences.md).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from ..regularizers import regularization_parts, variable_terms


def nonfinite_flag(fit, reg, orth, grads, loss_scaled):
    """1.0 if this replica's loss terms, or (without loss scaling) any gradient, hold
    NaN/Inf, else 0.0.  With loss scaling, LossScaleOptimizer handles overflowing
    gradients itself (it skips the step and lowers the scale)."""
    ok = tf.reduce_all(tf.math.is_finite(tf.stack([fit, reg, orth])))
    if not loss_scaled:
        ok = tf.logical_and(ok, tf.reduce_all(
            tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])))
    return 1.0 - tf.cast(ok, tf.float32)


def first_nonfinite_layer(model, images=None):
    """Name of the first layer (in model order) whose weights, or else whose output on
    `images`, contain NaN or Inf; None if everything is finite."""
    for layer in model.layers:
        for w in layer.weights:
            if not np.all(np.isfinite(w.numpy())):
                return f"{layer.name} (its weight {w.name!r} holds NaN/Inf)"
    if images is not None:
        outputs = [layer.output for layer in model.layers[1:]]
        probe = keras.Model(model.inputs, outputs)
        for layer, value in zip(model.layers[1:], probe(images, training=False)):
            if not np.all(np.isfinite(np.asarray(value))):
                return f"{layer.name} (its inference output on the step's batch is NaN/Inf)"
    return None


def nonfinite_source(model, fit, reg, orth, images=None):
    """Best guess of where a NaN/Inf loss came from, as text.

    In this order: the first layer (model order) whose weights hold NaN/Inf (BN moving
    averages included: a non-finite forward pass updates them right after its
    source); for a non-finite `reg` or `orth`, the first variable whose weight decay
    or orthogonality loss overflows; the first layer whose inference output on
    `images` (the batch of the step) is not finite.
    """
    found = first_nonfinite_layer(model)
    if found:
        return found
    if not math.isfinite(reg):
        for variable in model.trainable_variables:
            decay = variable_terms(variable)[0]
            if decay is not None and not np.isfinite(float(decay)):
                return f"{variable.path} (its weight decay overflows: weights too large, lower --lr)"
    if not math.isfinite(orth):
        for variable, term in regularization_parts(model)[1]:
            if not np.isfinite(float(term)):
                layer = variable.path.rsplit("/", 1)[0]
                return f"{layer} (its orthogonality loss overflows: filters too large, lower --lr)"
    found = first_nonfinite_layer(model, images) if images is not None else None
    if found:
        return found
    return ("none of the layers' weights or inference outputs: the overflow is in the "
            "training-mode forward pass, the loss or the gradients")
