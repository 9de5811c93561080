"""Importing checkpoints of the original TF1 code (spherenet_tf.tf1_checkpoint).

* The real checkpoint the original code wrote after 3 Adam steps
  (`spherenet9_ckpt/`, 46 MB, not in the repository: see conftest) must give the original's eval-mode and
  training-mode logits, put every variable in place (its stored sums), restore Adam so
  that the next step is the original's Adam step.
* For all four models, checkpoints written here with `tf.compat.v1.train.Saver` under
  the original's names (tests/golden/vars_<name>.json) must reproduce the
  original's forward pass (`ref_eval`), and every variable must land where its name
  says (checked against a name rule written out below from REFERENCE.md's facts).
* Each refusal names what differs and leaves the model untouched.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from support.repo import golden_path, load_module, original_checkpoint
from support.golden_rules import check, load_npz, rule_value, weight_prefix
from support.tf1_writer import distinct_values, tf1_adam_powers, write_tf1_checkpoint
from spherenet_tf import SphereConv2D
from spherenet_tf.regularizers import regularization_terms
from spherenet_tf.losses import loss2
from spherenet_tf.models import build_cnn9, build_resnet32, feature_model
from spherenet_tf.tf1_checkpoint import (
    TF1CheckpointError, adam_steps_from_powers, load_tf1_checkpoint, resolve_checkpoint_path,
)

FWD_TOL = 1e-5  # forward values against the original (REFERENCE.md, tolerances)
ADAM = dict(beta_1=0.9, beta_2=0.999, epsilon=1e-8)
WEIGHT_KINDS = {"filter", "bn_gamma", "bn_beta", "k_value_lr", "ema_mean", "ema_var"}


def build(name, **kwargs):
    """The four golden models, built as the training scripts build them."""
    if name == "spherenet9":
        return load_module("spherenet.py").build_spherenet(10, **kwargs)
    if name == "baseline_cnn":
        return load_module("baseline/baseline_cnn.py").build_baseline_cnn(10)
    if name == "sphere_resnet32":
        return build_resnet32(norm="linear", reg=False, orth=True)
    if name == "baseline_resnet32":
        return build_resnet32(norm="none", reg=True, orth=False, name="baseline_resnet32")
    raise KeyError(name)


def keras_variable_for(model, tf1_name):
    """The Keras variable the original's variable `tf1_name` belongs in, by the naming
    facts of REFERENCE.md / golden README (scopes `a/b` are Keras layers `a_b`, BN
    layers are `<conv>_bn`), written out independently of spherenet_tf.tf1_names."""
    layer_of = lambda scope: model.get_layer(scope.replace("/", "_"))  # noqa: E731
    if tf1_name.endswith("/ExponentialMovingAverage"):
        scope = tf1_name.split("/bn/")[0]
        bn = layer_of(scope + "_bn")
        squeeze = tf1_name.split("/")[-2]
        return {"Squeeze": bn.moving_mean, "Squeeze_1": bn.moving_variance}[squeeze]
    if tf1_name.endswith("/bn/gamma/bias"):
        return layer_of(tf1_name[: -len("/bn/gamma/bias")] + "_bn").gamma
    if tf1_name.endswith("/bn/beta/bias"):
        return layer_of(tf1_name[: -len("/bn/beta/bias")] + "_bn").beta
    if tf1_name.endswith("/filter"):
        return layer_of(tf1_name[: -len("/filter")]).kernel
    if tf1_name.endswith("/k_value_lr"):
        return layer_of(tf1_name[: -len("/k_value_lr")]).k_value
    raise KeyError(tf1_name)


def original_names(model):
    """{TF1 name: shape} of a port model by the original's naming pattern (for layouts
    without a vars JSON, e.g. the original's examples)."""
    names = {}
    for layer in model.layers:
        if isinstance(layer, SphereConv2D):
            scope = layer.name
            for part in ("first", "second", "shortcut"):
                scope = scope.replace(f"_{part}", f"/{part}")
            names[f"{scope}/filter"] = tuple(layer.kernel.shape)
            if layer.norm == "lr_sigmoid":
                names[f"{scope}/k_value_lr"] = (layer.filters,)
        elif isinstance(layer, keras.layers.BatchNormalization):
            scope = layer.name[: -len("_bn")]
            for part in ("first", "second", "shortcut"):
                scope = scope.replace(f"_{part}", f"/{part}")
            n = (layer.gamma.shape[0],)
            names[f"{scope}/bn/gamma/bias"] = n
            names[f"{scope}/bn/beta/bias"] = n
            names[f"{scope}/bn/{scope}/bn/moments/Squeeze/ExponentialMovingAverage"] = n
            names[f"{scope}/bn/{scope}/bn/moments/Squeeze_1/ExponentialMovingAverage"] = n
    return names


