"""Every number the port carries from the original, pinned by what the original did.

"Deep Hyperspherical Learning" (Liu et al., NIPS 2017), code wy1iu/SphereNet: its
training scripts, `_conv_layer`, hand-written batch norm and regularisers hold numbers a
refactor can slip (a weight decay of 4e-4, a drop at 32000, a `%.3f`).  The tests here
fail when such a number changes.  Expected values come from the original only, never
from the constant under test: its training logs (`results/`, `sphere_resnet/results/`,
byte for byte), the golden fixtures made by running it (`tests/golden/`), or the facts
`../shared/REFERENCE.md` quotes from its code (cited beside each value).  Where a number
already has a direct guard elsewhere, it is not repeated here: docs/pinned-numbers.md
lists every number, where the port holds it and which test guards it.
`python -m support.slips` (from tests/) changes each number in a copy of the repository
and reports which test fails.

Cheap: no training step runs; the whole-run test drives the real loop for the original's
64001 iterations with the training step replaced by the original's logged values.
"""

import json
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from support.golden_models import build, set_rule_weights
from support.golden_rules import load_npz, weight_prefix
from support.repo import REPO, load_module
from spherenet_tf import SphereConv2D
from spherenet_tf.regularizers import regularization_terms
from spherenet_tf.training import Settings, Trainer, parse_settings
from spherenet_tf.training.runlog import RunLog
from spherenet_tf.training.task import ClassificationTask

# ---------------------------------------------------------------------------------
# The original's values, quoted (REFERENCE.md section in brackets).
# ---------------------------------------------------------------------------------
#: [Training] "Editable block at the top: n_class=10, batch_sz=128, batch_test=100,
#: max_epoch=64000 (iterations, not epochs), lr=1e-3".
ORIGINAL_BLOCK = {"n_class": 10, "batch_sz": 128, "batch_test": 100, "max_epoch": 64000,
                  "lr": 1e-3}
#: [Training] "Loop for i in range(max_epoch+1) (64001 steps)".
ORIGINAL_STEPS = 64001
#: [Training] "Every 16,000 steps: tf.train.Saver().save(sess, model_file + str(i))".
ORIGINAL_SNAPSHOTS = [16000, 32000, 48000, 64000]
#: [Training] "lr ÷10 when i == 34000 and i == 54000, set before that step runs".
ORIGINAL_LR = {0: 1e-3, 33999: 1e-3, 34000: 1e-4, 53999: 1e-4, 54000: 1e-5, 64000: 1e-5}
#: [Training] "tf.train.AdamOptimizer(lr): β1 0.9, β2 0.999, ε 1e-8".
ORIGINAL_ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8}
#: [Data] "SphereNet-9/baseline training: random left-right flip only. CIFAR-10+
#: (ResNets): pad 4 px each side with SYMMETRIC padding, random 32×32 crop, random flip"
#: (the port's names of the two; tests/test_data.py pins what each does).
FLIP_ONLY, CIFAR10_PLUS = "flip", "cifar10plus"

#: Each training script of the port and the original's log of the same run
#: (REFERENCE.md, "Reported results").
RUNS = {
    "train_spherenet.py": "results/spherenet_cos_standard_training.log",
    "baseline/train_baseline.py": "results/baseline_training.log",
    "sphere_resnet/train_sphere_resnet.py": "sphere_resnet/results/linear_sphereconv_resnet.log",
    "sphere_resnet/baseline/train_baseline.py": "sphere_resnet/results/baseline_resnet.log",
}
#: Every log the original ships, and whether its network has the orth constraint
#: (the baselines' lines have no `orth=`: REFERENCE.md [Training]).
LOGS = {
    "results/baseline_training.log": False,
    "results/spherenet_cos_standard_training.log": True,
    "results/spherenet_cos_wnsoftmax_training.log": True,
    "results/spherenet_linear_standard_training.log": True,
    "results/spherenet_lr_sigmoid_standard_training.log": True,
    "results/spherenet_sigmoid_standard_training.log": True,
    "sphere_resnet/results/baseline_resnet.log": False,
    "sphere_resnet/results/linear_sphereconv_resnet.log": True,
}

# The original's lines, read here without the port's parser: `====iteration_100:
# fit=1.4002, reg=0.4845, orth=0.4476, acc=0.5078` and `++++iteration_500: test acc=0.1195`.
_TRAIN = re.compile(r"^====iteration_(\d+): fit=(\S+), reg=(\S+), (?:orth=(\S+), )?acc=(\S+)$")
_TEST = re.compile(r"^\+\+\+\+iteration_(\d+): test acc=(\S+)$")


