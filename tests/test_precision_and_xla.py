"""Mixed precision and XLA keep SphereConv and training within tolerance of float32.

On this CPU the checks run the same code paths a GPU run takes: `mixed_float16` and
`mixed_bfloat16` policies (the layer computes its norms and angles in float32), and
`jit_compile=True` compilation of the layer and of the training step.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from support.repo import load_module
from support.fake_cifar import synthetic_images
from support.tolerances import FIRST_STEP_TOL, LATER_TOL
from spherenet_tf import SphereConv2D
from spherenet_tf.selfcheck import MIXED_TOL
from support.runs import script_trainer
from spherenet_tf.training import Settings, precision_policy

NORMS = ["linear", "cosine", "sigmoid", "lr_sigmoid"]
# relative to the largest magnitude: float16 keeps 11 bits, bfloat16 8 (the self-check
# holds a layer to the same figures)
POLICY_TOL = {policy: tol["layer"] for policy, tol in MIXED_TOL.items()}


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _run_layer(norm, x, kernel, k_value, jit=False):
    layer = SphereConv2D(kernel.shape[-1], 3, padding="same", norm=norm)
    layer.build(x.shape)
    layer.kernel.assign(kernel)
    if norm == "lr_sigmoid":
        layer.k_value.assign(k_value)
    xt = tf.constant(x)

    def f():
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = tf.cast(layer(xt), tf.float32)
            weights = tf.reshape(tf.cast(tf.range(tf.size(y)) % 7, tf.float32), tf.shape(y))
            loss = tf.reduce_sum(y * weights)
        return [y] + tape.gradient(loss, [xt] + layer.trainable_weights)

    if jit:
        f = tf.function(f, jit_compile=True)
    return [np.asarray(tf.cast(t, tf.float32)) for t in f()]


def _case(seed=0):
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((2, 8, 8, 16)).astype(np.float32)
    x[0, :4, :4] = 0.0
    kernel = (rng.standard_normal((3, 3, 16, 8)) * 0.3).astype(np.float32)
    k_value = (0.7 + 0.2 * rng.standard_normal(8)).astype(np.float32)
    return x, kernel, k_value


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("norm", NORMS)
def test_mixed_precision_layer_close_to_float32(policy, norm, restore_policy):
    x, kernel, k_value = _case()
    reference = _run_layer(norm, x, kernel, k_value)
    keras.mixed_precision.set_global_policy(policy)
    mixed = _run_layer(norm, x, kernel, k_value)
    for name, a, b in zip(["output", "grad_x", "grad_kernel", "grad_k"], mixed, reference):
        assert np.isfinite(a).all(), (policy, norm, name)
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err <= POLICY_TOL[policy] * (3 if name != "output" else 1), (policy, norm, name, err)


@pytest.mark.parametrize("norm", NORMS)
def test_xla_layer_equals_eager(norm):
    x, kernel, k_value = _case(1)
    eager = _run_layer(norm, x, kernel, k_value)
    compiled = _run_layer(norm, x, kernel, k_value, jit=True)
    # same float32 math; XLA fuses and reorders sums (k's gradient sums 128 terms)
    for a, b, tol in zip(compiled, eager, [1e-5, 5e-5, 5e-5, 5e-5]):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * np.abs(b).max())


def _train(tmp_path, name, **overrides):
    labels = (np.arange(256) % 10).astype(np.int32)
    data = ((synthetic_images(labels, 0), labels), (synthetic_images(labels[:40], 1), labels[:40]))
    module = load_module("train_spherenet.py")
    s = Settings(max_epoch=4, batch_sz=16, batch_test=40, log_every=1, eval_every=1000,
                 save_every=1000, checkpoint_every=1000, model_file=str(tmp_path / name) + "/",
                 progress="off", norm="linear", **overrides)
    trainer = script_trainer(s, module.build_model, data=data)
    trainer.fit()
    keras.mixed_precision.set_global_policy("float32")
    return [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_with_xla_and_mixed_precision_tracks_float32(tmp_path, restore_policy, capsys):
    plain = _train(tmp_path, "plain")
    xla = _train(tmp_path, "xla", jit_compile=True)
    mixed = _train(tmp_path, "mixed", mixed_precision=True)
    assert precision_policy(True) == "mixed_bfloat16"  # no GPU here: bfloat16, no loss scaling
    assert json.loads((tmp_path / "mixed" / "settings.json").read_text())["precision_policy"] == "mixed_bfloat16"
    for a, b, c in zip(plain, xla, mixed):
        # XLA: same float32 math, other summation orders, which Adam's first steps
        # amplify as they do a strategy's (support/tolerances.py)
        tol = FIRST_STEP_TOL if a["iteration"] == 1 else LATER_TOL
        for key in ("fit", "reg", "orth"):
            assert b[key] == pytest.approx(a[key], rel=tol), ("xla", a["iteration"], key)
            assert c[key] == pytest.approx(a[key], rel=5e-2), ("mixed", a["iteration"], key)