def with_adam_state(weights, steps_powers, seed=1):
    """Weights plus Adam slots of the trainable ones (distinct values) and beta powers."""
    trainable = {n: np.shape(v) for n, v in weights.items()
                 if not n.endswith("ExponentialMovingAverage")}
    slots = distinct_values({f"{n}/{s}": shape for n, shape in trainable.items()
                             for s in ("Adam", "Adam_1")}, seed=seed)
    slots = {n: np.abs(v) if n.endswith("Adam_1") else v for n, v in slots.items()}
    beta1, beta2 = steps_powers
    return {**weights, **slots, "beta1_power": beta1, "beta2_power": beta2}


def all_weights(model):
    return [v.numpy().copy() for v in model.variables]


def adam_slot(optimizer, variable, slot):
    index = optimizer._get_variable_index(variable)
    return (optimizer._momentums if slot == "Adam" else optimizer._velocities)[index]


@pytest.fixture(scope="module")
def powers_1234():
    """Beta powers of the original's optimizer after 1234 steps (beta1_power has
    underflowed to 0 by then: only beta2_power tells the step count)."""
    return tf1_adam_powers(1234)


# ---------------------------------------------------------------------------
# The real checkpoint of the original
# ---------------------------------------------------------------------------
@pytest.fixture
def golden_loaded():
    path = original_checkpoint()
    model = build("spherenet9")
    optimizer = keras.optimizers.Adam(1e-3, **ADAM)
    info = load_tf1_checkpoint(model, str(path), optimizer=optimizer)
    return model, optimizer, info


def test_golden_checkpoint_gives_the_originals_logits(golden_loaded):
    model, _, info = golden_loaded
    g = load_npz("model_spherenet9.npz")
    assert (info.adam_steps, info.iteration, info.iteration_source) == (3, 2, "beta powers")
    assert len(info.loaded) == 47  # 11 filters + 9 BN x (gamma, beta, mean, variance)
    features = feature_model(model)
    fixture = "spherenet9_ckpt (imported)"
    for mode, training in (("eval", False), ("train", True)):
        logits, feature = features(tf.constant(g["images"]), training=training)
        key = f"after_adam/{mode}"
        check(fixture, f"{key}/score", logits.numpy(), g[f"{key}/score"], FWD_TOL)
        check(fixture, f"{key}/feature", feature.numpy(), g[f"{key}/feature"], FWD_TOL)
        check(fixture, f"{key}/fit", loss2(logits, g["labels"]).numpy(), g[f"{key}/fit"], FWD_TOL)
        reg, orth = regularization_terms(model)  # functions of every weight
        check(fixture, f"{key}/reg", reg.numpy(), g[f"{key}/reg"], FWD_TOL)
        check(fixture, f"{key}/orth", orth.numpy(), g[f"{key}/orth"], FWD_TOL)
        if not training:
            largest = float(np.max(np.abs(logits.numpy().ravel() - g[f"{key}/score"].ravel())))
            print(f"largest eval-mode logit difference: {largest:.3g}")


