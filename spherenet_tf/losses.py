"""`loss2`, the original's label-smoothed cross entropy (ports `loss.py`).

    p = softmax(logits) + 1e-4
    t = 0.99 * onehot(label) + 0.01 / n_class
    loss = mean over the batch of -sum_j t_j log p_j

This is not Keras's `label_smoothing` (which smooths with 1/n_class and has no
1e-4 inside the log); the 1e-4 also caps the loss of a hopeless sample at about
-log(1e-4) = 9.21, which matters for the original's extreme early eval logits.
"""

import keras
from keras import ops

#: Added to the softmax before the log.
SOFTMAX_EPS = 1e-4
#: Label smoothing of the original (`eps = 1e-2`).
LABEL_SMOOTHING = 1e-2


def loss2_per_example(labels, logits, n_class=None):
    """Per-example loss2, shape [B]; `logits` [B, n_class] or [B, 1, 1, n_class]."""
    logits = ops.cast(logits, "float32")
    n_class = n_class or logits.shape[-1]
    logits = ops.reshape(logits, (-1, n_class))
    p = ops.softmax(logits, axis=-1) + SOFTMAX_EPS
    onehot = ops.one_hot(ops.reshape(ops.cast(labels, "int32"), (-1,)), n_class, dtype="float32")
    target = (1.0 - LABEL_SMOOTHING) * onehot + LABEL_SMOOTHING / n_class
    return -ops.sum(target * ops.log(p), axis=1)


def loss2(logits, labels, n_class=None):
    """The original `loss2(logits, labels, num_classes, scope)`: mean of the per-example loss."""
    return ops.mean(loss2_per_example(labels, logits, n_class))


@keras.saving.register_keras_serializable(package="SphereNet")
class Loss2(keras.losses.Loss):
    """loss2 as a Keras loss: `model.compile(loss=Loss2())`, integer labels.

    With the default reduction ('sum_over_batch_size') the value equals the
    original's batch mean.
    """

    def __init__(self, reduction="sum_over_batch_size", name="loss2", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return loss2_per_example(y_true, y_pred)

    def get_config(self):
        return super().get_config()