def original_log(path):
    """(lines, {iteration: (fit, reg, orth or None, acc)}, {iteration: test acc})."""
    lines = (REPO / path).read_text().splitlines()
    train, test = {}, {}
    for line in lines:
        m = _TRAIN.match(line)
        if m:
            orth = float(m.group(4)) if m.group(4) is not None else None
            train[int(m.group(1))] = (float(m.group(2)), float(m.group(3)), orth, float(m.group(5)))
            continue
        m = _TEST.match(line)
        assert m, f"{path}: not a line of the original's format: {line!r}"
        test[int(m.group(1))] = float(m.group(2))
    return lines, train, test


# ---------------------------------------------------------------------------------
# Log lines, cadence, iterations, snapshots, learning rate: the whole run.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path,with_orth", list(LOGS.items()))
def test_the_log_lines_are_the_originals_byte_for_byte(path, with_orth, tmp_path, capsys):
    """Every line of every log the original ships, written again by the port's run log
    from the values it holds: `====iteration_%d: fit=%.4f, reg=%.4f, orth=%.4f,
    acc=%.4f` (baselines without `orth=`) and `++++iteration_%d: test acc=%.4f`."""
    lines, train, test = original_log(path)
    assert len(train) == 640 and len(test) == 128
    assert all((v[2] is not None) == with_orth for v in train.values())
    log = RunLog(str(tmp_path), tensorboard=False)
    for i in sorted(set(train) | set(test)):
        if i in train:
            fit, reg, orth, acc = train[i]
            log.train(i, fit, reg, orth if with_orth else 0.0, acc, lr=1e-3, images_per_sec=1.0,
                      with_orth=with_orth)
        if i in test:
            log.test(i, test[i])
    assert capsys.readouterr().out.splitlines() == lines


@pytest.mark.parametrize("script", list(RUNS))
def test_a_whole_run_logs_evaluates_and_saves_when_the_original_did(script, tmp_path, capsys):
    """The port's loop over the original's 64001 iterations, each training step and test
    evaluation replaced by the values of the original's log at that iteration: its
    output is the original's log byte for byte (lines every 100 iterations but not at 0,
    a test line every 500, `orth=` only where the model has the constraint, the last at
    64000), snapshots are saved at 16000, 32000, 48000 and 64000, and the learning rate
    of the lines (metrics.jsonl) drops tenfold at 34000 and 54000."""
    module = load_module(script)
    lines, train, test = original_log(RUNS[script])
    settings = parse_settings(vars(module), module.__file__, argv=[
        "--model_file", str(tmp_path / "run") + "/", "--progress", "off", "--tensorboard", "off"])
    data = ((np.zeros((settings.batch_sz, 32, 32, 3), np.uint8), np.zeros(settings.batch_sz, np.int32)),
            (np.zeros((10, 32, 32, 3), np.uint8), np.zeros(10, np.int32)))
    trainer = Trainer(settings, module.build_model, data=data, script=module.__file__)
    steps, snapshots = [], []

    def train_step(iterator):
        i = len(steps)
        steps.append(i)
        fit, reg, orth, acc = train.get(i, (0.0, 0.0, 0.0, 0.0))
        return fit, reg, 0.0 if orth is None else orth, acc

    task = trainer.task
    task.train_iterator = lambda start: None
    task.train_step = train_step
    task.evaluate = lambda: test[steps[-1]]
    trainer.files.save_snapshot = snapshots.append
    trainer.save_resume_checkpoint = lambda: None
    trainer.files.save_final_model = lambda model: "final.keras"
    capsys.readouterr()
    trainer.fit()
    assert len(steps) == ORIGINAL_STEPS
    assert capsys.readouterr().out.splitlines() == lines
    assert snapshots == ORIGINAL_SNAPSHOTS
    metrics = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lr = {m["iteration"]: m["lr"] for m in metrics if "lr" in m}
    for i, expected in [(33900, 1e-3), (34000, 1e-4), (53900, 1e-4), (54000, 1e-5), (64000, 1e-5)]:
        assert lr[i] == pytest.approx(expected, rel=1e-12), i
    # ... and the optimiser of this run reads the same rates at the boundaries
    for i, expected in ORIGINAL_LR.items():
        trainer.optimizer.iterations.assign(i)
        assert float(trainer.optimizer.learning_rate) == pytest.approx(expected, rel=1e-6), i


