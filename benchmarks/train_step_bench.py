"""Shared by the benchmarks: a compiled training step of one of the four models."""

import common  # noqa: F401  (quiet TF logs)
import keras
import numpy as np
import tensorflow as tf

from spherenet_tf.regularizers import regularization_terms
from spherenet_tf.losses import loss2_per_example
from spherenet_tf.models import build_cnn9, build_resnet32
from spherenet_tf.training import ADAM

MODELS = {
    "spherenet9": lambda: build_cnn9(norm="cosine", reg=False, orth=True, name="spherenet9"),
    "spherenet9_original": lambda: build_cnn9(norm="cosine", reg=False, orth=True, formulation="original",
                                              name="spherenet9_original"),
    "spherenet9_linear": lambda: build_cnn9(norm="linear", reg=False, orth=True, name="spherenet9_linear"),
    "spherenet9_sigmoid": lambda: build_cnn9(norm="sigmoid", reg=False, orth=True, name="spherenet9_sigmoid"),
    "spherenet9_lr_sigmoid": lambda: build_cnn9(norm="lr_sigmoid", reg=False, orth=True,
                                                name="spherenet9_lr_sigmoid"),
    "baseline_cnn": lambda: build_cnn9(norm="none", reg=True, orth=False, name="baseline_cnn"),
    "sphere_resnet32": lambda: build_resnet32(norm="linear", reg=False, orth=True),
    "baseline_resnet32": lambda: build_resnet32(norm="none", reg=True, orth=False, name="baseline_resnet32"),
}


def make_optimizer():
    """The training scripts' Adam, with loss scaling under a float16 policy (as the loop)."""
    optimizer = keras.optimizers.Adam(1e-3, **ADAM)
    if keras.mixed_precision.global_policy().compute_dtype == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def make_step(name, batch, repeats=10, jit_compile=False, model=None):
    """(step function, median seconds per step) for a model on a constant batch."""
    model = model or MODELS[name]()
    optimizer = make_optimizer()
    rng = np.random.RandomState(0)
    x = tf.constant(rng.uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32))
    y = tf.constant(rng.randint(0, 10, batch).astype(np.int32))
    variables = model.trainable_variables

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            fit = tf.reduce_mean(loss2_per_example(y, logits))
            reg, orth = regularization_terms(model)
            loss = fit + reg + orth
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def run():
        step().numpy()

    return run, common.median_time(run, repeats=repeats, warmup=2)
