"""Checkpoints in the original's format, written the way the original wrote them.

The original saved with `tf.train.Saver().save(sess, model_file + str(i))` in a TF1
graph.  These helpers do the same with `tf.compat.v1` in a private graph, so the tests
can make checkpoints of every model and layout without the original's training runs.
"""

import numpy as np
import tensorflow as tf


def write_tf1_checkpoint(prefix, values):
    """Save {TF1 name: array} with a `tf.compat.v1.train.Saver` (V2 format, as the
    original's TF >= 0.12 wrote it); returns the prefix."""
    with tf.Graph().as_default():
        feeds, variables = {}, {}
        for i, (name, value) in enumerate(values.items()):
            value = np.asarray(value)
            ph = tf.compat.v1.placeholder(value.dtype, value.shape)
            feeds[ph] = value
            variables[name] = tf.compat.v1.Variable(ph, name=f"var{i}")
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer(), feeds)
            return saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)


def tf1_adam_powers(steps):
    """(beta1_power, beta2_power) of a real `tf.compat.v1.train.AdamOptimizer` (the
    original's optimizer, default betas) after `steps` steps."""
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, -2.0], name="w")
        optimizer = tf.compat.v1.train.AdamOptimizer(1e-3)
        train = optimizer.minimize(tf.reduce_sum(w * w))
        beta1_power, beta2_power = optimizer._get_beta_accumulators()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(steps):
                sess.run(train)
            b1, b2 = sess.run([beta1_power, beta2_power])
    return np.float32(b1), np.float32(b2)


def distinct_values(shapes, seed=0):
    """{name: float32 array}: a different random array for every name."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}
