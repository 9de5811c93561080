"""The Keras contract of SphereConv2D over every norm x w_norm: shapes, weights,
losses, config and .keras round trips, argument errors, and distinctness."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from spherenet_tf import SphereConv2D, orthogonality_losses
from spherenet_tf.regularizers import L2Loss, orthogonality_loss

NORMS = ["none", "linear", "cosine", "sigmoid", "lr_sigmoid"]
W_NORMS = ["none", "linear", "cosine", "sigmoid"]
VARIANTS = list(itertools.product(NORMS, W_NORMS))


def _input(seed=0, shape=(2, 9, 9, 5)):
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


def _layer(norm, w_norm, **kwargs):
    kwargs.setdefault("orth", True)
    return SphereConv2D(6, 3, strides=2, padding="same", norm=norm, w_norm=w_norm, **kwargs)


@pytest.mark.parametrize("norm,w_norm", VARIANTS)
def test_shape_weights_losses(norm, w_norm):
    layer = _layer(norm, w_norm)
    x = _input()
    y = layer(x)
    assert tuple(y.shape) == (2, 5, 5, 6)
    assert tuple(layer.compute_output_shape(x.shape)) == (2, 5, 5, 6)
    assert np.isfinite(y.numpy()).all()
    names = [w.name for w in layer.weights]
    expected = ["kernel", "k_value"] if norm == "lr_sigmoid" else ["kernel"]
    assert names == expected
    assert tuple(layer.kernel.shape) == (3, 3, 5, 6)
    if norm == "lr_sigmoid":
        np.testing.assert_array_equal(layer.k_value.numpy(), np.full(6, 0.7, np.float32))
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(layer.losses[0]), float(orthogonality_loss(layer.kernel)))
    if norm in ("linear", "cosine", "sigmoid", "lr_sigmoid"):
        assert np.abs(y.numpy()).max() <= 1.0 + 1e-6  # g maps [0, pi] into [-1, 1]


def test_default_initializer_is_the_originals():
    layer = SphereConv2D(256, 3)
    layer.build((None, 8, 8, 128))
    w = layer.kernel.numpy()
    expected_std = np.sqrt(2.0 / (3 * 3 * 128))
    assert abs(w.std() / expected_std - 1) < 0.01
    assert np.abs(w).max() > 2.5 * expected_std  # untruncated normal
    assert not layer.use_bias and layer.bias is None


def test_no_orth_means_no_loss_and_reg_is_separate():
    layer = SphereConv2D(4, 3, norm="cosine", kernel_regularizer=L2Loss(5e-4))
    layer(_input())
    assert len(layer.losses) == 1  # the weight decay only
    w = layer.kernel.numpy().astype(np.float64)
    np.testing.assert_allclose(float(layer.losses[0]), 5e-4 * np.sum(w * w) / 2, rtol=1e-6)
    model = keras.Sequential([keras.Input((9, 9, 5)), SphereConv2D(4, 3, orth=True, name="a"),
                              SphereConv2D(3, 3, orth=False, name="b")])
    assert len(orthogonality_losses(model)) == 1


@pytest.mark.parametrize("norm,w_norm", VARIANTS)
def test_config_round_trip(norm, w_norm):
    layer = _layer(norm, w_norm, kernel_regularizer=L2Loss(5e-4), name="sc")
    x = _input()
    y = layer(x)
    clone = SphereConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), y.numpy())
    config = layer.get_config()
    assert (config["norm"], config["w_norm"], config["orth"]) == (norm, w_norm, True)


@pytest.mark.parametrize("norm,w_norm", VARIANTS)
def test_keras_file_round_trip(norm, w_norm, tmp_path):
    inputs = keras.Input((9, 9, 5))
    outputs = _layer(norm, w_norm, kernel_regularizer=L2Loss(5e-4), name="sc")(inputs)
    model = keras.Model(inputs, outputs)
    if norm == "lr_sigmoid":  # make k differ from its initial value so loading is tested
        model.get_layer("sc").k_value.assign(np.linspace(-0.5, 1.5, 6).astype(np.float32))
    x = _input(1)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    layer = loaded.get_layer("sc")
    assert isinstance(layer, SphereConv2D) and (layer.norm, layer.w_norm) == (norm, w_norm)
    assert isinstance(layer.kernel_regularizer, L2Loss)


def test_variants_differ_on_the_same_weights():
    x = _input(3)
    outputs = {}
    reference = _layer("none", "none")
    reference.build(x.shape)
    weights = reference.kernel.numpy()
    for norm, w_norm in VARIANTS:
        layer = _layer(norm, w_norm)
        layer.build(x.shape)
        layer.kernel.assign(weights)
        outputs[(norm, w_norm)] = layer(x).numpy()
    for a, b in itertools.combinations(VARIANTS, 2):
        diff = np.abs(outputs[a] - outputs[b]).max()
        assert diff > 1e-3, f"{a} and {b} give the same output (max diff {diff})"


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(norm="cosin"), r"`norm` argument of SphereConv2D.*'none', 'linear', 'cosine', "
                             r"'sigmoid', 'lr_sigmoid'.*Received: norm='cosin'.*Did you mean 'cosine'"),
        (dict(norm="Linear"), r"Received: norm='Linear'.*Did you mean 'linear'"),
        (dict(norm=None), r"`norm` argument.*Received: norm=None"),
        (dict(w_norm="lr_sigmoid"), r"`w_norm` argument of SphereConv2D.*'none', 'linear', "
                                    r"'cosine', 'sigmoid'\. Received: w_norm='lr_sigmoid'"),
        (dict(w_norm=True), r"`w_norm` argument.*Received: w_norm=True"),
        (dict(orth="yes"), r"`orth` argument of SphereConv2D: expected True or False. "
                           r"Received: orth='yes'"),
        (dict(padding="full"), r"padding"),
        (dict(data_format="channels_first"), r"'channels_last' only.*Received: data_format="
                                             r"'channels_first'"),
        (dict(groups=2), r"groups > 1 is not supported with norm='cosine'"),
    ],
)
def test_bad_arguments_are_rejected_clearly(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SphereConv2D(4, 3, **kwargs)


def test_conv2d_arguments_still_work():
    layer = SphereConv2D(4, 3, norm="cosine", use_bias=True, activation="relu",
                         kernel_constraint=keras.constraints.MaxNorm(1.0),
                         kernel_initializer="zeros", padding="VALID")
    y = layer(_input())
    assert tuple(y.shape) == (2, 7, 7, 4)
    assert [w.name for w in layer.weights] == ["kernel", "bias"]
    assert (y.numpy() >= 0).all()
    plain = SphereConv2D(4, 3, norm="none", groups=1)
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)
    x = _input(5)
    plain.build(x.shape)
    conv.build(x.shape)
    conv.kernel.assign(plain.kernel)
    np.testing.assert_array_equal(plain(x).numpy(), conv(x).numpy())


def test_gradients_reach_every_weight():
    x = tf.constant(_input(4))
    for norm, w_norm in VARIANTS:
        layer = _layer(norm, w_norm)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(x))) + tf.add_n(layer.losses)
        grads = tape.gradient(loss, layer.trainable_weights)
        for v, g in zip(layer.trainable_weights, grads):
            assert g is not None and np.isfinite(g.numpy()).all(), (norm, w_norm, v.name)
            assert np.abs(g.numpy()).max() > 0, (norm, w_norm, v.name)


def test_formulation_is_not_saved(tmp_path):
    """How a layer computes is not part of the model: a .keras file saved from a
    'portable' layer has no `formulation` in its config and loads with the default."""
    import json
    import zipfile

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, SphereConv2D(4, 3, norm="sigmoid", formulation="portable")(inputs))
    path = tmp_path / "m.keras"
    model.save(path)
    with zipfile.ZipFile(path) as z:
        config = z.read("config.json").decode()
    assert "formulation" not in config and "sigmoid" in config
    loaded = keras.saving.load_model(path)
    assert loaded.layers[-1].formulation == "fast"
    x = np.random.RandomState(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
