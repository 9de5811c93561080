"""Shared by the benchmarks: the training scripts' step of one of the networks.

The networks are the models' own table (`spherenet_tf.models.ORIGINAL_NETWORKS`, built
by `build_original`) and variants of it; the step is the one the training scripts run
(`ClassificationTask.train_step`: the next batch of the training stream, forward in
training mode, loss2 + weight decay + orthogonality, gradients, the NaN/Inf guard and
the original's Adam), as `python -m spherenet_tf.selfcheck` times it.
"""

import functools

import common  # noqa: F401  (quiet TF logs)
import keras
import numpy as np
import tensorflow as tf

from spherenet_tf.models import build_original
from spherenet_tf.training import ClassificationTask, Settings

#: Benchmark name -> (network of `ORIGINAL_NETWORKS`, options of `build_original`).
VARIANTS = {
    "spherenet9": ("spherenet9", {}),
    # SphereConv's original formulation (ones-kernel patch norm, autodiff throughout)
    "spherenet9_original": ("spherenet9", {"formulation": "original"}),
    "spherenet9_linear": ("spherenet9", {"norm": "linear"}),
    "spherenet9_sigmoid": ("spherenet9", {"norm": "sigmoid"}),
    "spherenet9_lr_sigmoid": ("spherenet9", {"norm": "lr_sigmoid"}),
    "baseline_cnn": ("baseline_cnn", {}),
    "sphere_resnet32": ("sphere_resnet32", {}),
    "baseline_resnet32": ("baseline_resnet32", {}),
}
#: Benchmark name -> a function building the network.
MODELS = {name: functools.partial(build_original, network, name=name, **options)
          for name, (network, options) in VARIANTS.items()}
#: Keras's global policy -> the training scripts' --mixed_precision giving it.
_FLAG_OF_POLICY = {"float32": "off", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def make_task(name, batch, jit_compile=False, model=None):
    """The training scripts' task of a network on random images (4 batches, 10 classes),
    under Keras's global dtype policy (the caller sets it, as the scripts' entry point)."""
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (4 * batch, 32, 32, 3)).astype(np.uint8)
    labels = rng.randint(0, 10, 4 * batch).astype(np.int32)
    settings = Settings(batch_sz=batch, batch_test=batch, jit_compile=jit_compile,
                        mixed_precision=_FLAG_OF_POLICY[keras.config.dtype_policy().name],
                        progress="off", tensorboard="off", download=False)
    return ClassificationTask(settings, lambda s: model or MODELS[name](),
                              tf.distribute.get_strategy(),
                              data=((images, labels), (images[:batch], labels[:batch])))


def make_step(name, batch, repeats=10, jit_compile=False, model=None):
    """(step function, median seconds per step) of the training scripts' step."""
    task = make_task(name, batch, jit_compile, model)
    iterator = task.train_iterator(0)

    def run():
        float(task.train_step(iterator)[0])  # waits for the step

    return run, common.median_time(run, repeats=repeats, warmup=2)
