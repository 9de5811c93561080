"""Gradient accuracy of SphereConv2D against the float64 reference, in every precision.

For each input kind (random; patches that are copies of a filter, with noise 0, 0.02,
0.2 and 1 of the patch scale, aligned or antiparallel; tiny and huge inputs; tiny and
zero filters) the layer's input, kernel and learnable-k gradients under a dtype policy
are compared with `numpy_reference.sphere_conv_grads` (float64, the chain rule written
out), as max |g - g_ref| / max |g_ref|.  Beside each, the same figure for a plain
`keras.layers.Conv2D` under the same policy on the same inputs: the error a convolution
in that precision makes anyway, which sets the reduced-precision limits of
tests/test_gradient_accuracy.py.

    cd tests && python -m support.gradient_accuracy [--policy mixed_bfloat16] [--norm linear]

prints the table (issue 22's figures).
"""

import argparse
import itertools

import keras
import ml_dtypes
import numpy as np
import tensorflow as tf

from . import numpy_reference as ref

FILTERS = 4
#: (kernel, stride, padding, input shape): every pixel a patch (1x1), or 3x3 stride 2
#: with padding borders, where one patch per image is set to a filter.
CONFIGS = {
    "pointwise": (1, 1, "valid", (4, 3, 3, 8)),
    "strided": (3, 2, "same", (4, 7, 7, 3)),
}
#: Noise of the aligned kinds, one level per image, relative to the patch's norm.
NOISE = (0.0, 0.02, 0.2, 1.0)
#: Input kinds and their magnitude (input scale, filter scale) per policy.  float16
#: inputs stop at 65504, and a plain float16 convolution of 1e4-sized inputs overflows
#: its own gradients: its kinds stay within 1e-3 .. 1e3.
KINDS = ("random", "aligned", "antiparallel", "tiny", "huge", "huge18", "tiny_filter", "zero_filter")
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
NORMS = ("none", "linear", "cosine", "sigmoid", "lr_sigmoid")
W_NORMS = ("none", "linear", "cosine", "sigmoid")
IN_DTYPE = {"float32": np.float32, "mixed_bfloat16": ml_dtypes.bfloat16, "mixed_float16": np.float16}
#: Under float16 the loss is scaled as a dynamic LossScaleOptimizer would settle it: the
#: largest power of two up to its initial 2**15 that keeps every gradient below 2**14.
FLOAT16_LOSS_SCALE_MAX = 2.0**15


def _magnitudes(kind, policy):
    small = policy == "mixed_float16"
    return {
        "tiny": (1e-3 if small else 1e-20, 1.0),
        "huge": (1e3 if small else 1e20, 1.0),
        "huge18": (3e2 if small else 1e18, 1.0),
        "tiny_filter": (1.0, 1e-20),
    }.get(kind, (1.0, 1.0))


def make_case(config, kind, policy, seed=0):
    """(x, w, k_value, dy): inputs exactly representable in the policy's compute dtype
    (as a mixed-precision model hands them to the layer), float32 filters."""
    k, stride, padding, shape = CONFIGS[config]
    rng = np.random.RandomState(seed)
    n = k * k * shape[-1]
    xm, wm = _magnitudes(kind, policy)
    w = rng.standard_normal((k, k, shape[-1], FILTERS)) * np.sqrt(2.0 / n)
    x = rng.standard_normal(shape)
    if kind in ("aligned", "antiparallel"):
        sign = 1.0 if kind == "aligned" else -1.0
        for b, noise in enumerate(NOISE):
            if config == "pointwise":
                which = rng.randint(FILTERS, size=shape[1:3])
                for i, j in itertools.product(range(shape[1]), range(shape[2])):
                    f = w[0, 0, :, which[i, j]]
                    r = rng.standard_normal(f.shape)
                    p = f / np.linalg.norm(f) + noise * r / np.linalg.norm(r)
                    x[b, i, j] = sign * rng.uniform(0.5, 2.0) * p
            else:  # the patch of output (1, 1), input rows and columns 1..3
                f = w[..., rng.randint(FILTERS)]
                r = rng.standard_normal(f.shape)
                p = f / np.linalg.norm(f) + noise * r / np.linalg.norm(r)
                x[b, 1:4, 1:4, :] = sign * rng.uniform(0.5, 2.0) * p
    if kind == "zero_filter":
        w[..., rng.randint(FILTERS)] = 0.0
    x = (x * xm).astype(IN_DTYPE[policy]).astype(np.float64)
    w = (w * wm).astype(np.float32).astype(np.float64)
    k_value = rng.uniform(-2, 2, FILTERS).astype(np.float32).astype(np.float64)
    out_shape = ref.sphere_conv(x, w, stride, padding, "none").shape
    dy = rng.standard_normal(out_shape).astype(IN_DTYPE[policy]).astype(np.float64)
    return x, w, k_value, dy


def relative_error(got, want):
    got = np.asarray(got, np.float64)
    scale = np.abs(want).max()
    if scale == 0:
        return float(np.abs(got).max())
    return float(np.abs(got - want).max() / scale)


_runners = {}


def _runner(layer_fn, config, policy, has_k):
    k, stride, padding, shape = CONFIGS[config]
    key = (layer_fn, config, policy)
    if key in _runners:
        return _runners[key]
    layer = layer_fn(k, stride, padding, policy)
    layer.build(shape)
    in_dtype = tf.as_dtype(IN_DTYPE[policy]) if policy != "mixed_bfloat16" else tf.bfloat16

    @tf.function(reduce_retracing=True)
    def run(x, w, k_value, dy, scale):
        layer.kernel.assign(w)
        sources = [x, layer.kernel]
        if has_k:
            layer.k_value.assign(k_value)
            sources.append(layer.k_value)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * dy) * scale
        return [tf.cast(g, tf.float32) / scale for g in tape.gradient(loss, sources)]

    _runners[key] = (run, in_dtype)
    return _runners[key]