def test_golden_checkpoint_puts_every_variable_in_place(golden_loaded):
    model, _, _ = golden_loaded
    g = load_npz("model_spherenet9.npz")
    with open(golden_path("vars_spherenet9.json")) as f:
        inventory = json.load(f)["variables"]
    n = 0
    for entry in inventory:
        if entry["kind"] not in WEIGHT_KINDS:
            continue
        value = keras_variable_for(model, entry["name"]).numpy().astype(np.float64)
        assert np.sum(value) == pytest.approx(entry["after_adam3_sum"], rel=1e-9, abs=1e-12), entry["name"]
        assert np.sum(value * value) == pytest.approx(entry["after_adam3_sumsq"], rel=1e-9), entry["name"]
        key = f"after_adam/var/{entry['name']}"
        if key in g:
            np.testing.assert_array_equal(value, g[key], err_msg=entry["name"])
        n += 1
    assert n == 47 == len(model.variables)


def test_golden_checkpoint_restores_adam_and_continues_as_the_original(golden_loaded):
    """Restored slots are the original's; the next step is TF1 Adam's 4th step (from the
    checkpoint's own beta powers), and it lowers the loss further."""
    model, optimizer, _ = golden_loaded
    g = load_npz("model_spherenet9.npz")
    assert int(optimizer.iterations.numpy()) == 3
    n = 0
    for key in g.keys():
        if key.startswith("after_adam/var/") and key.endswith(("/Adam", "/Adam_1")):
            base, slot = key[len("after_adam/var/"):].rsplit("/", 1)
            restored = adam_slot(optimizer, keras_variable_for(model, base), slot).numpy()
            np.testing.assert_array_equal(restored, g[key], err_msg=key)
            n += 1
    assert n >= 38  # every slot of BN gamma/beta and score

    reader = tf.train.load_checkpoint(str(original_checkpoint()))
    b1, b2 = reader.get_tensor("beta1_power"), reader.get_tensor("beta2_power")
    variables = model.trainable_variables
    before = [v.numpy().astype(np.float64) for v in variables]
    m0 = [adam_slot(optimizer, v, "Adam").numpy().astype(np.float64) for v in variables]
    v0 = [adam_slot(optimizer, v, "Adam_1").numpy().astype(np.float64) for v in variables]
    images, labels = tf.constant(g["images"]), g["labels"]
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        reg, orth = regularization_terms(model)
        total = loss2(logits, labels) + reg + orth
    grads = tape.gradient(total, variables)
    optimizer.apply_gradients(zip(grads, variables))
    # TF1 AdamOptimizer's step with the checkpoint's beta powers (NumPy, float64)
    lr_t = 1e-3 * np.sqrt(1 - float(b2)) / (1 - float(b1))
    for var, w, m, v, grad in zip(variables, before, m0, v0, grads):
        grad = grad.numpy().astype(np.float64)
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        expected = -lr_t * m / (np.sqrt(v) + 1e-8)
        step = var.numpy().astype(np.float64) - w
        scale = np.max(np.abs(expected))
        assert np.max(np.abs(step - expected)) <= 1e-4 * scale + 1e-9, var.path
    assert int(optimizer.iterations.numpy()) == 4
    logits = model(images, training=True)
    reg, orth = regularization_terms(model)
    assert float(loss2(logits, labels) + reg + orth) < float(g["after_adam/train/total"])


