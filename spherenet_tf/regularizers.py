"""Weight decay and the orthogonality constraint, with the original's scales.

The original regularises with `tf.contrib.layers.l2_regularizer(5e-4)`, which is
`5e-4 * tf.nn.l2_loss(w)` and `tf.nn.l2_loss(w) = sum(w**2) / 2`: the effective
coefficient is 2.5e-4, not Keras's `L2(5e-4)`.  `L2Loss` keeps the original's
number and the halving in one place.

`orthogonality_loss` is the original `_add_orthogonal_constraint`:
`2e-4 * l2_loss(W^T W - I)` with `W` the filter reshaped to [-1, C_out].
"""

import keras
import tensorflow as tf

#: Weight decay of every regularised variable in the original (`self.wd = 5e-4`).
WEIGHT_DECAY = 5e-4
#: Scale of the orthogonality constraint in the original.
ORTH_SCALE = 2e-4


def l2_loss(t):
    """`tf.nn.l2_loss`: sum(t**2) / 2 (the factor the original's regularisers carry)."""
    return tf.nn.l2_loss(t)


@keras.saving.register_keras_serializable(package="SphereNet")
class L2Loss(keras.regularizers.Regularizer):
    """`scale * sum(w**2) / 2`, i.e. the original's `l2_regularizer(scale)`.

    Args:
      scale: the original's weight decay (5e-4 everywhere in SphereNet).  Keras's
        `L2(scale / 2)` gives the same value.
    """

    def __init__(self, scale=WEIGHT_DECAY):
        scale = float(scale)
        if not scale >= 0.0:
            raise ValueError(
                f"L2Loss: `scale` must be a non-negative number. Received: scale={scale!r}"
            )
        self.scale = scale

    def __call__(self, x):
        return self.scale * l2_loss(tf.cast(x, tf.float32))

    def get_config(self):
        return {"scale": self.scale}


def orthogonality_loss(kernel, scale=ORTH_SCALE):
    """The original orthogonality constraint, `scale * l2_loss(W^T W - I)`.

    `W` is the raw (not normalised) filter reshaped to [k*k*C_in, C_out].  The term
    is applied even where W^T W = I is impossible (more filters than rows, e.g.
    conv1_0 with 27 rows and 128 filters), exactly as the original does.  Its gradient,
    2 * scale * W (W^T W - I), is written out: one matrix product instead of autodiff's
    two (the products are the cost of this term: about 5 GFLOP per SphereNet-9 step).
    """
    kernel = tf.cast(kernel, tf.float32)
    n_filt = kernel.shape[-1]
    return _orthogonality(tf.reshape(kernel, [-1, n_filt]), float(scale))


@tf.custom_gradient
def _orthogonality_unscaled(w):
    gram_minus_i = tf.matmul(w, w, transpose_a=True) - tf.eye(tf.shape(w)[1], dtype=w.dtype)

    def grad(dy):
        return (2.0 * dy) * tf.matmul(w, gram_minus_i)

    return l2_loss(gram_minus_i), grad


def _orthogonality(w, scale):
    return scale * _orthogonality_unscaled(w)
