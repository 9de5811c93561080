"""SphereConv2D forward+backward time per variant against a bare Conv2D, at the
SphereNet-9 layer shapes.

    python benchmarks/layer_bench.py [--batch 32] [--repeats 7] [--layers conv1_1,conv2_1]

Every variant of a layer is timed side by side with `keras.layers.Conv2D` of the same
shape (interleaved repetitions, median), each as one compiled tf.function computing the
output and the gradients with respect to the input and the kernel.  `original` is the
original formulation of the patch norm (a k x k x C_in ones-kernel convolution of x*x).
"""

import argparse

import common
import keras
import numpy as np
import tensorflow as tf

from spherenet_tf import SphereConv2D

# name: (input H=W, C_in, C_out, kernel, padding) of SphereNet-9
SHAPES = {
    "conv1_0": (32, 3, 128, 3, "same"),
    "conv1_1": (32, 128, 128, 3, "same"),
    "conv2_0": (16, 128, 192, 3, "same"),
    "conv2_1": (16, 192, 192, 3, "same"),
    "conv3_0": (8, 192, 256, 3, "same"),
    "conv3_1": (8, 256, 256, 3, "same"),
    "fc6": (4, 256, 256, 4, "valid"),
}
VARIANTS = [("cosine", "none"), ("linear", "none"), ("sigmoid", "none"), ("lr_sigmoid", "none"),
            ("none", "cosine"), ("none", "linear")]


def fwd_bwd(layer, x):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x] + layer.trainable_weights)

    def run():
        grads = step()
        grads[0].numpy()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--layers", default=",".join(SHAPES))
    parser.add_argument("--variants", default=",".join(f"{n}/{w}" for n, w in VARIANTS))
    parser.add_argument("--original", action="store_true", help="also time the original formulation")
    args = parser.parse_args()
    variants = [tuple(v.split("/")) for v in args.variants.split(",")]
    rows = []
    totals = {}
    for name in args.layers.split(","):
        size, c_in, c_out, k, pad = SHAPES[name]
        x = tf.constant(np.random.RandomState(0).standard_normal((args.batch, size, size, c_in)),
                        tf.float32)
        conv = keras.layers.Conv2D(c_out, k, padding=pad, use_bias=False)
        conv.build(x.shape)
        fns = [fwd_bwd(conv, x)]
        labels = ["Conv2D"]
        for norm, w_norm in variants:
            layer = SphereConv2D(c_out, k, padding=pad, norm=norm, w_norm=w_norm)
            layer.build(x.shape)
            fns.append(fwd_bwd(layer, x))
            labels.append(f"{norm}/{w_norm}")
            if args.original:
                original = SphereConv2D(c_out, k, padding=pad, norm=norm, w_norm=w_norm,
                                        formulation="original")
                original.build(x.shape)
                original.set_weights(layer.get_weights())
                fns.append(fwd_bwd(original, x))
                labels.append(f"{norm}/{w_norm} original")
        times = common.interleaved_median_times(fns, repeats=args.repeats, warmup=2)
        base = times[0]
        for label, t in zip(labels, times):
            rows.append((name, label, f"{t * 1e3:8.2f}", f"{t / base:5.2f}x"))
            totals[label] = totals.get(label, 0.0) + t
    base = totals["Conv2D"]
    for label, t in totals.items():
        rows.append(("all", label, f"{t * 1e3:8.2f}", f"{t / base:5.2f}x"))
    print(f"forward+backward, batch {args.batch}, median of {args.repeats} (ms; ratio to Conv2D)")
    common.print_table(["layer", "variant", "ms", "ratio"], rows)


if __name__ == "__main__":
    main()
