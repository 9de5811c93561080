"""GA-softmax with an angular margin (beyond the original): psi against a NumPy
reference and its defining properties, the margin logits and loss against NumPy, the
m = 1 equality with the weight-normalised softmax, the Keras layer and the
training-script option."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import numpy_beyond as ref
from support.repo import REPO
from support.fake_cifar import synthetic_images
from spherenet_tf import SphereConv2D, cifar10_input
from spherenet_tf.ga_softmax import (
    G_FUNCTIONS, GASoftmaxScore, margin_forward, margin_logits, psi)
from spherenet_tf.losses import Loss2, loss2
from spherenet_tf.models import build_cnn9, feature_model
from support.runs import script_trainer
from spherenet_tf.training import Settings, TrainingError, parse_settings

MARGINS = [1.0, 1.5, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("g", G_FUNCTIONS)
@pytest.mark.parametrize("m", MARGINS)
def test_psi_matches_numpy(g, m):
    theta = np.linspace(0.0, np.pi, 2001)
    got = psi(tf.constant(theta, tf.float32), g, m).numpy()
    np.testing.assert_allclose(got, ref.psi(theta, g, m), atol=2e-5 * max(1.0, 2 * m))


@pytest.mark.parametrize("g", G_FUNCTIONS)
@pytest.mark.parametrize("m", MARGINS)
def test_psi_is_decreasing_continuous_and_below_g(g, m):
    theta = np.linspace(0.0, np.pi, 20001)
    values = psi(tf.constant(theta, tf.float64), g, m).numpy()
    assert np.all(np.diff(values) < 0), "psi must decrease strictly on [0, pi]"
    # continuous: no step larger than the steepest slope allows
    slope = {"cosine": m, "linear": 0.63662 * m, "sigmoid": 3.0 * m}[g]
    assert np.abs(np.diff(values)).max() <= slope * (theta[1] - theta[0]) * 1.01
    g_values = ref.g_of_theta(theta, g) if g != "cosine" else np.cos(theta)
    assert np.all(values <= g_values + 1e-12), "the margin makes the target logit smaller"
    if m == 1.0:
        np.testing.assert_allclose(values, g_values, atol=1e-12)
    assert values[0] == pytest.approx(1.0, abs=1e-12)  # psi(0) = g(0) = 1


def _features(seed=0, batch=12, dim=6, n_class=5, scale=3.0):
    rng = np.random.RandomState(seed)
    x = (rng.standard_normal((batch, dim)) * scale).astype(np.float32)
    labels = rng.randint(0, n_class, batch).astype(np.int32)
    return x, labels


@pytest.mark.parametrize("g", G_FUNCTIONS)
@pytest.mark.parametrize("m", [1.0, 1.5, 4.0])
def test_layer_logits_and_loss_match_numpy(g, m):
    x, labels = _features()
    head = GASoftmaxScore(5, g=g, margin=m)
    free = head(x).numpy()
    w = head.kernel.numpy()
    np.testing.assert_allclose(free, ref.ga_logits(x, w, g)[0], rtol=1e-5, atol=1e-5)
    with_margin = head(x, labels).numpy()
    expected = ref.ga_margin_logits(x, w, labels, g, m)
    np.testing.assert_allclose(with_margin, expected, rtol=1e-5, atol=1e-5)
    off_target = np.ones_like(free, bool)
    off_target[np.arange(len(labels)), labels] = False
    np.testing.assert_array_equal(with_margin[off_target], free[off_target])
    assert float(loss2(with_margin, labels)) == pytest.approx(
        ref.ga_softmax_loss2(x, w, labels, g, m), rel=1e-5)
    if m > 1:  # a margin makes the target logit (and the loss) worse
        assert np.all(with_margin[~off_target] <= free[~off_target] + 1e-6)


def test_margin_one_cosine_is_the_weight_normalised_softmax_exactly():
    """m = 1 with g = cosine: the margin logits are the margin-free logits (same
    tensor, bit for bit), and these are x.w/|w|, the original's w_norm='cosine'."""
    x, labels = _features(seed=1)
    head = GASoftmaxScore(5, g="cosine", margin=1.0)
    free = head(x).numpy()
    np.testing.assert_array_equal(head(x, labels).numpy(), free)
    w = head.kernel.numpy().astype(np.float64)
    scale = np.abs(free).max()
    np.testing.assert_allclose(free, x @ w / np.sqrt((w * w).sum(0) + 1e-4), rtol=1e-6,
                               atol=1e-6 * scale)
    score = SphereConv2D(5, 1, padding="valid", norm="none", w_norm="cosine")
    score.build((None, 1, 1, 6))
    score.kernel.assign(head.kernel.numpy()[None, None])
    np.testing.assert_allclose(score(x[:, None, None, :]).numpy()[:, 0, 0], free, rtol=1e-6,
                               atol=1e-6 * scale)