# ---------------------------------------------------------------------------
# Checkpoints written here, for every model
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["spherenet9", "baseline_cnn", "sphere_resnet32", "baseline_resnet32"])
def test_original_names_reproduce_the_originals_forward_pass(name, tmp_path, powers_1234):
    """Rule-2.1 weights and the fixture's reference BN statistics, saved under the
    original's names by a TF1 Saver: the imported model gives the original's `ref_eval`
    logits, reg and orth; for the 9-layer nets the Adam slots land where their names say
    and the step count comes from beta2_power."""
    with open(golden_path(f"vars_{name}.json")) as f:
        inventory = json.load(f)["variables"]
    g = load_npz(f"model_{name}.npz")
    prefix = weight_prefix()
    weights = {}
    for entry in inventory:
        kind, tf1_name = entry["kind"], entry["name"]
        if kind in ("filter", "bn_gamma", "bn_beta", "k_value_lr"):
            weights[tf1_name] = rule_value(tf1_name, tuple(entry["shape"]), prefix)
        elif kind in ("ema_mean", "ema_var"):
            bn = tf1_name.split("/bn/")[0] + "/bn"
            weights[tf1_name] = g[f"ema_ref/{bn}/{'mean' if kind == 'ema_mean' else 'var'}"]
    assert len(weights) == sum(e["kind"] in WEIGHT_KINDS for e in inventory)
    with_adam = name in ("spherenet9", "baseline_cnn")  # (ResNet slots: 130 MB more to write)
    values = with_adam_state(weights, powers_1234) if with_adam else weights
    if with_adam:
        assert set(values) == {e["name"] for e in inventory}  # exactly the original's variables
    path = write_tf1_checkpoint(tmp_path / "16000", values)

    model = build(name)
    optimizer = keras.optimizers.Adam(1e-3, **ADAM) if with_adam else None
    info = load_tf1_checkpoint(model, path, optimizer=optimizer)
    logits = model(tf.constant(g["images"]), training=False)
    fixture = f"model_{name}.npz via a TF1 checkpoint"
    check(fixture, "ref_eval/score", logits.numpy(), g["ref_eval/score"], FWD_TOL)
    reg, orth = regularization_terms(model)
    check(fixture, "ref_eval/reg", reg.numpy(), g["ref_eval/reg"], FWD_TOL)
    check(fixture, "ref_eval/orth", orth.numpy(), g["ref_eval/orth"], FWD_TOL)
    for tf1_name, value in weights.items():
        np.testing.assert_array_equal(keras_variable_for(model, tf1_name).numpy(), value, err_msg=tf1_name)
    if with_adam:
        assert (info.adam_steps, info.iteration, int(optimizer.iterations.numpy())) == (1234, 1233, 1234)
        for var_name in weights:
            if var_name.endswith("ExponentialMovingAverage"):
                continue
            for slot in ("Adam", "Adam_1"):
                restored = adam_slot(optimizer, keras_variable_for(model, var_name), slot).numpy()
                np.testing.assert_array_equal(restored, values[f"{var_name}/{slot}"])
    else:
        # without Adam state, the number in the original's file name tells the iteration
        assert (info.iteration, info.iteration_source) == (16000, "file name")


EXAMPLE_LAYOUT = dict(norm="lr_sigmoid", w_norm="cosine", widths=(128, 196, 256), fc6_bn=True)


@pytest.fixture(scope="module")
def example_checkpoint(tmp_path_factory, powers_1234):
    """A checkpoint of the original's examples/ layout (stage 2 196 wide, BN after fc6)
    with the learnable sigmoid's k, and its values by name."""
    names = original_names(build_cnn9(**EXAMPLE_LAYOUT))
    assert "fc6/bn/fc6/bn/moments/Squeeze_1/ExponentialMovingAverage" in names
    assert names["conv2_1/filter"] == (3, 3, 196, 196) and names["fc6/k_value_lr"] == (256,)
    values = with_adam_state(distinct_values(names, seed=7), powers_1234)
    path = write_tf1_checkpoint(tmp_path_factory.mktemp("examples") / "64000", values)
    return path, values


def test_every_variable_lands_where_its_name_says(example_checkpoint):
    path, values = example_checkpoint
    model = build_cnn9(**EXAMPLE_LAYOUT)
    optimizer = keras.optimizers.Adam(1e-3, **ADAM)
    info = load_tf1_checkpoint(model, path, optimizer=optimizer)
    weights = {n: v for n, v in values.items() if "/Adam" not in n and "_power" not in n}
    assert sorted(info.loaded) == sorted(weights)
    covered = set()
    for name, value in weights.items():
        variable = keras_variable_for(model, name)
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=name)
        covered.add(id(variable))
        if variable.trainable:
            for slot in ("Adam", "Adam_1"):
                np.testing.assert_array_equal(adam_slot(optimizer, variable, slot).numpy(),
                                              values[f"{name}/{slot}"], err_msg=f"{name}/{slot}")
    assert covered == {id(v) for v in model.variables}  # nothing left at its initial value
    assert int(optimizer.iterations.numpy()) == 1234


