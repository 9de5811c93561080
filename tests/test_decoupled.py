"""Decoupled operators of "Decoupled Networks" (Liu et al., CVPR 2018; DCNets) as
SphereConv2D's `magnitude` option (beyond the original): every magnitude against a
NumPy reference, DCNets' three ways of getting rho, the Keras contract."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import numpy_beyond as ref
from spherenet_tf import SphereConv2D
from spherenet_tf.models import build_cnn9

MAGNITUDES = ["none", "ball", "tanh", "linear", "seg", "log"]


def _input(seed=0, shape=(2, 9, 9, 5), scale=1.5):
    return (np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32)


def _close(got, expected):
    scale = max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("norm", ["cosine", "linear"])
def test_fixed_rho_matches_numpy(magnitude, norm):
    x = _input()
    layer = SphereConv2D(6, 3, strides=2, norm=norm, magnitude=magnitude, rho=7.0)
    y = layer(x).numpy()
    expected, xnorm = ref.decoupled_conv(x, layer.kernel.numpy(), magnitude, norm, rho=7.0, stride=2)
    _close(y, expected)
    if magnitude in ("ball", "tanh", "seg"):  # the patch norms straddle rho = 7
        assert (xnorm < 7.0).any() and (xnorm > 7.0).any()
    assert [w.name for w in layer.weights] == ["kernel"]


@pytest.mark.parametrize("magnitude", ["ball", "tanh", "seg"])
def test_learned_rho_is_radius_squared_plus_eps(magnitude):
    x = _input(1)
    layer = SphereConv2D(4, 3, norm="cosine", magnitude=magnitude, rho="learned")
    layer.build(x.shape)
    np.testing.assert_array_equal(layer.radius.numpy(), np.ones(4, np.float32))  # DCNets' init
    radius = np.array([0.5, 1.0, 2.0, -3.0], np.float32)
    layer.radius.assign(radius)
    expected, _ = ref.decoupled_conv(x, layer.kernel.numpy(), magnitude,
                                     rho=radius.astype(np.float64) ** 2 + 1e-4)
    _close(layer(x).numpy(), expected)
    assert [w.name for w in layer.weights] == ["kernel", "radius"]


@pytest.mark.parametrize("magnitude", ["ball", "tanh", "seg"])
def test_batch_mean_rho_in_training_and_inference(magnitude):
    """rho = (r^2 + 1e-4) * mean |x|: the batch mean in training, which also updates a
    moving average (decay 0.999, starting at 0); that average in inference."""
    x = _input(2)
    layer = SphereConv2D(4, 3, norm="cosine", magnitude=magnitude)
    layer.build(x.shape)
    radius = np.array([0.7, 1.0, 1.3, 2.0], np.float32)
    layer.radius.assign(radius)
    scale = radius.astype(np.float64) ** 2 + 1e-4
    assert float(layer.xnorm_moving_mean.numpy()) == 0.0
    w = layer.kernel.numpy()
    expected, xnorm = ref.decoupled_conv(x, w, magnitude, rho=lambda n: scale * n.mean())
    _close(layer(x, training=True).numpy(), expected)
    moving = float(layer.xnorm_moving_mean.numpy())
    assert moving == pytest.approx((1 - 0.999) * xnorm.mean(), rel=1e-4)
    expected, _ = ref.decoupled_conv(x, w, magnitude, rho=scale * moving)
    _close(layer(x, training=False).numpy(), expected)
    assert float(layer.xnorm_moving_mean.numpy()) == moving  # inference leaves it alone


def test_batch_mean_rho_gets_gradient_through_the_batch_mean():
    x = tf.constant(_input(3))
    layer = SphereConv2D(4, 3, norm="cosine", magnitude="tanh")
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(layer(x, training=True))
    grads = tape.gradient(y, [x, layer.kernel, layer.radius])
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    assert np.abs(grads[2].numpy()).min() > 0


def test_magnitude_none_is_todays_sphereconv():
    x = _input(4)
    default = SphereConv2D(6, 3, norm="sigmoid")
    explicit = SphereConv2D(6, 3, norm="sigmoid", magnitude="none", rho=2.0)
    y = default(x)
    explicit.build(x.shape)
    explicit.set_weights(default.get_weights())
    np.testing.assert_array_equal(explicit(x, training=True).numpy(), y.numpy())
    assert [w.name for w in default.weights] == ["kernel"]
    assert default.get_config()["magnitude"] == "none"


@pytest.mark.parametrize("magnitude,rho", [("ball", "batch_mean"), ("tanh", "learned"),
                                           ("seg", 2.5), ("log", "batch_mean")])
def test_config_and_keras_file_round_trip(magnitude, rho, tmp_path):
    x = _input(5)
    inputs = keras.Input(x.shape[1:])
    outputs = SphereConv2D(4, 3, norm="cosine", magnitude=magnitude, rho=rho, orth=True,
                           name="dc")(inputs)
    model = keras.Model(inputs, outputs)
    model(x, training=True)  # moves the moving mean away from zero
    layer = model.get_layer("dc")
    if layer.radius is not None:
        layer.radius.assign(np.linspace(0.5, 2.0, 4).astype(np.float32))
    config = layer.get_config()
    assert (config["magnitude"], config["rho"]) == (magnitude, rho)
    assert SphereConv2D.from_config(config).get_config() == config
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    for a, b in zip(model.get_layer("dc").weights, restored.get_layer("dc").weights):
        assert a.name == b.name
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(restored(x).numpy(), model(x).numpy())


@pytest.mark.parametrize("kwargs,message", [
    (dict(magnitude="tan"), r"Unknown value for `magnitude` argument of SphereConv2D\. Allowed "
                            r"values are: 'none', 'ball', 'tanh', 'linear', 'seg', 'log'\. "
                            r"Received: magnitude='tan'\. Did you mean 'tanh'\?"),
    (dict(magnitude="tanh", norm="none"), r"needs an angular `norm`\. Received: norm='none'"),
    (dict(magnitude="ball", rho=-1.0), r"Invalid value for `rho` argument of SphereConv2D\. "
                                       r"Allowed values are: 'batch_mean', 'learned' or a "
                                       r"positive number\. Received: rho=-1\.0"),
    (dict(magnitude="ball", rho="mean"), r"Received: rho='mean'"),
    (dict(magnitude="ball", rho=True), r"Received: rho=True"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SphereConv2D(4, 3, **kwargs)


def test_model_builder_option():
    model = build_cnn9(widths=(8, 8, 8), magnitude="tanh", rho="learned")
    convs = [model.get_layer(n) for n in ("conv1_0", "conv3_2", "fc6")]
    assert all(l.magnitude == "tanh" and l.rho == "learned" for l in convs)
    assert model.get_layer("score").magnitude == "none"  # the classifier stays as it was
    y = model(np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32),
              training=True)
    assert np.isfinite(y.numpy()).all()
    with pytest.raises(ValueError, match=r"Unknown value for `magnitude` argument of build_cnn9"):
        build_cnn9(magnitude="tan")