@pytest.mark.parametrize("script", list(RUNS))
def test_the_scripts_settings_are_the_originals(script):
    module = load_module(script)
    settings = parse_settings(vars(module), module.__file__, argv=[])
    got = {k: getattr(settings, k) for k in ORIGINAL_BLOCK}
    assert got == ORIGINAL_BLOCK
    plus = "sphere_resnet" in script  # the ResNets train on CIFAR-10+
    assert settings.augmentation == (CIFAR10_PLUS if plus else FLIP_ONLY)
    assert {k: getattr(Settings(), k) for k in ORIGINAL_BLOCK} == ORIGINAL_BLOCK  # Python callers


@pytest.mark.parametrize("augmentation", [FLIP_ONLY, CIFAR10_PLUS])
def test_the_training_streams_augmentation_is_the_originals(augmentation):
    """REFERENCE.md [Data]: SphereNet-9 and the baseline flip at random and do nothing
    else; CIFAR-10+ pads 4 pixels each side with SYMMETRIC padding (np.pad's 'symmetric':
    the edge pixel repeated), crops 32x32 at random and flips at random.  Each image of the
    training stream is found among the windows of its source (labels name the source)."""
    from spherenet_tf import cifar10_input

    n, pad = 64, 4 if augmentation == CIFAR10_PLUS else 0
    images = np.random.RandomState(0).randint(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    offsets, flips, total = set(), 0, 0
    stream = cifar10_input.train_dataset(images, np.arange(n, dtype=np.int32), n, seed=5,
                                         augmentation=augmentation)
    for x, y in stream.take(4):
        for out, source in zip(x.numpy(), y.numpy()):
            found = [(r, c, flipped) for flipped in (False, True)
                     for r in range(2 * pad + 1) for c in range(2 * pad + 1)
                     if np.array_equal(out, (padded[source, :, ::-1] if flipped else padded[source])
                                       [r:r + 32, c:c + 32])]
            assert len(found) == 1, f"image {source}: not one window of its {pad}-pixel padding"
            offsets.add(found[0][:2])
            flips += found[0][2]
            total += 1
    assert 0.35 < flips / total < 0.65  # a flip with probability 1/2
    assert {r for r, _ in offsets} == set(range(2 * pad + 1)) == {c for _, c in offsets}


# ---------------------------------------------------------------------------------
# Adam, read off the optimiser a training run builds.
# ---------------------------------------------------------------------------------
def numpy_tf1_adam(grads, lr, beta_1, beta_2, epsilon):
    """tf.train.AdamOptimizer's update of a variable starting at 0 (float64)."""
    w = m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        w = w - lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (np.sqrt(v) + epsilon)
    return w


def test_two_adam_steps_of_a_training_run_are_tf1_adams():
    """Two steps of the training run's optimiser on gradients from 1e-9 to 2 (where ε and
    the two βs each move the result) against tf.train.AdamOptimizer's update."""
    module = load_module("train_spherenet.py")
    settings = parse_settings(vars(module), module.__file__, argv=[])

    def tiny(s):
        images = keras.Input((32, 32, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(images)
        return keras.Model(images, keras.layers.Dense(s.n_class, use_bias=False)(pooled))

    data = ((np.zeros((settings.batch_sz, 32, 32, 3), np.uint8), np.zeros(settings.batch_sz, np.int32)),
            (np.zeros((10, 32, 32, 3), np.uint8), np.zeros(10, np.int32)))
    task = ClassificationTask(settings, tiny, tf.distribute.get_strategy(), data)
    kernel = task.model.trainable_variables[0]
    kernel.assign(tf.zeros_like(kernel))
    size = int(np.prod(kernel.shape))
    magnitudes = np.logspace(-9, np.log10(2.0), size)
    g1 = magnitudes * np.where(np.arange(size) % 2, 1.0, -1.0)
    g2 = np.roll(g1, 7) * 0.5
    for g in (g1, g2):
        task.optimizer.apply_gradients([(tf.constant(g.reshape(kernel.shape), tf.float32), kernel)])
    expected = numpy_tf1_adam([g1, g2], ORIGINAL_BLOCK["lr"], **ORIGINAL_ADAM)
    np.testing.assert_allclose(kernel.numpy().ravel(), expected, rtol=2e-5, atol=0)


# ---------------------------------------------------------------------------------
# Regularisation: weight decay, its ½, the orth constraint, against the fixtures.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["spherenet9", "baseline_cnn", "sphere_resnet32", "baseline_resnet32"])
def test_weight_decay_and_orth_terms_are_the_originals(name):
    """`reg` (5e-4 * l2_loss of the regularised filters and of every BN γ and β, l2_loss
    carrying ½) and `orth` (2e-4 * l2_loss(WᵀW - I)) of the fixtures' weights: functions
    of the weights alone, equal to the original's values (model_<name>.npz, init/train)."""
    g = load_npz(f"model_{name}.npz")
    model = build(name)
    set_rule_weights(model, weight_prefix())
    reg, orth = (float(t) for t in regularization_terms(model))
    assert reg == pytest.approx(float(g["init/train/reg"]), rel=1e-5)
    assert orth == pytest.approx(float(g["init/train/orth"]), rel=1e-5, abs=1e-12)


# ---------------------------------------------------------------------------------
# Batch norm of the networks (the original's hand-written one).
# ---------------------------------------------------------------------------------
def test_batch_norm_of_the_networks_is_the_originals():
    """REFERENCE.md [Batch norm]: moments over N, H, W (biased variance), epsilon 1e-3,
    γ from 1 and β from 0, moving averages with decay 0.999 that start at zero
    (`shadow -= (shadow - batch) * (1 - 0.999)` in float32), γ and β decayed with
    5e-4 * l2_loss."""
    model = load_module("spherenet.py").build_spherenet()
    bn = model.get_layer("conv2_1_bn")
    channels = bn.gamma.shape[0]
    np.testing.assert_array_equal(bn.gamma.numpy(), np.ones(channels, np.float32))
    np.testing.assert_array_equal(bn.beta.numpy(), np.zeros(channels, np.float32))
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.zeros(channels, np.float32))
    np.testing.assert_array_equal(bn.moving_variance.numpy(), np.zeros(channels, np.float32))
    # cosine outputs have small variances, where epsilon matters
    rng = np.random.RandomState(0)
    x = (0.3 + 0.03 * rng.standard_normal((4, 6, 6, channels))).astype(np.float32)
    y = bn(tf.constant(x), training=True).numpy()
    mean, var = x.astype(np.float64).mean(axis=(0, 1, 2)), x.astype(np.float64).var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-4)
    decay = np.float32(1) - np.float32(0.999)  # the original's float32 weight of the batch
    np.testing.assert_allclose(bn.moving_mean.numpy(), decay * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), decay * var, rtol=1e-5)
    np.testing.assert_allclose(bn(tf.constant(x), training=False).numpy(),
                               (x - decay * mean) / np.sqrt(decay * var + 1e-3), rtol=1e-4, atol=1e-4)
    gamma, beta = rng.standard_normal(channels), rng.standard_normal(channels)
    bn.gamma.assign(gamma.astype(np.float32))
    bn.beta.assign(beta.astype(np.float32))
    decays = [float(bn.gamma.regularizer(bn.gamma)), float(bn.beta.regularizer(bn.beta))]
    np.testing.assert_allclose(decays, [5e-4 * np.sum(gamma**2) / 2, 5e-4 * np.sum(beta**2) / 2],
                               rtol=1e-5)