def test_without_optimizer_the_adam_state_is_ignored(example_checkpoint):
    path, values = example_checkpoint
    model = build_cnn9(**EXAMPLE_LAYOUT)
    info = load_tf1_checkpoint(model, path)
    assert not info.optimizer_restored
    assert sorted(info.ignored) == sorted(n for n in values if "/Adam" in n or "_power" in n)
    assert (info.adam_steps, info.iteration) == (1234, 1233)
    assert "1233" in info.summary() and "Adam variables ignored" in info.summary()


def test_adam_inside_a_loss_scale_optimizer(example_checkpoint):
    """--mixed_precision training wraps Adam in a LossScaleOptimizer: its Adam is restored."""
    path, values = example_checkpoint
    model = build_cnn9(**EXAMPLE_LAYOUT)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3, **ADAM))
    load_tf1_checkpoint(model, path, optimizer=optimizer)
    assert int(optimizer.iterations.numpy()) == 1234
    inner = optimizer.inner_optimizer
    for name in ("fc6/filter", "conv3_2/k_value_lr", "fc6/bn/beta/bias"):
        variable = keras_variable_for(model, name)
        for slot in ("Adam", "Adam_1"):
            np.testing.assert_array_equal(adam_slot(inner, variable, slot).numpy(), values[f"{name}/{slot}"])


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------
def refuse(model, path, optimizer=None):
    before = all_weights(model)
    with pytest.raises(TF1CheckpointError) as e:
        load_tf1_checkpoint(model, path, optimizer=optimizer)
    for old, new in zip(before, all_weights(model)):
        np.testing.assert_array_equal(old, new)  # nothing was assigned
    return str(e.value)


def test_refuses_an_examples_checkpoint_for_the_default_spherenet9(example_checkpoint):
    path, _ = example_checkpoint
    message = refuse(build_cnn9(), path)
    assert "does not fit model 'spherenet9': 14 unexpected, 16 mis-shaped variable(s)" in message
    assert "conv2_0/filter: checkpoint [3, 3, 128, 196], model [3, 3, 128, 192]" in message
    assert "conv3_0/filter: checkpoint [3, 3, 196, 256], model [3, 3, 192, 256]" in message
    assert "    fc6/bn/gamma/bias [256]\n" in message and "    conv1_0/k_value_lr [128]\n" in message
    assert "/Adam" not in message  # slots are not listed one by one
    assert ("The checkpoint looks like a 9-layer CNN (SphereNet-9 or the baseline CNN-9) with stage "
            "widths (128, 196, 256), BN after fc6 (the layout of the original's examples/*.py), "
            "10 classes, learnable sigmoid SphereConv (k_value_lr: norm='lr_sigmoid')") in message
    assert "stage widths (128, 192, 256), no BN after fc6, 10 classes." in message
    assert "--model spherenet9 --widths 128,196,256 --fc6_bn --norm lr_sigmoid" in message
    assert message.endswith("Nothing was loaded: the model is unchanged.")


def test_refuses_a_default_checkpoint_for_the_examples_layout(tmp_path):
    names = original_names(build_cnn9())
    path = write_tf1_checkpoint(tmp_path / "ckpt", distinct_values(names))
    message = refuse(build_cnn9(**EXAMPLE_LAYOUT), path)
    assert "14 missing, 16 mis-shaped" in message
    assert "    fc6/bn/fc6/bn/moments/Squeeze/ExponentialMovingAverage [256]\n" in message
    assert "    conv3_2/k_value_lr [256]\n" in message


