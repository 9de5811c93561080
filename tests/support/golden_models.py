"""Replays the golden fixtures' model procedure (tests/golden/README.md, item 4)
on a port model and returns every value under the fixture's key.

Procedure: weights by rule 2.1; pass 1 (training mode, X); warm-up passes W1, W2
(training mode); eval mode on X; reference eval with the moving statistics set to
W1's batch moments (X and W1); 3 Adam steps (lr 1e-3, eps 1e-8) on X minimising
loss2 + reg + orth, each fetching the pre-update values; eval and train passes after.
"""

import numpy as np
import keras
import tensorflow as tf

from .repo import load_module
from .golden_rules import load_npz, weight_prefix
from spherenet_tf.fixtures import assign_rule_weights
from spherenet_tf.layers import SphereConv2D
from spherenet_tf.regularizers import regularization_terms
from spherenet_tf.losses import loss2
from spherenet_tf.models import feature_model
from spherenet_tf.tf1_names import tf1_variables


def build(name, formulation="fast"):
    """The model of fixture `name`, as its script builds it; with formulation
    'original', every SphereConv2D computes its patch norm as the original did."""
    if name == "spherenet9":
        model = load_module("spherenet.py").build_spherenet(10, norm="cosine", w_norm="none")
    elif name == "baseline_cnn":
        model = load_module("baseline/baseline_cnn.py").build_baseline_cnn(10)
    elif name == "sphere_resnet32":
        model = load_module("sphere_resnet/sphere_resnet_v1.py").build_sphere_resnet(10)
    elif name == "baseline_resnet32":
        model = load_module("sphere_resnet/baseline/baseline_resnet.py").build_baseline_resnet(10)
    else:
        raise KeyError(name)
    if formulation == "fast":
        return model

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, SphereConv2D):
            config["formulation"] = formulation
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def set_rule_weights(model, prefix):
    variables = tf1_variables(model)
    assign_rule_weights(variables, prefix)
    for tf1_name, variable in variables.items():
        if not variable.trainable:
            assert not np.any(variable.numpy()), f"{tf1_name} should start at zero"


def bn_layers(model, bn_names):
    """Keras BN layers in the fixture's order (`conv1_0/bn` -> `conv1_0_bn`)."""
    out = []
    for bn in bn_names:
        scope = bn.removesuffix("/bn")
        out.append(model.get_layer(scope.replace("/", "_") + "_bn"))
    return out


def run_procedure(name, original_formulation=False):
    """Replay the procedure; with `original_formulation`, patch norms are computed as
    the original did (ones-kernel convolution) instead of the fast box sum."""
    g = load_npz(f"model_{name}.npz")
    model = build(name, "original" if original_formulation else "fast")
    set_rule_weights(model, weight_prefix())
    with_features = feature_model(model)
    bns = bn_layers(model, [str(b) for b in g["bn_layer_names"]])
    images, labels = g["images"], g["labels"]
    results = {}

    def forward(x, training, tag, y=labels):
        logits, feature = with_features(tf.constant(x), training=training)
        fit = loss2(logits, y)
        reg, orth = regularization_terms(model)
        results[f"{tag}/score"] = logits.numpy()
        results[f"{tag}/feature"] = feature.numpy()
        results[f"{tag}/fit"] = fit.numpy()
        results[f"{tag}/reg"] = reg.numpy()
        results[f"{tag}/orth"] = orth.numpy()
        results[f"{tag}/total"] = (fit + reg + orth).numpy()

    def record_ema(tag):
        for bn_name, layer in zip(g["bn_layer_names"], bns):
            results[f"{tag}/{bn_name}/mean"] = layer.moving_mean.numpy()
            results[f"{tag}/{bn_name}/var"] = layer.moving_variance.numpy()

    forward(images, True, "init/train")
    record_ema("ema_after_pass1")
    for i, key in [(1, "warmup_images_1"), (2, "warmup_images_2")]:
        logits = model(tf.constant(g[key]), training=True)
        results[f"warmup/score_W{i}"] = logits.numpy()
    record_ema("ema_after_warmup")
    forward(images, False, "init/eval")

    saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in bns]
    for bn_name, layer in zip(g["bn_layer_names"], bns):
        layer.moving_mean.assign(g[f"ema_ref/{bn_name}/mean"])
        layer.moving_variance.assign(g[f"ema_ref/{bn_name}/var"])
    forward(images, False, "ref_eval")
    results["ref_eval_W1/score"] = model(tf.constant(g["warmup_images_1"]), training=False).numpy()
    for (mean, var), layer in zip(saved, bns):
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(var)

    optimizer = keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    variables = model.trainable_variables
    for step in range(3):
        with tf.GradientTape() as tape:
            logits, feature = with_features(tf.constant(images), training=True)
            fit = loss2(logits, labels)
            reg, orth = regularization_terms(model)
            total = fit + reg + orth
        grads = tape.gradient(total, variables)
        tag = f"adam/step{step}"
        results[f"{tag}/score"] = logits.numpy()
        results[f"{tag}/feature"] = feature.numpy()
        for key, value in [("fit", fit), ("reg", reg), ("orth", orth), ("total", total)]:
            results[f"{tag}/{key}"] = value.numpy()
        optimizer.apply_gradients(zip(grads, variables))
    record_ema("ema_after_adam")
    forward(images, False, "after_adam/eval")

    tf1 = tf1_variables(model)
    for key in g.keys():
        if key.startswith("after_adam/var/"):
            tf1_name = key[len("after_adam/var/"):]
            if tf1_name in tf1:
                results[key] = tf1[tf1_name].numpy()
            elif tf1_name.endswith(("/Adam", "/Adam_1")):
                base, slot = tf1_name.rsplit("/", 1)
                variable = tf1[base]
                index = optimizer._get_variable_index(variable)
                slots = optimizer._momentums if slot == "Adam" else optimizer._velocities
                results[key] = slots[index].numpy()
    forward(images, True, "after_adam/train")
    return model, results


def main(argv):
    """`python -m support.golden_models NAME OUT.npz [--original-formulation]` (from
    tests/): run the procedure
    the way the fixtures were made (set TF_ENABLE_ONEDNN_OPTS=0 in the environment;
    one thread is set here) and save the results."""
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    name, out = argv[0], argv[1]
    _, results = run_procedure(name, original_formulation="--original-formulation" in argv)
    np.savez(out, **results)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
