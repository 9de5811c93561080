"""spherenet_tf/training/schedule.py: the original's learning-rate drops and Adam."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from spherenet_tf import training
from spherenet_tf.training import OriginalSchedule


def test_lr_schedule_matches_the_originals_indexing():
    schedule = OriginalSchedule(1e-3)
    expected = {0: 1e-3, 33999: 1e-3, 34000: 1e-4, 53999: 1e-4, 54000: 1e-5, 64000: 1e-5}
    for i, lr in expected.items():
        assert schedule.at(i) == pytest.approx(lr, rel=1e-12)
        assert float(schedule(i)) == pytest.approx(lr, rel=1e-6)
    # through Keras: the optimizer evaluates the schedule at `iterations`, which is i
    # while step i runs (the original divides before running step 34000)
    opt = keras.optimizers.Adam(learning_rate=schedule, **training.ADAM)
    for i, lr in expected.items():
        opt.iterations.assign(i)
        assert float(opt.learning_rate) == pytest.approx(lr, rel=1e-6)
    assert float(opt.epsilon) == 1e-8 and (opt.beta_1, opt.beta_2) == (0.9, 0.999)


def test_one_adam_step_uses_the_scheduled_lr():
    schedule = OriginalSchedule(1e-3)
    opt = keras.optimizers.Adam(learning_rate=schedule, **training.ADAM)
    w = tf.Variable([1.0, -2.0])
    opt.build([w])
    for i, lr in [(33999, 1e-3), (34000, 1e-4), (54000, 1e-5)]:
        w.assign([1.0, -2.0])
        opt.iterations.assign(i)
        for slot in opt.variables[1:]:
            slot.assign(tf.zeros_like(slot))
        opt.apply_gradients([(tf.constant([0.5, -0.5]), w)])
        t = i + 1  # Adam's bias correction uses the step count
        step = lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * 0.05 / (np.sqrt(0.00025) + 1e-8)
        np.testing.assert_allclose(w.numpy(), [1.0 - step, -2.0 + step], rtol=1e-5)
