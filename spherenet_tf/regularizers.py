"""Weight decay and the orthogonality constraint, with the original's scales.

The original regularises with `tf.contrib.layers.l2_regularizer(5e-4)`, which is
`5e-4 * tf.nn.l2_loss(w)` and `tf.nn.l2_loss(w) = sum(w**2) / 2`: the effective
coefficient is 2.5e-4, not Keras's `L2(5e-4)`.  `L2Loss` keeps the original's
number and the halving in one place.

`orthogonality_loss` is the original `_add_orthogonal_constraint`:
`2e-4 * l2_loss(W^T W - I)` with `W` the filter reshaped to [-1, C_out].  A SphereConv2D
with `orth=True` gives its kernel an `OrthogonalityRegularizer`, so the constraint is
one of the layer's (and the model's) `losses`, as any Keras regulariser; the training
loop reports it apart from weight decay (`regularization_terms`), as the original's
log lines do (`reg=`, `orth=`).
"""

import keras
import tensorflow as tf
from keras import ops

#: Weight decay of every regularised variable in the original (`self.wd = 5e-4`).
WEIGHT_DECAY = 5e-4
#: Scale of the orthogonality constraint in the original.
ORTH_SCALE = 2e-4


def l2_loss(t):
    """`tf.nn.l2_loss`: sum(t**2) / 2 (the factor the original's regularisers carry).
    TensorFlow's own kernel on TensorFlow, keras.ops on the other backends."""
    if keras.backend.backend() == "tensorflow":
        return tf.nn.l2_loss(t)
    return ops.sum(ops.square(t)) / 2.0


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
        return self.scale * l2_loss(ops.cast(x, "float32"))

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
    kernel = ops.cast(kernel, "float32")
    w = ops.reshape(kernel, (-1, kernel.shape[-1]))
    if keras.backend.backend() != "tensorflow":
        # keras.ops and autodiff on the other backends (same value, autodiff gradient)
        n_filt = kernel.shape[-1]
        gram_minus_i = ops.matmul(ops.transpose(w), w) - ops.eye(n_filt, dtype="float32")
        return float(scale) * l2_loss(gram_minus_i)
    return _orthogonality(w, float(scale))


@tf.custom_gradient
def _orthogonality_unscaled(w):
    gram_minus_i = tf.matmul(w, w, transpose_a=True) - tf.eye(tf.shape(w)[1], dtype=w.dtype)

    def grad(dy):
        # dy scales the small [C_out, C_out] factor before the product, so the product
        # depends on dy: the executor cannot compute it (a kernel-sized tensor per
        # layer) right after the forward pass and keep it until the backward pass.
        return tf.matmul(w, (2.0 * dy) * gram_minus_i)

    return l2_loss(gram_minus_i), grad


def _orthogonality(w, scale):
    return scale * _orthogonality_unscaled(w)


@keras.saving.register_keras_serializable(package="SphereNet")
class OrthogonalityRegularizer(keras.regularizers.Regularizer):
    """The kernel regulariser of a SphereConv2D with `orth=True`: the layer's own weight
    decay (`weight_decay`, e.g. `L2Loss`, or None) plus the orthogonality constraint.

    `terms(w)` gives the two apart, so that a training loop can report them as the
    original does (`reg=` and `orth=`); calling it gives their sum, which is what
    `layer.losses` and `model.fit` see.
    """

    def __init__(self, weight_decay=None, scale=ORTH_SCALE):
        self.weight_decay = keras.regularizers.get(weight_decay)
        self.scale = float(scale)

    def terms(self, x):
        """(weight decay or None, orthogonality loss) of the kernel `x`."""
        decay = self.weight_decay(x) if self.weight_decay is not None else None
        return decay, orthogonality_loss(x, self.scale)

    def __call__(self, x):
        decay, orth = self.terms(x)
        return orth if decay is None else decay + orth

    def get_config(self):
        return {"weight_decay": keras.regularizers.serialize(self.weight_decay), "scale": self.scale}


def variable_terms(variable):
    """(weight decay, orthogonality term) of one variable's regulariser, None for a
    term it does not have."""
    regularizer = getattr(variable, "regularizer", None)
    if regularizer is None:
        return None, None
    if isinstance(regularizer, OrthogonalityRegularizer):
        return regularizer.terms(variable)
    return regularizer(variable), None


def regularization_parts(model):
    """([weight-decay terms], [(variable, orthogonality term)]) of every trainable
    variable of `model`, in variable order."""
    decay, orth = [], []
    for variable in model.trainable_variables:
        d, o = variable_terms(variable)
        if d is not None:
            decay.append(d)
        if o is not None:
            orth.append((variable, o))
    return decay, orth


def weight_decay_losses(model):
    """The weight-decay terms of every trainable variable (the original's `reg`)."""
    return regularization_parts(model)[0]


def orthogonality_losses(model):
    """The orthogonality loss of every SphereConv2D with orth=True, as a list of scalars."""
    return [term for _, term in regularization_parts(model)[1]]


def regularization_terms(model):
    """(reg, orth) of a model as the original reports them: the sum of all weight
    decay terms and the sum of all orthogonality constraints (0.0 when none)."""
    decay, orth = regularization_parts(model)
    return _total(decay), _total([o for _, o in orth])


def _total(terms):
    """The sum of scalar terms (0.0 for none): `tf.add_n` on TensorFlow, keras.ops elsewhere."""
    if not terms:
        return ops.convert_to_tensor(0.0, "float32")
    if keras.backend.backend() == "tensorflow":
        return tf.add_n(terms)
    return ops.sum(ops.stack(terms))


def has_orthogonality(model):
    """Whether any variable of `model` carries the orthogonality constraint."""
    return any(isinstance(getattr(v, "regularizer", None), OrthogonalityRegularizer)
               for v in model.trainable_variables)
