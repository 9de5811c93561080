"""SphereConv2D and SphereNet-9 training steps on the running Keras backend (JAX, PyTorch
or TensorFlow), and the golden forward fixtures on its default device.

    KERAS_BACKEND=jax python benchmarks/keras_backends.py                  # CPU or GPU
    KERAS_BACKEND=jax python benchmarks/keras_backends.py --dtype bfloat16 --batch 128
    KERAS_BACKEND=jax python benchmarks/keras_backends.py --golden          # fixtures only

Prints one table: the layer forward + backward time of every SphereConv variant against
a plain `Conv2D` (keras.ops formulation, autodiff against the `acos` custom gradient), the
train-step images/s of SphereNet-9 and the baseline CNN-9 (`model.fit`'s compiled step,
Adam, Loss2 with weight decay and orthogonality) and their ratio, and with `--golden` the
worst relative error against `tests/golden/` of the layer and model forward values.
Ratios come from measurements taken side by side in this one process.
"""

import argparse
import os
import subprocess
import sys
import time

import keras
import numpy as np
from keras import ops

from spherenet_tf import Loss2, SphereConv2D
from spherenet_tf.models import build_cnn9

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NORMS = ["none", "linear", "cosine", "sigmoid", "lr_sigmoid"]


def timed(fn, repeats):
    """Median seconds of fn() (its result converted to NumPy, so the device has finished)."""
    ops.convert_to_numpy(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ops.convert_to_numpy(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def layer_gradient_fn(layer, x):
    """A compiled fn() -> d sum(layer(x)) / dx for this backend."""
    backend = keras.backend.backend()
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(x, trainable):
        return ops.sum(layer.stateless_call(trainable, non_trainable, x)[0])

    if backend == "jax":
        import jax

        step = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return lambda: step(x, trainable)[0]
    if backend == "torch":
        import torch

        def step():
            xt = x.detach().requires_grad_(True)
            ws = [w.detach().requires_grad_(True) for w in trainable]
            return torch.autograd.grad(loss(xt, ws), [xt] + ws)[0]

        return step
    import tensorflow as tf

    @tf.function(jit_compile=False)
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(x, trainable)
        return tape.gradient(value, x)

    return step


def layer_table(batch, repeats):
    rows = []
    x = ops.convert_to_tensor(np.random.RandomState(0).standard_normal((batch, 16, 16, 128)).astype("float32"))
    base = None
    for variant in ["conv2d"] + NORMS[1:] + ["w_norm=cosine"]:
        if variant == "conv2d":
            layer = keras.layers.Conv2D(128, 3, padding="same", use_bias=False)
        elif variant.startswith("w_norm="):
            layer = SphereConv2D(128, 3, norm="none", w_norm=variant.split("=")[1], formulation="portable")
        else:
            layer = SphereConv2D(128, 3, norm=variant, formulation="portable")
        layer.build(x.shape)
        seconds = timed(layer_gradient_fn(layer, x), repeats)
        base = base or seconds
        rows.append((f"layer fwd+bwd {variant}", f"{seconds * 1e3:.2f} ms", f"{seconds / base:.3f}x conv2d"))
    return rows


def train_table(batch, steps):
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (batch * 4, 32, 32, 3)).astype("float32")
    labels = rng.randint(0, 10, batch * 4).astype("int32")
    rows, rates = [], {}
    for name, norm, reg, orth in [("baseline_cnn", "none", True, False), ("spherenet9", "cosine", False, True),
                                  ("spherenet9_linear", "linear", False, True)]:
        model = build_cnn9(10, norm=norm, w_norm="none", reg=reg, orth=orth, name=name)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=Loss2())
        model.train_on_batch(images[:batch], labels[:batch])  # compile
        start = time.perf_counter()
        for i in range(steps):
            j = (i % 4) * batch
            loss = model.train_on_batch(images[j:j + batch], labels[j:j + batch])
        float(np.asarray(loss))
        rates[name] = steps * batch / (time.perf_counter() - start)
        ratio = rates["baseline_cnn"] / rates[name]
        rows.append((f"train step {name}", f"{rates[name]:.0f} images/s", f"{ratio:.3f}x step time of CNN-9"))
    return rows


def golden_rows():
    """The golden forward checks of tests/backends/ on this backend and device (pytest in
    a subprocess, which prints each fixture's worst relative error at its end)."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "backends/",
         "-k", "conv_layer or weight_normalised or loss2 or model_forward"],
        cwd=os.path.join(REPO, "tests"), capture_output=True, text=True)
    lines = run.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "largest relative error" in line), len(lines))
    rows = [(line[:44].strip(), line[44:56].strip(), line[56:].strip())
            for line in lines[start + 1:] if line.strip() and not line.startswith("=")]
    summary = lines[-1].strip("= ") if lines else "no output"
    rows.append(("golden checks", "passed" if run.returncode == 0 else "FAILED", summary))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    parser.add_argument("--repeats", type=int, default=10, help="timed layer calls (default 10)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="float32, or the mixed_bfloat16 policy (default float32)")
    parser.add_argument("--golden", action="store_true", help="only the golden forward fixtures")
    args = parser.parse_args()
    device = "cpu"
    if keras.backend.backend() == "jax":
        import jax

        device = str(jax.devices()[0])
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, device {device}, "
          f"batch {args.batch}, {args.dtype}")
    if args.golden:
        rows = golden_rows()
    else:
        if args.dtype == "bfloat16":
            keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        rows = layer_table(args.batch, args.repeats) + train_table(args.batch, args.steps)
    for row in rows:
        print(f"{row[0]:40s} {row[1]:>18s}  {row[2]}")


if __name__ == "__main__":
    main()
