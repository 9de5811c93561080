"""SphereNet-9 trained with Keras's own `model.fit`, on any Keras 3 backend (JAX here).

    KERAS_BACKEND=jax python examples/keras_backends.py     # or torch, tensorflow
    python examples/keras_backends.py --synthetic           # random images, no download

The layers, losses and builders run on TensorFlow, JAX and PyTorch (docs/layers.md);
the training scripts stay on TensorFlow and tf.distribute, as the original's.
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")  # before the first `import keras`
import keras  # noqa: E402
import numpy as np  # noqa: E402

from spherenet_tf import Loss2  # noqa: E402
from spherenet_tf.models import build_cnn9  # noqa: E402

steps = 300                      # Adam steps of batch 128 (the original trains 64,000)
if "--synthetic" in sys.argv:    # random 0..255 images: the test's path, nothing downloaded
    rng = np.random.default_rng(0)
    x = x_test = rng.uniform(0, 255, (256, 32, 32, 3)).astype("float32")
    y = y_test = rng.integers(0, 10, 256)
    steps = 2
else:                            # CIFAR-10, 170 MB downloaded once into ~/.keras/datasets
    (x, y), (x_test, y_test) = keras.datasets.cifar10.load_data()
    x, x_test, y, y_test = x.astype("float32"), x_test.astype("float32"), y.ravel(), y_test.ravel()

# The network of spherenet.py: cosine SphereConvs, orthogonality constraint, plain score.
model = build_cnn9(10, norm="cosine", w_norm="none", reg=False, orth=True, name="spherenet9")
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=Loss2(), metrics=["accuracy"])
model.fit(x[: steps * 128], y[: steps * 128], batch_size=128, epochs=1)
result = model.evaluate(x_test, y_test, batch_size=500, return_dict=True, verbose=0)
print(f"backend {keras.backend.backend()}: test accuracy {result['accuracy']:.4f} after {steps} steps")
