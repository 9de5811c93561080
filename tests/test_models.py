"""Model builders: original layer names, variable inventories and parameter counts
equal to the original's (tests/golden/vars_<name>.json), settings switches."""

import json

import keras
import numpy as np
import pytest

from support.repo import golden_path, load_module
from support.golden_models import build
from spherenet_tf import SphereConv2D
from spherenet_tf.tf1_names import tf1_variables

INVENTORY_KINDS = {"filter", "bn_gamma", "bn_beta", "k_value_lr", "ema_mean", "ema_var"}


@pytest.mark.parametrize("name", ["spherenet9", "baseline_cnn", "sphere_resnet32", "baseline_resnet32"])
def test_variables_match_the_originals_inventory(name):
    with open(golden_path(f"vars_{name}.json")) as f:
        inventory = json.load(f)
    expected = {v["name"]: tuple(v["shape"]) for v in inventory["variables"]
                if v["kind"] in INVENTORY_KINDS}
    model = build(name)
    got = {n: tuple(v.shape) for n, v in tf1_variables(model).items()}
    assert got == expected
    n_expected = sum(int(np.prod(s)) for s in expected.values())
    assert model.count_params() == n_expected
    trainable = sum(int(np.prod(v["shape"])) for v in inventory["variables"] if v["trainable"])
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == trainable


def test_spherenet9_structure_and_switches():
    spherenet = load_module("spherenet.py")
    assert (spherenet.norm, spherenet.w_norm) == ("cosine", "none")
    model = spherenet.build_spherenet()
    convs = {l.name: l for l in model.layers if isinstance(l, SphereConv2D)}
    assert list(convs) == [f"conv{s}_{i}" for s in (1, 2, 3) for i in range(3)] + ["fc6", "score"]
    for name in list(convs)[:-1]:
        assert (convs[name].norm, convs[name].orth, convs[name].kernel_regularizer) == ("cosine", True, None)
    score = convs["score"]
    assert (score.norm, score.w_norm, score.orth) == ("none", "none", False)
    assert score.kernel_regularizer is not None
    assert [l.name for l in model.layers if isinstance(l, keras.layers.BatchNormalization)] == [
        f"conv{s}_{i}_bn" for s in (1, 2, 3) for i in range(3)]
    assert tuple(model.output.shape) == (None, 10)

    linear = spherenet.build_spherenet(n_class=100, norm="linear", w_norm="cosine")
    convs = {l.name: l for l in linear.layers if isinstance(l, SphereConv2D)}
    assert convs["conv2_1"].norm == "linear" and convs["fc6"].norm == "linear"
    assert convs["score"].w_norm == "cosine" and convs["score"].filters == 100
    wide = spherenet.build_spherenet(widths=(128, 196, 256), fc6_bn=True)
    assert wide.get_layer("conv2_0").filters == 196
    assert isinstance(wide.get_layer("fc6_bn"), keras.layers.BatchNormalization)


def test_baseline_is_a_plain_cnn_with_weight_decay():
    model = load_module("baseline/baseline_cnn.py").build_baseline_cnn()
    convs = [l for l in model.layers if isinstance(l, SphereConv2D)]
    assert len(convs) == 11
    assert all(l.norm == "none" and l.w_norm == "none" and not l.orth for l in convs)
    assert all(l.kernel_regularizer is not None for l in convs)


def test_model_normalises_images_inside():
    """The model takes 0..255 floats and computes (x - 127.5) / 128 bit for bit."""
    model = load_module("spherenet.py").build_spherenet()
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    normalised = model.get_layer("normalize")(x).numpy()
    np.testing.assert_array_equal(normalised, (x - np.float32(127.5)) / np.float32(128.0))


@pytest.mark.parametrize("bad", [dict(norm="cosinus"), dict(w_norm="lr_sigmoid")])
def test_builder_rejects_bad_switches(bad):
    spherenet = load_module("spherenet.py")
    with pytest.raises(ValueError, match="Allowed values are"):
        spherenet.build_spherenet(**bad)


def test_resnet_structure_and_names():
    model = load_module("sphere_resnet/sphere_resnet_v1.py").build_sphere_resnet()
    convs = {l.name: l for l in model.layers if isinstance(l, SphereConv2D)}
    expected = ["root"]
    for s in (1, 2, 3):
        for i in range(5):
            expected += [f"block{s}_unit{i}_first", f"block{s}_unit{i}_second"]
            if i == 0 and s > 1:
                expected.append(f"block{s}_unit{i}_shortcut")
    assert sorted(convs) == sorted(expected + ["score"])
    for name in expected:
        layer = convs[name]
        if name.endswith("shortcut"):
            assert (layer.norm, layer.orth, layer.kernel_size) == ("none", False, (1, 1))
            assert layer.kernel_regularizer is not None and layer.strides == (2, 2)
        else:
            assert (layer.norm, layer.orth, layer.kernel_regularizer) == ("linear", True, None)
    assert convs["block2_unit0_first"].strides == (2, 2) and convs["block2_unit1_first"].strides == (1, 1)
    assert "block1_unit0_shortcut" not in convs  # identity shortcut when widths match
    assert model.get_layer("avg_pool").output.shape[1:3] == (1, 1)
    base = load_module("sphere_resnet/baseline/baseline_resnet.py").build_baseline_resnet()
    assert all(l.norm == "none" and not l.orth and l.kernel_regularizer is not None
               for l in base.layers if isinstance(l, SphereConv2D))


def test_a_strided_unit_that_keeps_its_width_gets_a_strided_shortcut():
    """A residual unit of stride 2 that keeps its width: the original takes the identity
    shortcut there and fails in the Add with a shape error (no network of the original
    has such a unit); the port gives it the strided 1x1 shortcut (docs/differences.md)."""
    from spherenet_tf.models import build_resnet32

    model = build_resnet32(widths=(8, 8, 8), units_per_stage=1, name="same_width")
    shortcut = model.get_layer("block2_unit0_shortcut")
    assert shortcut.strides == (2, 2) and shortcut.kernel_size == (1, 1)
    assert "block1_unit0_shortcut" not in [layer.name for layer in model.layers]  # stride 1: identity
    x = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    # the unit's output is relu(residual + shortcut(x)), both at the halved resolution
    unit_in = model.get_layer("block1_unit0_relu").output
    probe = keras.Model(model.inputs, [unit_in, model.get_layer("block2_unit0_second_bn").output,
                                       model.get_layer("block2_unit0_shortcut_bn").output,
                                       model.get_layer("block2_unit0_relu").output])
    x_in, residual, short, out = (t.numpy() for t in probe(x, training=False))
    assert x_in.shape == (2, 32, 32, 8) and out.shape == (2, 16, 16, 8)
    np.testing.assert_allclose(out, np.maximum(residual + short, 0), rtol=1e-6, atol=1e-6)
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", ["spherenet9", "baseline_cnn", "sphere_resnet32", "baseline_resnet32"])
def test_the_table_of_original_networks_builds_what_the_scripts_build(name):
    # build_original (used by the self-check and the benchmarks) must not drift from the
    # settings files users edit: the same layers, each with the same configuration.
    from spherenet_tf.models import build_original

    script_model, table_model = build(name), build_original(name)
    assert table_model.name == script_model.name
    assert [l.get_config() for l in table_model.layers] == [l.get_config() for l in script_model.layers]
