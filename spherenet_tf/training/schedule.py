"""The optimiser and learning-rate schedule of the original training scripts.

`tf.train.AdamOptimizer(lr)` with TF1's defaults, and `lr = lr / 10` when
`i == 34000` and again when `i == 54000` (wy1iu/SphereNet `train_spherenet.py`).
"""

import keras
import tensorflow as tf

#: Adam of the original (tf.train.AdamOptimizer defaults; Keras's epsilon is 1e-7).
ADAM = dict(beta_1=0.9, beta_2=0.999, epsilon=1e-8)
#: Iterations from which the learning rate is divided by 10 (the original's `i == 34000`).
LR_BOUNDARIES = (34000, 54000)


@keras.saving.register_keras_serializable(package="SphereNet")
class OriginalSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr for iterations < 34000, lr/10 from 34000, lr/100 from 54000.

    The original sets `lr = lr/10` when `i == 34000`, before running step i; Keras
    evaluates the schedule at `optimizer.iterations`, which is i during step i.  The
    values are computed in Python floats as the original's (`1e-3/10/10`).
    """

    def __init__(self, lr=1e-3, boundaries=LR_BOUNDARIES):
        self.lr = float(lr)
        self.boundaries = tuple(int(b) for b in boundaries)

    def values(self):
        out = [self.lr]
        for _ in self.boundaries:
            out.append(out[-1] / 10)
        return out

    def __call__(self, step):
        values = self.values()
        step = tf.cast(step, tf.int64)
        lr = tf.constant(values[0], tf.float32)
        for boundary, value in zip(self.boundaries, values[1:]):
            lr = tf.where(step >= boundary, tf.constant(value, tf.float32), lr)
        return lr

    def at(self, iteration):
        """The learning rate of iteration `iteration` as a Python float."""
        values = self.values()
        return values[sum(iteration >= b for b in self.boundaries)]

    def get_config(self):
        return {"lr": self.lr, "boundaries": list(self.boundaries)}


def original_adam(schedule, loss_scaling=False):
    """The original's Adam on `schedule`; wrapped for loss scaling under float16."""
    optimizer = keras.optimizers.Adam(learning_rate=schedule, **ADAM)
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scaling else optimizer
