"""Models for the export tests (tests/test_export.py): the four golden networks with the
fixtures' weights and reference BN statistics, and small SphereNet-9s of every option.

The golden networks are set up as the fixtures' "reference eval" (tests/golden/README.md,
item 4.5): weights by rule 2.1, BN moving statistics set to the batch moments of the
warm-up images W1 that the original stored, so that their eval-mode logits on the
fixture images X are the original's `ref_eval/score`.
"""

import keras
import numpy as np

from spherenet_tf.models import build_cnn9, build_original

from .golden_models import bn_layers, set_rule_weights
from .golden_rules import load_npz, weight_prefix

#: The golden fixtures' name of each of the original's four networks.
NETWORKS = ("spherenet9", "baseline_cnn", "sphere_resnet32", "baseline_resnet32")


def golden_network(name):
    """(model, images, the original's eval logits on them) of fixture model_<name>.npz."""
    g = load_npz(f"model_{name}.npz")
    model = build_original(name)
    set_rule_weights(model, weight_prefix())
    for bn_name, layer in zip(g["bn_layer_names"], bn_layers(model, [str(b) for b in g["bn_layer_names"]])):
        layer.moving_mean.assign(g[f"ema_ref/{bn_name}/mean"])
        layer.moving_variance.assign(g[f"ema_ref/{bn_name}/var"])
    images = np.concatenate([g["images"], g["warmup_images_1"]]).astype(np.float32)
    expected = np.concatenate([g["ref_eval/score"].reshape(len(g["images"]), -1),
                               g["ref_eval_W1/score"].reshape(len(g["warmup_images_1"]), -1)])
    return model, images, expected


def images(n, seed):
    """Generated float32 images 0..255, [n, 32, 32, 3]."""
    return np.random.RandomState(seed).uniform(0.0, 255.0, (n, 32, 32, 3)).astype(np.float32)


def small_spherenet9(norm, w_norm, widths=(8, 8, 8), seed=0):
    """A SphereNet-9 of small widths with random weights, lr_sigmoid k drawn in
    [0.3, 1], BN gamma / beta drawn and BN moving statistics those of a generated batch
    (momentum 0 for one training pass), so that eval mode is neither the identity nor
    the huge amplification of zero-started statistics."""
    keras.utils.set_random_seed(seed)
    model = build_cnn9(norm=norm, w_norm=w_norm, widths=widths)
    rng = np.random.RandomState(seed)
    bns = []
    for layer in model.layers:
        if getattr(layer, "k_value", None) is not None:
            layer.k_value.assign(rng.uniform(0.3, 1.0, layer.k_value.shape))
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(1.0 + 0.1 * rng.standard_normal(layer.gamma.shape))
            layer.beta.assign(0.1 * rng.standard_normal(layer.beta.shape))
            bns.append(layer)
    momentum = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(images(8, seed + 100), training=True)
    for layer, m in zip(bns, momentum):
        layer.momentum = m
    return model