# ---------------------------------------------------------------------------------
# SphereConv constants and initial values.
# ---------------------------------------------------------------------------------
def _one_pixel(layer, x, w):
    """Output of a 1x1 `layer` on one pixel `x` with the filter `w` (one output channel)."""
    x = np.asarray(x, np.float32).reshape(1, 1, 1, -1)
    layer.build(x.shape)
    layer.kernel.assign(np.asarray(w, np.float32).reshape(1, 1, -1, 1))
    return float(layer(tf.constant(x)).numpy().ravel()[0])


def test_linear_sphereconv_keeps_the_originals_literal():
    """REFERENCE.md [Small facts]: "0.63662 is not exactly 2/π: the original's linear
    SphereConv gives −3.6e-7 at cos = 0 and −1.0000007 at cos = −1"."""
    at_zero = _one_pixel(SphereConv2D(1, 1, norm="linear"), [1000.0, 0.0], [0.0, 1000.0])
    at_minus_one = _one_pixel(SphereConv2D(1, 1, norm="linear"), [1000.0, 0.0], [-1000.0, 0.0])
    assert at_zero == pytest.approx(-3.6e-7, abs=0.05e-7)
    assert at_minus_one == pytest.approx(-1.0000007, abs=1e-7)


def _sigmoid(cos, k):
    """REFERENCE.md [SphereConv]: C (1 - exp(θ/k - π/2k)) / (1 + exp(θ/k - π/2k)),
    C = (1 + exp(-π/2k)) / (1 - exp(-π/2k)), θ = acos(cos) (float64)."""
    theta = np.arccos(cos)
    c = (1 + np.exp(-np.pi / (2 * k))) / (1 - np.exp(-np.pi / (2 * k)))
    e = np.exp(theta / k - np.pi / (2 * k))
    return c * (1 - e) / (1 + e)