def test_margin_logits_validates_the_margin():
    with pytest.raises(ValueError, match=r"margin must be a number >= 1.*Received: margin=0.5"):
        margin_logits(tf.zeros((1, 2)), tf.ones((1,)), tf.zeros((1, 2)), [0], "cosine", 0.5)
    with pytest.raises(ValueError, match=r"Unknown value for `g` argument of GASoftmaxScore.*"
                                         r"Received: g='cosin'.*Did you mean 'cosine'"):
        GASoftmaxScore(3, g="cosin")
    with pytest.raises(ValueError, match=r"`units` must be a positive integer"):
        GASoftmaxScore(0)
    with pytest.raises(ValueError, match=r"expects features of shape \[batch, C\]"):
        GASoftmaxScore(3)(np.zeros((2, 1, 1, 4), np.float32))


def test_keras_pair_trains_saves_and_reloads(tmp_path):
    """The documented Keras pattern: one head, a training model on the margin logits
    (labels as an input) with Loss2, a prediction model on the margin-free logits."""
    x, labels = _features(seed=2, batch=64, dim=4, n_class=3, scale=0.5)
    x = x + 3.0 * np.eye(4, dtype=np.float32)[labels % 4]  # separable classes
    features = keras.Input((4,), name="features")
    label_in = keras.Input((), dtype="int32", name="labels")
    hidden = keras.layers.Dense(8)(features)
    head = GASoftmaxScore(3, g="linear", margin=2.0, name="ga")
    train = keras.Model([features, label_in], head(hidden, label_in))
    predict = keras.Model(features, head(hidden))
    train.compile(keras.optimizers.Adam(1e-2), Loss2())
    history = train.fit([x, labels], labels, epochs=60, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    accuracy = np.mean(np.argmax(predict.predict(x, verbose=0), -1) == labels)
    assert accuracy > 0.9
    predict.save(tmp_path / "p.keras")
    restored = keras.models.load_model(tmp_path / "p.keras")
    assert restored.get_layer("ga").get_config() == head.get_config()
    np.testing.assert_array_equal(restored.predict(x, verbose=0), predict.predict(x, verbose=0))


# --- the training scripts -----------------------------------------------------------
def _small(s):
    return build_cnn9(s.n_class, norm="cosine", w_norm=s.w_norm, widths=(8, 8, 8))


def _data(n_train=160, n_test=50):
    labels = (np.arange(n_train) % 10).astype(np.int32)
    test_labels = (np.arange(n_test) % 10).astype(np.int32)
    return ((synthetic_images(labels, 0), labels), (synthetic_images(test_labels, 1), test_labels))


@pytest.mark.parametrize("g,m", [("linear", 1.5), ("sigmoid", 2.0), ("cosine", 4.0)])
def test_margin_forward_matches_numpy(g, m):
    keras.utils.set_random_seed(3)
    model = _small(Settings(w_norm=g))
    images = synthetic_images(np.arange(6) % 10, 5)
    labels = (np.arange(6) * 3 % 10).astype(np.int32)
    logits, fit_logits = margin_forward(model, m)(images, labels, training=False)
    _, feature = feature_model(model)([images], training=False)
    w = model.get_layer("score").kernel.numpy()[0, 0]
    x = feature.numpy().reshape(6, -1)
    np.testing.assert_allclose(logits.numpy(), ref.ga_logits(x, w, g)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fit_logits.numpy(), ref.ga_margin_logits(x, w, labels, g, m),
                               rtol=1e-5, atol=1e-5)


def test_training_step_uses_the_margin_loss(tmp_path):
    """The first step's `fit` is loss2 on the margin logits of the first batch
    (recomputed in NumPy from a copy of the initial model)."""
    s = Settings(max_epoch=0, batch_sz=16, batch_test=50, w_norm="linear", loss="ga_softmax",
                 margin=1.5, model_file=str(tmp_path) + "/", progress="off")
    trainer = script_trainer(s, _small, data=_data())
    initial = keras.models.clone_model(trainer.model)
    initial.set_weights(trainer.model.get_weights())
    images, labels = next(iter(cifar10_input.train_dataset(
        trainer.task.train_x, trainer.task.train_y, s.batch_sz, seed=s.seed, start_iteration=0,
        augmentation=s.augmentation, shard=(0, 1))))
    fit = float(trainer.task.train_step(trainer.task.train_iterator(0))[0])
    _, feature = feature_model(initial)([images], training=True)
    x = feature.numpy().reshape(s.batch_sz, -1)
    w = initial.get_layer("score").kernel.numpy()[0, 0]
    expected = ref.ga_softmax_loss2(x, w, labels.numpy(), "linear", 1.5)
    assert fit == pytest.approx(expected, rel=1e-5)
    plain = ref.loss2(ref.ga_logits(x, w, "linear")[0], labels.numpy(), 10)
    assert fit > plain  # and the margin did change it


def test_margin_one_trains_exactly_like_the_weight_normalised_softmax(tmp_path):
    def run(name, **extra):
        s = Settings(max_epoch=4, batch_sz=16, batch_test=50, log_every=1, eval_every=4,
                     save_every=1000, checkpoint_every=1000, w_norm="cosine",
                     model_file=str(tmp_path / name) + "/", progress="off", **extra)
        trainer = script_trainer(s, _small, data=_data())
        trainer.fit()
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(l) for l in lines], trainer.model.get_weights()

    plain, w_plain = run("wn_softmax")
    ga, w_ga = run("ga_m1", loss="ga_softmax", margin=1.0)
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("time", "images_per_sec")} for m in ms]  # noqa: E731
    assert strip(ga) == strip(plain)
    for a, b in zip(w_ga, w_plain):
        np.testing.assert_array_equal(a, b)


