"""Cost of the training loop's NaN/Inf guard, per step.

The loop's step (`ClassificationTask.train_step`) checks the loss terms and every gradient for
NaN/Inf, all-reduces that flag and applies the update only when it is clear (see
docs/reliability.md).  This script times that step against the
same step without the guard (the update applied inside the replica function, as
before the guard), side by side on the same model, optimizer and data stream:

    python benchmarks/nonfinite_guard.py [--model spherenet9] [--batch 32] [--repeats 10]

It prints the median milliseconds per step of both and the relative difference.
"""

import argparse
import tempfile

import common  # noqa: F401  (quiet TF logs)
import numpy as np
import tensorflow as tf

from spherenet_tf.regularizers import regularization_terms
from spherenet_tf.losses import loss2_per_example
from spherenet_tf.training import Settings, Trainer
from train_step_bench import MODELS


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="spherenet9", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    rng = np.random.RandomState(0)
    n = max(4 * args.batch, 256)
    labels = rng.randint(0, 10, n).astype(np.int32)
    images = rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    settings = Settings(batch_sz=args.batch, batch_test=args.batch, model_file=tempfile.mkdtemp(),
                        progress="off")
    trainer = Trainer(settings, lambda s: MODELS[args.model](), data=((images, labels), (images, labels)))
    strategy, model, optimizer = trainer.strategy, trainer.model, trainer.optimizer
    variables = model.trainable_variables
    iterator = trainer.task.train_iterator(0)

    def unguarded_replica(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            fit = tf.reduce_sum(loss2_per_example(y, logits, 10)) / args.batch
            reg, orth = regularization_terms(model)
            loss = fit + reg + orth
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return fit

    @tf.function
    def unguarded(it):
        x, y = next(it)
        return strategy.run(unguarded_replica, args=(x, y))

    guarded_ms, unguarded_ms = (1000 * t for t in common.interleaved_median_times(
        [lambda: float(trainer.task.train_step(iterator)[0]), lambda: float(unguarded(iterator))],
        repeats=args.repeats, warmup=2))
    print(f"{args.model}, batch {args.batch}, {type(strategy).__name__}, "
          f"{tf.config.list_logical_devices()[-1].device_type}")
    print(f"  step with the NaN/Inf guard:    {guarded_ms:8.1f} ms")
    print(f"  step without it:                {unguarded_ms:8.1f} ms")
    print(f"  difference:                     {100 * (guarded_ms / unguarded_ms - 1):+8.1f} %")


if __name__ == "__main__":
    main()