def test_refuses_a_cnn_checkpoint_for_a_resnet(tmp_path):
    names = original_names(build_cnn9(norm="none", reg=True, orth=False))
    path = write_tf1_checkpoint(tmp_path / "16000", distinct_values(names))
    model = build("sphere_resnet32")
    message = refuse(model, path)
    n_model = len(original_names(model))
    # both have score/filter, with 256 and 384 inputs
    assert f"{n_model - 1} missing, {len(names) - 1} unexpected, 1 mis-shaped variable(s)" in message
    assert "score/filter: checkpoint [1, 1, 256, 10], model [1, 1, 384, 10]" in message
    assert "    root/filter [3, 3, 3, 96]\n" in message
    assert "    block3_unit4/second/bn/gamma/bias [384]\n" in message
    assert "    conv1_0/filter [3, 3, 3, 128]\n" in message
    assert "The checkpoint looks like a 9-layer CNN" in message
    assert "The model is a ResNet-32 (SphereResNet-32 or ResNet-32) with stage widths (96, 192, 384)" in message


def test_refuses_this_ports_own_checkpoints(tmp_path):
    model = build_cnn9(norm="none", reg=True, orth=False, name="baseline_cnn")
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "16000"))
    message = refuse(model, prefix)
    assert "is an object-based TF2 checkpoint" in message
    assert "tf.train.Checkpoint(model=model).read(path)" in message


def test_refuses_paths_that_are_not_checkpoints(tmp_path):
    model = build_cnn9()
    message = refuse(model, str(tmp_path / "models" / "16000"))
    assert f"No checkpoint at '{tmp_path}/models/16000': neither" in message
    assert "models/16000.index and models/16000.data-00000-of-00001" in message
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    assert "is not a readable TensorFlow checkpoint" in refuse(model, str(text))
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"PK\x03\x04 not really")
    assert "load it with keras.models.load_model" in refuse(model, str(keras_file))
    (tmp_path / "empty").mkdir()
    assert "is a folder without checkpoints" in refuse(model, str(tmp_path / "empty"))


def test_refuses_to_restore_adam_from_a_checkpoint_without_it(tmp_path):
    names = original_names(build_cnn9())
    path = write_tf1_checkpoint(tmp_path / "ckpt", distinct_values(names))
    model = build_cnn9()
    optimizer = keras.optimizers.Adam(1e-3, **ADAM)
    optimizer.build(model.trainable_variables)
    message = refuse(model, path, optimizer)
    assert "    conv1_0/filter/Adam [3, 3, 3, 128] (Adam state)\n" in message
    assert "    beta2_power [] (Adam state)\n" in message
    assert "The checkpoint has no Adam state: load it without an optimizer" in message
    assert int(optimizer.iterations.numpy()) == 0
    with pytest.raises(TF1CheckpointError, match=r"only a keras.optimizers.Adam .* Received: optimizer=SGD"):
        load_tf1_checkpoint(model, path, optimizer=keras.optimizers.SGD())


def test_checkpoint_paths_as_the_original_left_them(tmp_path):
    names = original_names(build_cnn9())
    for i in (16000, 32000):
        write_tf1_checkpoint(tmp_path / "models" / str(i), distinct_values(names, seed=i))
    folder = str(tmp_path / "models")
    assert resolve_checkpoint_path(folder) == os.path.join(folder, "32000")  # the latest
    assert resolve_checkpoint_path(os.path.join(folder, "16000.index")) == os.path.join(folder, "16000")
    assert resolve_checkpoint_path(os.path.join(folder, "16000.data-00000-of-00001")) == os.path.join(folder, "16000")
    with pytest.raises(TF1CheckpointError, match=r"Checkpoints in .*models: 16000, 32000"):
        resolve_checkpoint_path(os.path.join(folder, "48000"))


@pytest.mark.parametrize("steps", [1, 3, 1234])
def test_step_count_from_the_originals_beta_powers(steps, powers_1234):
    b1, b2 = powers_1234 if steps == 1234 else tf1_adam_powers(steps)
    assert adam_steps_from_powers(b1, b2) == (steps, True)
    assert adam_steps_from_powers(beta2_power=b2) == (steps, True)
    if steps < 500:  # beta1_power alone works until it underflows (~1000 steps)
        assert adam_steps_from_powers(beta1_power=b1) == (steps, True)
    else:
        assert b1 == 0
    assert adam_steps_from_powers() == (None, False)
