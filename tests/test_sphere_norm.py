"""SphereNorm (beyond the original): at alpha = beta = 1 exactly the convolution, at
alpha = beta = 0 exactly the cosine SphereConv, in between a NumPy reference; the
Keras contract; the model options with and without BatchNorm."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import numpy_beyond as ref
from support.repo import load_module
from support.fake_cifar import synthetic_images
from spherenet_tf import SphereConv2D, portable_ops, sphere_ops
from spherenet_tf.models import build_cnn9, build_resnet32
from spherenet_tf.sphere_norm import SphereNorm2D, UnitInterval
from support.runs import script_trainer
from spherenet_tf.training import Settings


def _input(seed=0, shape=(2, 9, 9, 5), scale=2.0):
    return (np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("strides,padding", [(1, "same"), (2, "same"), (1, "valid")])
def test_fall_back_is_exactly_the_convolution(strides, padding):
    x = _input()
    layer = SphereNorm2D(6, 3, strides=strides, padding=padding, alpha_init=1.0, beta_init=1.0)
    y = layer(x).numpy()
    conv = keras.layers.Conv2D(6, 3, strides=strides, padding=padding, use_bias=False)
    conv.build(x.shape)
    conv.kernel.assign(layer.kernel)
    np.testing.assert_array_equal(y, conv(x).numpy())


def test_initial_value_is_exactly_the_cosine_sphereconv():
    x = _input(1)
    layer = SphereNorm2D(6, 3, strides=2)
    y = layer(x).numpy()
    np.testing.assert_array_equal(layer.alpha.numpy(), np.zeros(6, np.float32))
    # exactly the cosine SphereConv's formula, conv / |x| / |W| in the original's order ...
    conv = tf.nn.conv2d(x, layer.kernel, 2, "SAME")
    cosine = conv / sphere_ops.patch_norm(x, (3, 3), (2, 2)) / portable_ops.filter_norm(layer.kernel)
    np.testing.assert_array_equal(y, cosine.numpy())
    # ... which SphereConv2D's fast path (unit filters) gives up to float32 rounding
    sphere = SphereConv2D(6, 3, strides=2, norm="cosine")
    sphere.build(x.shape)
    sphere.kernel.assign(layer.kernel)
    np.testing.assert_allclose(y, sphere(x).numpy(), rtol=0, atol=1e-6)
    assert np.abs(y).max() <= 1.0


def test_learned_exponents_match_numpy():
    x = _input(2)
    layer = SphereNorm2D(4, 3, strides=2)
    layer.build(x.shape)
    alpha = np.array([0.0, 0.25, 0.6, 1.0], np.float32)
    beta = np.array([1.0, 0.5, 0.1, 0.0], np.float32)
    layer.alpha.assign(alpha)
    layer.beta.assign(beta)
    expected = ref.sphere_norm(x, layer.kernel.numpy(), alpha.astype(np.float64),
                               beta.astype(np.float64), stride=2)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


def test_exponents_learn_and_stay_in_the_unit_interval():
    x = tf.constant(_input(3))
    layer = SphereNorm2D(4, 3)
    layer.build(x.shape)
    with tf.GradientTape() as tape:
        loss = -tf.reduce_sum(tf.square(layer(x)))  # pushes towards larger outputs
    grads = tape.gradient(loss, layer.trainable_variables)
    names = [v.name for v in layer.trainable_variables]
    assert names == ["kernel", "alpha", "beta"]
    assert all(np.abs(g.numpy()).max() > 0 for g in grads)
    optimizer = keras.optimizers.SGD(100.0)
    layer.alpha.assign(np.full(4, 0.5, np.float32))
    optimizer.apply_gradients([(tf.constant([1.0, -1.0, 1.0, -1.0]), layer.alpha)])
    np.testing.assert_array_equal(layer.alpha.numpy(), [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(UnitInterval()(tf.constant([-2.0, 0.3, 7.0])).numpy(),
                                  np.array([0.0, 0.3, 1.0], np.float32))


def test_fixed_exponents_are_not_trained():
    layer = SphereNorm2D(4, 3, alpha_init=1.0, beta_init=1.0, trainable_exponents=False)
    layer.build((None, 8, 8, 3))
    assert [v.name for v in layer.trainable_variables] == ["kernel"]
    assert [v.name for v in layer.non_trainable_variables] == ["alpha", "beta"]


def test_config_and_keras_file_round_trip(tmp_path):
    x = _input(4)
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, SphereNorm2D(4, 3, orth=True, alpha_init=0.3, name="sn")(inputs))
    model.get_layer("sn").beta.assign(np.linspace(0, 1, 4).astype(np.float32))
    config = model.get_layer("sn").get_config()
    assert (config["alpha_init"], config["beta_init"], config["norm"]) == (0.3, 0.0, "cosine")
    assert "magnitude" not in config and "w_norm" not in config
    assert SphereNorm2D.from_config(config).get_config() == config
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(restored.get_layer("sn"), SphereNorm2D)
    np.testing.assert_array_equal(restored.get_layer("sn").beta.numpy(),
                                  np.linspace(0, 1, 4).astype(np.float32))
    np.testing.assert_array_equal(restored(x).numpy(), model(x).numpy())
    assert len(model.get_layer("sn").losses) == 1  # orth, as SphereConv2D


@pytest.mark.parametrize("kwargs,message", [
    (dict(norm="linear"), r"built on the cosine SphereConv.*Received: norm='linear'"),
    (dict(w_norm="cosine"), r"does not take `w_norm`.*Received: w_norm='cosine'"),
    (dict(magnitude="tanh"), r"does not take `magnitude`"),
    (dict(alpha_init=1.5), r"`alpha_init` argument of SphereNorm2D: expected a number in \[0, 1\]"),
    (dict(trainable_exponents="yes"), r"`trainable_exponents`.*expected True or False"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SphereNorm2D(4, 3, **kwargs)


def test_model_options_with_and_without_batchnorm():
    default = build_cnn9()
    with_bn = build_cnn9(sphere_norm=True)
    without_bn = build_cnn9(sphere_norm=True, bn=False)
    convs = [f"conv{s}_{i}" for s in (1, 2, 3) for i in range(3)] + ["fc6"]
    for model in (with_bn, without_bn):
        assert all(isinstance(model.get_layer(n), SphereNorm2D) for n in convs)
        assert type(model.get_layer("score")) is SphereConv2D
    bn_layers = [l for l in without_bn.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bn_layers == []
    # parameters: alpha and beta per filter; without BN no gamma/beta/moving statistics
    filters = 3 * (128 + 192 + 256) + 256
    assert with_bn.count_params() == default.count_params() + 2 * filters
    assert without_bn.count_params() == default.count_params() + 2 * filters - 4 * (filters - 256)
    resnet = build_resnet32(norm="cosine", sphere_norm=True, bn=False, units_per_stage=1)
    assert isinstance(resnet.get_layer("block2_unit0_first"), SphereNorm2D)
    assert type(resnet.get_layer("block2_unit0_shortcut")) is SphereConv2D  # plain, as the original
    with pytest.raises(ValueError, match=r"sphere_norm=True .* needs norm='cosine'.*norm='linear'"):
        build_cnn9(norm="linear", sphere_norm=True)


def test_spherenet_settings_file_switches():
    spherenet = load_module("spherenet.py")
    assert (spherenet.sphere_norm, spherenet.bn, spherenet.magnitude) == (False, True, "none")
    default = spherenet.build_spherenet()
    assert type(default.get_layer("conv1_0")) is SphereConv2D and default.get_layer("conv1_0_bn")
    model = spherenet.build_spherenet(sphere_norm=True, bn=False)
    assert isinstance(model.get_layer("conv1_0"), SphereNorm2D)
    assert "conv1_0_bn" not in [l.name for l in model.layers]


def test_spherenet9_trains_with_sphere_norm_and_no_batchnorm(tmp_path):
    labels = (np.arange(320) % 10).astype(np.int32)
    test_labels = (np.arange(50) % 10).astype(np.int32)
    data = ((synthetic_images(labels, 0), labels), (synthetic_images(test_labels, 1), test_labels))
    s = Settings(max_epoch=30, batch_sz=16, batch_test=50, log_every=10, eval_every=30,
                 save_every=1000, checkpoint_every=1000, model_file=str(tmp_path) + "/",
                 progress="off")
    trainer = script_trainer(s, lambda s: build_cnn9(widths=(8, 8, 8), sphere_norm=True, bn=False),
                      data=data)
    test_acc = trainer.fit()
    metrics = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    fits = [m["fit"] for m in metrics if "fit" in m]
    assert fits[-1] < fits[0], fits  # bounded (cosine) features: the loss falls slowly
    assert test_acc > 0.3  # 10 classes: chance is 0.1