#: A pixel and a filter whose cosine is 0.6 (x and w have norm 5 and 10: the 1e-4 under
#: the square roots moves it by 2e-6).
PIXEL, FILTER = [3.0, 4.0], [10.0, 0.0]
COS = 30.0 / (np.sqrt(25.0 + 1e-4) * np.sqrt(100.0 + 1e-4))


def test_sigmoid_sphereconvs_k_and_the_learnable_ks_start():
    """sigmoid: k = 0.3; lr_sigmoid: k_value_lr starts at 0.7 and is used as |k| + 0.05
    (REFERENCE.md [SphereConv]), so a fresh layer computes the sigmoid of k = 0.75."""
    sigmoid = _one_pixel(SphereConv2D(1, 1, norm="sigmoid"), PIXEL, FILTER)
    assert sigmoid == pytest.approx(_sigmoid(COS, 0.3), rel=1e-5)
    layer = SphereConv2D(1, 1, norm="lr_sigmoid")
    learnable = _one_pixel(layer, PIXEL, FILTER)
    np.testing.assert_array_equal(layer.k_value.numpy(), np.float32([0.7]))
    assert learnable == pytest.approx(_sigmoid(COS, 0.7 + 0.05), rel=1e-5)
    # the sigmoids of neighbouring ks differ well beyond the tolerance above
    assert abs(_sigmoid(COS, 0.75) - _sigmoid(COS, 0.74)) > 1e-3 * abs(_sigmoid(COS, 0.75))


def test_sphereconv_norms_carry_the_originals_1e_4():
    """xnorm = sqrt(sum x² + 1e-4) and wnorm = sqrt(sum W² + 1e-4) (REFERENCE.md
    [SphereConv]): on a pixel of norm 0.01 the 1e-4 halves the squared norm."""
    x, w = [0.006, 0.008], [1.0, 0.0]
    got = _one_pixel(SphereConv2D(1, 1, norm="cosine"), x, w)
    expected = 0.006 / np.sqrt(1e-4 + 1e-4) / np.sqrt(1.0 + 1e-4)
    assert got == pytest.approx(expected, rel=1e-5)


def test_filters_start_from_the_originals_plain_normal():
    """REFERENCE.md [SphereConv]: W initialised N(0, sqrt(2/(k*k*C_in))), plain normal,
    not truncated; the networks' SphereConvs use it."""
    model = load_module("spherenet.py").build_spherenet()
    kernel = model.get_layer("conv3_1").kernel.numpy()  # 3x3x256x256: 589,824 draws
    sigma = np.sqrt(2.0 / (3 * 3 * 256))
    assert abs(kernel.mean()) < 0.01 * sigma
    assert kernel.std() == pytest.approx(sigma, rel=0.01)
    # a normal has 4.55 % of its draws beyond 2 sigma, a truncated normal none
    beyond = np.mean(np.abs(kernel) > 2 * sigma)
    assert 0.040 < beyond < 0.051


# ---------------------------------------------------------------------------------
# Networks: the examples' widths and fc6 BN.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["spherenet_linear_sphereconv.py", "spherenet_sigmoid_sphereconv.py",
                                  "spherenet_linear_sphereconv_wsoftmax.py"])
def test_the_originals_examples_widen_stage_2_and_add_fc6_bn(name):
    """REFERENCE.md [SphereNet-9]: the original's three examples "also change stage-2
    width 192 → 196 and give fc6 bn=True"."""
    run = load_module("examples/_run.py")
    module = load_module(f"examples/{name}")
    model = run.build_model_fn(vars(module))(Settings(norm=module.norm, w_norm=module.w_norm))
    assert [model.get_layer(f"conv{s}_0").filters for s in (1, 2, 3)] == [128, 196, 256]
    assert model.get_layer("fc6").filters == 256
    assert isinstance(model.get_layer("fc6_bn"), keras.layers.BatchNormalization)
