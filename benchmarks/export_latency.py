"""Exported SphereNet-9 beside the plain CNN-9: file size and CPU latency per format,
and the top-1 agreement of the int8-weight LiteRT model with float32 (docs/deploying.md).

    python benchmarks/export_latency.py                              # random weights
    python benchmarks/export_latency.py --spherenet9 net.keras       # a trained / converted one
    python benchmarks/export_latency.py --data_path cifar10/         # agreement on CIFAR-10 test images

Each network is exported with `spherenet_tf.export_formats` (what `python -m
spherenet_tf.export` writes) as SavedModel, LiteRT, LiteRT with int8 weights
(`--quantize dynamic`) and ONNX, and each file is run in its own runtime (tf.saved_model,
ai-edge-litert, onnxruntime) on 1 image and on a batch of 32: the median wall time of
`--repeats` calls after two warm-up calls, all runtimes interleaved so that load on the
machine affects them alike, with the runtimes' default thread counts (every core).  The
Keras model itself (eval mode, in a tf.function) is timed the same way for reference.

The agreement is the share of `--images` images whose arg-max logit is the same for the
int8-weight LiteRT model as for the float32 Keras model: CIFAR-10 test images when
`--data_path` holds CIFAR-10's binary files, else generated images (smooth random
colour fields with noise, 0..255).  SphereNet-9 and CNN-9 with random weights get BN
moving statistics of a generated batch, so that eval mode is an ordinary network.
"""

import argparse
import os
import tempfile

from common import interleaved_median_times, print_table

import keras
import numpy as np
import tensorflow as tf

from spherenet_tf import export_formats as ef
from spherenet_tf.cifar10_input import has_binary_files, load_binary
from spherenet_tf.models import build_original

VARIANTS = [("SavedModel", "savedmodel", None), ("LiteRT", "tflite", None),
            ("LiteRT int8 weights", "tflite", "dynamic"), ("ONNX", "onnx", None)]


def generated_images(n, seed=0):
    """Smooth random colour fields (4x4 upsampled to 32x32) plus pixel noise, 0..255."""
    rng = np.random.RandomState(seed)
    coarse = rng.uniform(0, 255, (n, 4, 4, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, (32, 32), method="bilinear").numpy()
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.float32)


def calibrate_bn(model, images):
    """BN moving statistics := the batch moments of `images` (one pass, momentum 0)."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(bns, saved):
        layer.momentum = momentum


def network(name, path):
    if path:
        import spherenet_tf  # noqa: F401  (registers the layers)

        return keras.models.load_model(path, compile=False), os.path.basename(path)
    keras.utils.set_random_seed(0)
    model = build_original(name)
    calibrate_bn(model, generated_images(64, seed=1))
    return model, "random weights"


def agreement_images(args):
    if args.data_path and has_binary_files(args.data_path):
        images = load_binary(args.data_path)[1][0][: args.images]
        return np.asarray(images, np.float32), f"{len(images)} CIFAR-10 test images"
    return generated_images(args.images, seed=2), f"{args.images} generated images"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spherenet9", help="a SphereNet-9 .keras file (default: random weights)")
    parser.add_argument("--cnn9", help="a CNN-9 .keras file (default: random weights)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--images", type=int, default=500, help="images for the top-1 agreement")
    parser.add_argument("--data_path", default="cifar10", help="CIFAR-10 binary files, if any")
    args = parser.parse_args(argv)

    folder = tempfile.mkdtemp(prefix="export_latency_")
    x_agree, agree_what = agreement_images(args)
    batches = {1: generated_images(1, seed=3), 32: generated_images(32, seed=4)}
    size_rows, time_rows, agree_rows = [], [], []
    for name, path in (("spherenet9", args.spherenet9), ("baseline_cnn", args.cnn9)):
        model, origin = network(name, path)
        label = f"{'SphereNet-9' if name == 'spherenet9' else 'CNN-9'} ({origin})"
        keras_fn = tf.function(lambda images, m=model: m(images, training=False))
        runners = [("Keras (tf.function)", None, lambda images: keras_fn(images).numpy())]
        for title, fmt, quantize in VARIANTS:
            out = os.path.join(folder, f"{name}_{title.replace(' ', '_')}.{fmt}")
            ef.write(model, fmt, out, quantize=quantize)
            size = os.path.getsize(out) if os.path.isfile(out) else sum(
                os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
            size_rows.append([label, title, f"{size / 1e6:.1f} MB"])
            runners.append((title, quantize, ef.load(fmt, out)))
        for batch, x in batches.items():
            for _, _, run in runners:
                run(x)  # per-shape set-up (LiteRT allocation, tracing) before timing
            times = interleaved_median_times([lambda r=run, x=x: r(x) for _, _, run in runners],
                                             repeats=args.repeats)
            for (title, _, _), t in zip(runners, times):
                time_rows.append([label, title, batch, f"{t * 1e3:.2f} ms",
                                  f"{t * 1e3 / batch:.2f} ms"])
        reference = np.concatenate([model(x_agree[i:i + 100], training=False).numpy()
                                    for i in range(0, len(x_agree), 100)])
        quantized = dict((t, r) for t, _, r in runners)["LiteRT int8 weights"]
        int8 = np.concatenate([quantized(x_agree[i:i + 100]) for i in range(0, len(x_agree), 100)])
        same = float(np.mean(np.argmax(int8, 1) == np.argmax(reference, 1)))
        spread = float(np.max(np.abs(int8 - reference)) / np.max(np.abs(reference)))
        agree_rows.append([label, agree_what, f"{100 * same:.1f} %", f"{spread:.2g}"])

    print("File sizes")
    print_table(["network", "format", "size"], size_rows)
    print(f"\nCPU latency: median of {args.repeats} calls, {os.cpu_count()} cores")
    print_table(["network", "format", "batch", "per batch", "per image"], time_rows)
    print("\nLiteRT int8 weights against float32 Keras")
    print_table(["network", "images", "same top-1", "max |logit diff| / max |logit|"], agree_rows)


if __name__ == "__main__":
    main()
