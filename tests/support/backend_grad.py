"""Gradients on whichever Keras backend is running: the one backend-specific piece of
the backend tests (tests/backends/), so that each test is written once.

`value_and_grads(fn, *arrays)`: fn takes backend tensors and returns a scalar; the
result is (value, [d value / d array, ...]) as NumPy float64 arrays.  `layer_fn`
makes such a function from a layer and its trainable weights (`stateless_call`).
"""

import keras
import numpy as np
from keras import ops


def value_and_grads(fn, *arrays, compiled=None):
    """(fn(*arrays), gradients) as NumPy.  `compiled`: a dict in which to keep a
    compiled version of fn (jax.jit / tf.function) for calls with the same shapes."""
    arrays = [np.asarray(a, np.float32) for a in arrays]
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if compiled is None or "fn" not in compiled:
            grad_fn = jax.value_and_grad(fn, argnums=tuple(range(len(arrays))))
            if compiled is None:
                value, grads = grad_fn(*arrays)
                return _to_numpy(value, grads)
            compiled["fn"] = jax.jit(grad_fn)
        value, grads = compiled["fn"](*arrays)
    elif backend == "torch":
        tensors = [ops.convert_to_tensor(a).detach().requires_grad_(True) for a in arrays]
        value = fn(*tensors)
        value.backward()
        grads = [t.grad for t in tensors]
    elif backend == "tensorflow":
        import tensorflow as tf

        def grad_fn(*tensors):
            with tf.GradientTape() as tape:
                for t in tensors:
                    tape.watch(t)
                value = fn(*tensors)
            return value, tape.gradient(value, list(tensors))

        if compiled is not None:
            grad_fn = compiled.setdefault("fn", tf.function(grad_fn))
        value, grads = grad_fn(*[tf.constant(a) for a in arrays])
    else:
        raise NotImplementedError(f"no gradient helper for the {backend!r} backend")
    return _to_numpy(value, grads)


def _to_numpy(value, grads):
    to_np = lambda t: np.asarray(ops.convert_to_numpy(t), np.float64)  # noqa: E731
    return to_np(value), [to_np(g) for g in grads]


def layer_fn(layer, cotangent=None, training=False):
    """fn(x, *trainable_weights) = sum(layer(x) * cotangent), through `stateless_call`;
    without `cotangent`, fn(x, cotangent, *trainable_weights) (its gradient with respect
    to the cotangent is the output)."""
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def fn(x, *args):
        cot, weights = (cotangent, args) if cotangent is not None else (args[0], args[1:])
        out, _ = layer.stateless_call(list(weights), non_trainable, x, training=training)
        return ops.sum(ops.cast(out, "float32") * cot)

    return fn


def compiled_call(layer, training=False):
    """fn(x) -> the layer's (or model's) outputs as NumPy, with its current weights,
    compiled once (jax.jit / tf.function; PyTorch runs eagerly): JAX dispatches every
    op separately otherwise, which dominates these small tests' time."""
    backend = keras.backend.backend()

    def call(trainable, non_trainable, x):
        return layer.stateless_call(trainable, non_trainable, x, training=training)[0]

    if backend == "jax":
        import jax

        call = jax.jit(call)
    elif backend == "tensorflow":
        import tensorflow as tf

        call = tf.function(call)

    def fn(x):
        out = call([v.value for v in layer.trainable_variables],
                   [v.value for v in layer.non_trainable_variables], ops.convert_to_tensor(x))
        return keras.tree.map_structure(lambda t: np.asarray(ops.convert_to_numpy(t)), out)

    return fn


def output(layer, x, *weights):
    """The layer's output for input x and trainable weights, as NumPy float64."""
    non_trainable = [v.value for v in layer.non_trainable_variables]
    out, _ = layer.stateless_call([ops.convert_to_tensor(np.asarray(w, np.float32)) for w in weights],
                                  non_trainable, ops.convert_to_tensor(np.asarray(x, np.float32)))
    return np.asarray(ops.convert_to_numpy(ops.cast(out, "float32")), np.float64)