def loss_scale(policy, *references):
    """1, or under float16 the scale a dynamic loss scaler settles at for a model whose
    float16 gradients are `references`: the largest power of two up to 2**15 that keeps
    them below 2**14.  Each layer gets its own: a plain Conv2D holds its output, input
    and kernel gradients in float16; a SphereConv with an angle computes in float32
    (`layers._no_float16_compute`), so only its input gradient is float16, and its
    float32 kernel gradient (1/|W| of a 1e-20 filter: 1e20) does not lower the scale."""
    if policy != "mixed_float16":
        return 1.0
    largest = max(float(np.abs(r).max()) for r in references if r is not None)
    if largest == 0:
        return FLOAT16_LOSS_SCALE_MAX
    return float(2.0 ** np.clip(np.floor(np.log2(2.0**14 / largest)), 0, np.log2(FLOAT16_LOSS_SCALE_MAX)))


def layer_gradients(norm, w_norm, config, policy, x, w, k_value, dy, formulation=None, scale=1.0):
    """(dx, dw, dk or None) of sum(dy * layer(x)) for a SphereConv2D under `policy`."""
    from spherenet_tf import SphereConv2D

    extra = {} if formulation is None else {"formulation": formulation}

    def make(k, stride, padding, policy, norm=norm, w_norm=w_norm, extra=tuple(extra.items())):
        return SphereConv2D(FILTERS, k, strides=stride, padding=padding, norm=norm,
                            w_norm=w_norm, dtype=policy, **dict(extra))

    key_fn = ("sphere", norm, w_norm, formulation)
    if key_fn not in _makers:
        _makers[key_fn] = make
    run, in_dtype = _runner(_makers[key_fn], config, policy, norm == "lr_sigmoid")
    grads = run(tf.cast(tf.constant(x, tf.float32), in_dtype), tf.constant(w, tf.float32),
                tf.constant(k_value, tf.float32), tf.constant(dy, tf.float32),
                tf.constant(scale, tf.float32))
    grads = [g.numpy() for g in grads]
    return grads[0], grads[1], (grads[2] if len(grads) > 2 else None)


_makers = {}


def _plain(k, stride, padding, policy):
    return keras.layers.Conv2D(FILTERS, k, strides=stride, padding=padding, use_bias=False,
                               dtype=policy)


def conv_errors(config, policy, x, w, dy, scale=1.0):
    """(dx, dw) relative errors of a plain Conv2D under `policy` on these inputs."""
    k, stride, padding, _ = CONFIGS[config]
    run, in_dtype = _runner(_plain, config, policy, False)
    rx, rw, _ = ref.sphere_conv_grads(x, w, dy, stride, padding, "none", "none")
    gx, gw = [g.numpy() for g in run(tf.cast(tf.constant(x, tf.float32), in_dtype),
                                     tf.constant(w, tf.float32), tf.constant(0.0, tf.float32),
                                     tf.constant(dy, tf.float32), tf.constant(scale, tf.float32))]
    return relative_error(gx, rx), relative_error(gw, rw)


def measure(norm, w_norm, policy, configs=tuple(CONFIGS), kinds=KINDS, formulation=None):
    """Rows of (config, kind, dx error, dw error, dk error or None, conv dx, conv dw)."""
    rows = []
    for config, kind in itertools.product(configs, kinds):
        k, stride, padding, _ = CONFIGS[config]
        x, w, k_value, dy = make_case(config, kind, policy)
        rx, rw, rk = ref.sphere_conv_grads(x, w, dy, stride, padding, norm, w_norm, k_value)
        conv_scale = loss_scale(
            policy, dy, *ref.sphere_conv_grads(x, w, dy, stride, padding, "none", "none")[:2])
        scale = loss_scale(policy, rx) if norm != "none" or w_norm != "none" else conv_scale
        gx, gw, gk = layer_gradients(norm, w_norm, config, policy, x, w, k_value, dy, formulation,
                                     scale)
        cx, cw = conv_errors(config, policy, x, w, dy, conv_scale)
        rows.append((config, kind, relative_error(gx, rx), relative_error(gw, rw),
                     None if rk is None else relative_error(gk, rk), cx, cw))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=POLICIES, action="append")
    parser.add_argument("--norm", choices=NORMS, action="append")
    parser.add_argument("--w_norm", choices=W_NORMS, action="append")
    parser.add_argument("--formulation", default=None)
    args = parser.parse_args()
    print(f"{'policy':15s} {'norm':10s} {'w_norm':8s} {'config':9s} {'kind':12s} "
          f"{'dx':>8s} {'dW':>8s} {'dk':>8s} | {'conv dx':>8s} {'conv dW':>8s}")
    for policy, norm, w_norm in itertools.product(args.policy or POLICIES, args.norm or NORMS,
                                                  args.w_norm or ("none",)):
        for config, kind, ex, ew, ek, cx, cw in measure(norm, w_norm, policy,
                                                       formulation=args.formulation):
            ek_s = "" if ek is None else f"{ek:.1e}"
            print(f"{policy:15s} {norm:10s} {w_norm:8s} {config:9s} {kind:12s} "
                  f"{ex:8.1e} {ew:8.1e} {ek_s:>8s} | {cx:8.1e} {cw:8.1e}", flush=True)


if __name__ == "__main__":
    main()
