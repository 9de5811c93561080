"""A small SphereNet-9 with the same weights on every Keras backend, its training batch
and its first `model.fit` losses: what tests/backends/ and tests/test_backends.py
compare across backends.  NumPy weights (not the backend's random generator, which
differs between backends)."""

import keras
import numpy as np

from spherenet_tf.losses import Loss2
from spherenet_tf.models import build_cnn9


def small_spherenet(options=None):
    """A narrow SphereNet-9 with every kind of weight (lr_sigmoid k values, the
    orthogonality constraint, BN, a weight-decayed cosine score), NumPy-initialised."""
    model = build_cnn9(10, norm="lr_sigmoid", w_norm="cosine", reg=False, orth=True,
                       widths=(8, 8, 8), name="spherenet9", **(options or {}))
    rng = np.random.RandomState(0)
    for variable in model.trainable_variables:
        shape = tuple(variable.shape)
        if len(shape) == 4:  # filters: the original's N(0, sqrt(2 / fan_in))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:3]))
        elif variable.path.endswith("k_value"):
            value = rng.uniform(0.3, 1.0, shape)
        elif variable.path.endswith("gamma"):
            value = rng.uniform(0.8, 1.2, shape)
        else:
            value = rng.uniform(-0.1, 0.1, shape)
        variable.assign(value.astype(np.float32))
    for variable in model.non_trainable_variables:  # BN moving averages of a trained net
        low, high = (0.5, 1.5) if variable.path.endswith("moving_variance") else (-0.1, 0.1)
        variable.assign(rng.uniform(low, high, tuple(variable.shape)).astype(np.float32))
    return model


def fit_batch():
    """16 images 0..255 and labels."""
    rng = np.random.RandomState(0)
    return (rng.uniform(0, 255, (16, 32, 32, 3)).astype(np.float32),
            rng.randint(0, 10, 16).astype(np.int32))


def first_fit_losses(model, steps=3):
    """`model.fit` with Loss2 and Adam(1e-3) on one batch for `steps` epochs; the loss Keras
    reports per step (loss2 + weight decay + orthogonality, before that step's update)."""
    images, labels = fit_batch()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=Loss2())
    seen = []
    callback = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(float(logs["loss"])))
    model.fit(images, labels, batch_size=16, epochs=steps, verbose=0, callbacks=[callback],
              shuffle=False)
    return seen
