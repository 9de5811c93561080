"""Images per second the input pipeline delivers, against what a training step consumes.

    python benchmarks/input_pipeline.py [--batch 128] [--steps 50]

Both are measured in this process on the same machine: the pipeline alone (iterating
batches of the CIFAR-10 training stream with each augmentation), and the SphereNet-9
and baseline training steps on constant in-memory batches.  Target (issue 6): the
pipeline delivers at least 5x what a step consumes.
"""

import argparse

import common  # noqa: F401  (quiet TF logs)
import numpy as np
import tensorflow as tf

from spherenet_tf import cifar10_input


def pipeline_rate(images, labels, batch, augmentation, batches):
    ds = cifar10_input.train_dataset(images, labels, batch, seed=0, augmentation=augmentation)
    it = iter(ds)
    for _ in range(5):
        next(it)
    import time

    start = time.perf_counter()
    for _ in range(batches):
        x, y = next(it)
    x.numpy()
    return batches * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=400, help="batches timed per pipeline")
    parser.add_argument("--steps", type=int, default=10, help="training steps timed per model")
    args = parser.parse_args()

    rng = np.random.RandomState(0)
    labels = rng.randint(0, 10, 50000).astype(np.int32)
    images = rng.randint(0, 256, (50000, 32, 32, 3)).astype(np.uint8)

    from train_step_bench import make_step

    rows = []
    consumed = {}
    for name in ("spherenet9", "baseline_cnn"):
        step, seconds = make_step(name, args.batch, repeats=args.steps)
        consumed[name] = args.batch / seconds
    for aug in ("flip", "cifar10plus"):
        rate = pipeline_rate(images, labels, args.batch, aug, args.batches)
        for name, need in consumed.items():
            rows.append((aug, f"{rate:,.0f}", name, f"{need:,.0f}", f"{rate / need:,.1f}x"))
    print(f"batch {args.batch}, {tf.config.threading.get_intra_op_parallelism_threads() or 'default'} "
          f"intra-op threads, devices: {[d.device_type for d in tf.config.list_logical_devices()]}")
    common.print_table(["augmentation", "pipeline img/s", "model", "train step img/s", "ratio"], rows)


if __name__ == "__main__":
    main()