SCRIPT = {"n_class": 10, "batch_sz": 128, "batch_test": 100, "max_epoch": 64000, "lr": 1e-3,
          "data_path": "cifar10/", "model_file": "models/", "norm": "cosine", "w_norm": "none",
          "augmentation": "flip"}


def test_command_line_option():
    s = parse_settings(SCRIPT, str(REPO / "train_spherenet.py"),
                          ["--loss", "ga_softmax", "--margin", "1.5", "--w_norm", "linear"])
    assert (s.loss, s.margin, s.w_norm) == ("ga_softmax", 1.5, "linear")
    s = parse_settings(SCRIPT, str(REPO / "train_spherenet.py"), [])
    assert (s.loss, s.margin) == ("loss2", 1.0)  # the original's loss by default


@pytest.mark.parametrize("argv,message", [
    (["--loss", "ga_softmax"], r"--loss ga_softmax needs a weight-normalised score layer: --w_norm "
                               r"one of linear, cosine, sigmoid .*got --w_norm 'none'"),
    (["--loss", "ga_sotfmax", "--w_norm", "cosine"], r"did you mean 'ga_softmax'"),
    (["--loss", "ga_softmax", "--w_norm", "cosine", "--margin", "0.5"],
     r"--margin must be a number >= 1 \(1 = no margin\), got 0.5"),
    (["--margin", "2"], r"--margin 2.0 needs --loss ga_softmax"),
])
def test_command_line_rejects_bad_combinations(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_settings(SCRIPT, str(REPO / "train_spherenet.py"), argv)
    assert re.search(message, capsys.readouterr().err)


def test_baseline_script_has_no_loss_option(capsys):
    baseline = {k: v for k, v in SCRIPT.items() if k not in ("norm", "w_norm")}
    with pytest.raises(SystemExit):
        parse_settings(baseline, str(REPO / "baseline" / "train_baseline.py"), ["--loss", "ga_softmax"])
    assert "unrecognized arguments: --loss" in capsys.readouterr().err


def test_trainer_rejects_a_model_without_a_sphere_score(tmp_path):
    def plain(s):
        inputs = keras.Input((32, 32, 3))
        return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))

    s = Settings(max_epoch=0, batch_sz=16, batch_test=50, w_norm="cosine", loss="ga_softmax",
                 model_file=str(tmp_path) + "/", progress="off")
    with pytest.raises(TrainingError, match=r"SphereConv2D layer named 'score'"):
        script_trainer(s, plain, data=_data())
