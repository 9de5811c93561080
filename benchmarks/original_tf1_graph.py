"""Training throughput of the port against the original's TF1 graph, side by side.

    python benchmarks/original_tf1_graph.py [--batch 128] [--steps 10] [--norm cosine]

The original graph is rebuilt here in TF1 style (tf.compat.v1, graph mode, a Session)
from the facts of REFERENCE.md, as a second implementation of the same network:
SphereConv with the ones-kernel patch-norm convolution and autodiff through the
divisions and acos, the hand-written BatchNorm (tf.nn.moments, an
ExponentialMovingAverage applied under tf.cond on an is_training placeholder),
orthogonality terms collected per layer, l2 weight decay, loss2, and
tf.compat.v1.train.AdamOptimizer(lr placeholder).minimize.  Each step is one
`sess.run` fetching fit, reg, orth, acc and the update, as the original loop does.

The port's step is the training loop's own compiled step (`ClassificationTask.train_step` on its
tf.data stream), timed with the values fetched every step too.  Both run in this
process; steps alternate between the two (median of the repetitions).
"""

import argparse
import math
import os
import statistics
import tempfile
import time

import common  # noqa: F401  (quiet TF logs)
import numpy as np
import tensorflow as tf


def build_original_graph(batch, n_class=10, norm="cosine"):
    """The original SphereNet-9 training graph; returns (graph, fetches, feed, init)."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        rng = np.random.RandomState(0)
        images = tf.constant(rng.uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32))
        labels = tf.constant(rng.randint(0, n_class, batch).astype(np.int32))
        is_training = v1.placeholder(tf.bool, [])
        lr = v1.placeholder(tf.float32, [])
        wd = 5e-4
        orth_terms, reg_terms = [], []

        def l2_reg(t):
            return wd * tf.nn.l2_loss(t)

        def batch_norm(x, n_out):
            with v1.variable_scope("bn"):
                gamma = v1.get_variable("gamma", [n_out], initializer=v1.constant_initializer(1.0))
                beta = v1.get_variable("beta", [n_out], initializer=v1.constant_initializer(0.0))
                reg_terms.extend([l2_reg(gamma), l2_reg(beta)])
                mean, var = tf.nn.moments(x, [0, 1, 2])
                ema = v1.train.ExponentialMovingAverage(decay=0.999)

                def with_update():
                    apply = ema.apply([mean, var])
                    with tf.control_dependencies([apply]):
                        return tf.identity(mean), tf.identity(var)

                m, v = tf.cond(is_training, with_update, lambda: (ema.average(mean), ema.average(var)))
                return tf.nn.batch_normalization(x, m, v, beta, gamma, 1e-3)

        def conv_layer(x, k, n_out, name, bn, relu, pad, sphere, reg, orth):
            with v1.variable_scope(name):
                n_in = x.shape[-1]
                w = v1.get_variable("filter", [k, k, n_in, n_out],
                                    initializer=v1.random_normal_initializer(stddev=math.sqrt(2.0 / (k * k * n_in))))
                if reg:
                    reg_terms.append(l2_reg(w))
                y = tf.nn.conv2d(x, w, [1, 1, 1, 1], pad)
                if sphere != "none":
                    xnorm = tf.sqrt(tf.nn.conv2d(x * x, tf.ones([k, k, n_in, 1]), [1, 1, 1, 1], pad) + 1e-4)
                    wnorm = tf.sqrt(tf.reduce_sum(w * w, [0, 1, 2], keepdims=True) + 1e-4)
                    y = y / xnorm / wnorm
                    if sphere == "linear":
                        y = -0.63662 * tf.acos(y) + 1
                if orth:
                    wm = tf.reshape(w, [-1, n_out])
                    orth_terms.append(2e-4 * tf.nn.l2_loss(tf.matmul(tf.transpose(wm), wm) - tf.eye(n_out)))
                if bn:
                    y = batch_norm(y, n_out)
                return tf.nn.relu(y) if relu else y

        sphere = norm
        x = (images - 127.5) / 128.0
        for stage, width in enumerate((128, 192, 256), start=1):
            for i in range(3):
                x = conv_layer(x, 3, width, f"conv{stage}_{i}", True, True, "SAME", sphere, False, True)
            x = tf.nn.max_pool2d(x, 2, 2, "SAME")
        x = conv_layer(x, 4, 256, "fc6", False, False, "VALID", sphere, False, True)
        score = conv_layer(x, 1, n_class, "score", False, False, "VALID", "none", True, False)
        logits = tf.reshape(score, [-1, n_class])
        p = tf.nn.softmax(logits) + 1e-4
        t = 0.99 * tf.one_hot(labels, n_class) + 0.01 / n_class
        fit = tf.reduce_mean(-tf.reduce_sum(t * tf.math.log(p), axis=1))
        reg = tf.add_n(reg_terms)
        orth = tf.add_n(orth_terms)
        update = v1.train.AdamOptimizer(lr).minimize(fit + reg + orth)
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), labels), tf.float32))
        init = v1.global_variables_initializer()
    return graph, [fit, reg, orth, acc, update], {is_training: True, lr: 1e-3}, init


def port_step(batch, norm):
    from spherenet_tf.models import build_cnn9
    from spherenet_tf.training import Settings, Trainer

    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (2048, 32, 32, 3)).astype(np.uint8)
    labels = rng.randint(0, 10, 2048).astype(np.int32)
    s = Settings(batch_sz=batch, model_file=tempfile.mkdtemp() + "/", progress="off", norm=norm)
    trainer = Trainer(s, lambda s: build_cnn9(norm=s.norm, name="spherenet9"),
                      data=((images, labels), (images[:100], labels[:100])))
    iterator = trainer.task.train_iterator(0)

    def run():
        fit, reg, orth, acc = trainer.task.train_step(iterator)
        float(fit), float(acc)

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each")
    parser.add_argument("--norm", default="cosine", choices=["cosine", "linear"])
    args = parser.parse_args()

    graph, fetches, feed, init = build_original_graph(args.batch, norm=args.norm)
    sess = tf.compat.v1.Session(graph=graph)
    sess.run(init)

    def original():
        sess.run(fetches, feed)

    port = port_step(args.batch, args.norm)
    for fn in (original, port, original, port):
        fn()  # warm up (graph optimisation, tracing)
    times = {"original TF1 graph": [], "port": []}
    for _ in range(args.steps):
        for name, fn in (("original TF1 graph", original), ("port", port)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"SphereNet-9 ({args.norm}) training step, batch {args.batch}, median of {args.steps}, "
          f"alternating; oneDNN {'off' if os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '0' else 'on'}")
    common.print_table(
        ["implementation", "ms/step", "images/s", "throughput vs original"],
        [(k, f"{v * 1e3:.1f}", f"{args.batch / v:.1f}", f"{med['original TF1 graph'] / v:.3f}x")
         for k, v in med.items()],
    )


if __name__ == "__main__":
    main()
