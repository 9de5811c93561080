"""The original TF1 variable name of every variable of a port model.

Keras layer names keep the original scopes with '_' where the original nested
scopes with '/' (`block2_unit0_first` is the original's `block2_unit0/first`).  This
module turns a Keras model's variables into the original's names, e.g.

    conv1_0.kernel               -> conv1_0/filter
    conv1_0.k_value              -> conv1_0/k_value_lr
    conv1_0_bn.gamma / beta      -> conv1_0/bn/gamma/bias, conv1_0/bn/beta/bias
    conv1_0_bn.moving_mean       -> conv1_0/bn/conv1_0/bn/moments/Squeeze/ExponentialMovingAverage
    conv1_0_bn.moving_variance   -> conv1_0/bn/conv1_0/bn/moments/Squeeze_1/ExponentialMovingAverage

(the original's EMA names really repeat the scope).  Used by the TF1 checkpoint
importer and by the tests that regenerate the golden fixtures' weights.
"""

import re

import keras

from .layers import SphereConv2D, all_layers

_UNIT_PART = re.compile(r"(block\d+_unit\d+)_(first|second|shortcut)")


def tf1_scope(layer_name):
    """Original variable scope of a conv layer name: `block1_unit0_first` -> `block1_unit0/first`."""
    match = _UNIT_PART.fullmatch(layer_name)
    return f"{match.group(1)}/{match.group(2)}" if match else layer_name


def bn_ema_names(bn_scope):
    """(moving mean, moving variance) TF1 names of the BN of scope `bn_scope`
    (`conv1_0/bn`): the original's ExponentialMovingAverage of its moments."""
    return (f"{bn_scope}/{bn_scope}/moments/Squeeze/ExponentialMovingAverage",
            f"{bn_scope}/{bn_scope}/moments/Squeeze_1/ExponentialMovingAverage")


def tf1_variables(model):
    """Dict: original TF1 variable name -> Keras variable, for every variable the
    original model has (filters, k values, BN gamma/beta and moving averages).

    Raises ValueError for a variable the original has no counterpart for (a conv
    bias, or a BN without the `NAME_bn` naming), naming it.
    """
    names = {}
    for layer in all_layers(model):
        if isinstance(layer, SphereConv2D):
            scope = tf1_scope(layer.name)
            names[f"{scope}/filter"] = layer._kernel
            if layer.k_value is not None:
                names[f"{scope}/k_value_lr"] = layer.k_value
            if layer.use_bias:
                raise ValueError(
                    f"layer {layer.name!r} has a bias; the original has none, so it cannot be "
                    "mapped to TF1 names."
                )
        elif isinstance(layer, keras.layers.BatchNormalization):
            if not layer.name.endswith("_bn"):
                raise ValueError(
                    f"BatchNormalization layer {layer.name!r} is not named after its conv "
                    "('<conv>_bn'), so its original TF1 scope is unknown."
                )
            bn = f"{tf1_scope(layer.name[: -len('_bn')])}/bn"
            names[f"{bn}/gamma/bias"] = layer.gamma
            names[f"{bn}/beta/bias"] = layer.beta
            mean, variance = bn_ema_names(bn)
            names[mean] = layer.moving_mean
            names[variance] = layer.moving_variance
    return names
