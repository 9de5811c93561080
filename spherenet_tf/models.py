"""Functional builders of the original's networks.

`build_cnn9` is the 9-layer network of `spherenet.py` and `baseline/baseline_cnn.py`
(SphereNet-9 and its CNN twin differ only in settings); `build_resnet32` is the
ResNet-32 of `sphere_resnet/sphere_resnet_v1.py` and
`sphere_resnet/baseline/baseline_resnet.py`.  The files named like the original's
(`spherenet.py`, `baseline/baseline_cnn.py`, ...) are short settings files calling
these.  Layer names are the original's variable scopes (`conv1_0`, `fc6`, `score`,
`block2_unit0_first`, ...; BN as `NAME_bn`), so weights, checkpoints and logs line up.

Models take float images in 0..255 (what the data pipeline yields) and normalise
them inside with (x - 127.5) / 128, as the original's `build` does.  They return
the score logits, shape [batch, n_class].
"""

import keras

from .layers import FORMULATIONS, conv_layer, validate_option
from .sphere_norm import SphereNorm2D
from .formulas import NORMS, W_NORMS
from .portable_ops import MAGNITUDES

#: Input of every CIFAR model.
IMAGE_SHAPE = (32, 32, 3)


def _inputs(input_shape):
    images = keras.Input(shape=input_shape, name="images")
    # (x - 127.5) / 128 as x * (1/128) - 127.5/128: both steps are exact or
    # rounded once, so this gives the same bits as the original's expression.
    x = keras.layers.Rescaling(scale=1.0 / 128.0, offset=-127.5 / 128.0, name="normalize")(images)
    return images, x


def _conv_options(builder, norm, sphere_norm, magnitude, rho, formulation):
    """Layer class and options of the normalised convolutions (beyond the original:
    SphereNorm, decoupled operators); the defaults give plain SphereConv2D."""
    validate_option(builder, "magnitude", magnitude, MAGNITUDES)
    validate_option(builder, "formulation", formulation, FORMULATIONS)
    if not isinstance(sphere_norm, bool):
        raise ValueError(f"{builder}: `sphere_norm` must be True or False. Received: sphere_norm={sphere_norm!r}")
    if not sphere_norm:
        options = {} if magnitude == "none" else {"magnitude": magnitude, "rho": rho}
        return {**options, "formulation": formulation}
    if norm != "cosine" or magnitude != "none":
        raise ValueError(
            f"{builder}: sphere_norm=True is the cosine SphereConv with learnable rescaling "
            f"(SphereNorm2D); it needs norm='cosine' and magnitude='none'. Received: "
            f"norm={norm!r}, magnitude={magnitude!r}."
        )
    return {"layer_class": SphereNorm2D, "formulation": formulation}


def _logits(score):
    # The original's score is [B, 1, 1, n_class]; Keras users expect [B, n_class].
    return keras.layers.Flatten(name="logits")(score)


def build_cnn9(
    n_class=10,
    norm="cosine",
    w_norm="none",
    reg=False,
    orth=True,
    widths=(128, 192, 256),
    fc6_bn=False,
    name="spherenet9",
    input_shape=IMAGE_SHAPE,
    bn=True,
    sphere_norm=False,
    magnitude="none",
    rho="batch_mean",
    formulation="fast",
):
    """The original 9-layer CIFAR network (SphereNet-9 or the baseline CNN-9).

    Three stages of three 3x3 'same' convolutions with BN and ReLU (`conv{s}_{i}`),
    a 2x2 max-pool after each stage, then `fc6` (4x4 'valid' convolution to 256, no
    ReLU) and `score` (1x1 convolution to n_class, weight decay, `w_norm`).

    Args:
      n_class: number of classes.
      norm: SphereConv angular function of conv1_0 ... fc6 ('none' = plain conv).
      w_norm: weight-normalised score of the `score` layer.
      reg: weight decay (5e-4 * l2_loss) on the filters of conv1_0 ... fc6.
      orth: orthogonality constraint on the filters of conv1_0 ... fc6.
      widths: filters of the three stages; the original's examples use (128, 196, 256).
      fc6_bn: BN after fc6 (the original's examples have it).
      name: model name.
      bn: BN after conv1_0 ... conv3_2 (the original always has it).  Beyond the
        original, for SphereNorm without BatchNorm.
      sphere_norm: beyond the original: conv1_0 ... fc6 become `SphereNorm2D`
        (cosine SphereConv with learnable rescaling towards the convolution);
        needs norm='cosine'.  Use with bn=True or bn=False.
      magnitude, rho: beyond the original: the decoupled operator of conv1_0 ...
        fc6 (see `SphereConv2D`), e.g. magnitude='tanh'.
      formulation: 'fast', 'original' or 'portable' arithmetic of the SphereConvs (see
        `SphereConv2D`); the same values up to the last bits.
    """
    validate_option("build_cnn9", "norm", norm, NORMS)
    validate_option("build_cnn9", "w_norm", w_norm, W_NORMS)
    options = _conv_options("build_cnn9", norm, sphere_norm, magnitude, rho, formulation)
    if len(widths) != 3:
        raise ValueError(f"build_cnn9: `widths` must list 3 stage widths. Received: widths={widths!r}")
    images, x = _inputs(input_shape)
    for stage, width in enumerate(widths, start=1):
        for i in range(3):
            x = conv_layer(
                x, 3, width, f"conv{stage}_{i}", bn=bn, relu=True, padding="same",
                norm=norm, reg=reg, orth=orth, **options,
            )
        x = keras.layers.MaxPooling2D(2, 2, padding="same", name=f"pool{stage}")(x)
    x = conv_layer(
        x, 4, 256, "fc6", bn=fc6_bn, relu=False, padding="valid", norm=norm, reg=reg, orth=orth,
        **options,
    )
    score = conv_layer(
        x, 1, n_class, "score", bn=False, relu=False, padding="valid",
        norm="none", reg=True, orth=False, w_norm=w_norm, formulation=formulation,
    )
    return keras.Model(images, _logits(score), name=name)


def residual_unit(x, filters, strides, name, norm, reg, orth, bn=True, **options):
    """The original `_resnet_unit_v1`: two 3x3 convolutions plus a shortcut.

    `first` (stride `strides`, BN, ReLU) and `second` (stride 1, BN, no ReLU) use the
    unit's `norm`/`reg`/`orth`; the shortcut is the identity when the unit keeps the
    width and the resolution, else `shortcut`, a plain 1x1 convolution with stride,
    BN and weight decay.  (The original takes the identity whenever the width does not
    change, which fails for a unit of stride 2 that keeps its width; no network of the
    original has one: docs/differences.md.)  Output: relu(residual + shortcut).  Beyond
    the original, `bn=False` drops the BN of `first` and `second` and `options`
    (SphereNorm, magnitude, formulation) go to them.
    """
    residual = conv_layer(x, 3, filters, f"{name}_first", strides=strides, bn=bn, relu=True,
                          norm=norm, reg=reg, orth=orth, **options)
    residual = conv_layer(residual, 3, filters, f"{name}_second", strides=1, bn=bn, relu=False,
                          norm=norm, reg=reg, orth=orth, **options)
    if x.shape[-1] == filters and strides == 1:
        shortcut = x
    else:
        shortcut = conv_layer(x, 1, filters, f"{name}_shortcut", strides=strides, bn=True,
                              relu=False, norm="none", reg=True, orth=False)
    y = keras.layers.Add(name=f"{name}_add")([residual, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(y)


def build_resnet32(
    n_class=10,
    norm="linear",
    w_norm="none",
    reg=False,
    orth=True,
    widths=(96, 192, 384),
    units_per_stage=5,
    name="sphere_resnet32",
    input_shape=IMAGE_SHAPE,
    bn=True,
    sphere_norm=False,
    magnitude="none",
    rho="batch_mean",
    formulation="fast",
):
    """The original ResNet-32 for CIFAR-10+ (SphereResNet-32 or the plain ResNet-32).

    `root` (3x3 convolution, BN, ReLU), three stages of `units_per_stage` residual
    units (`block{s}_unit{i}`; stride 2 in unit 0 of stages 2 and 3), an 8x8 'valid'
    average pool and `score` (1x1 convolution with weight decay and `w_norm`).

    Args mirror `build_cnn9`; `norm`, `reg` and `orth` apply to `root` and to the
    `first`/`second` convolutions of every unit (shortcut convolutions are always
    plain with weight decay, as in the original).  `bn`, `sphere_norm`,
    `magnitude` and `rho` (beyond the original) and `formulation` apply to the same
    convolutions.
    """
    validate_option("build_resnet32", "norm", norm, NORMS)
    validate_option("build_resnet32", "w_norm", w_norm, W_NORMS)
    options = _conv_options("build_resnet32", norm, sphere_norm, magnitude, rho, formulation)
    images, x = _inputs(input_shape)
    x = conv_layer(x, 3, widths[0], "root", bn=bn, relu=True, norm=norm, reg=reg, orth=orth,
                   **options)
    for stage, width in enumerate(widths, start=1):
        for i in range(units_per_stage):
            strides = 2 if (stage > 1 and i == 0) else 1
            x = residual_unit(x, width, strides, f"block{stage}_unit{i}", norm, reg, orth,
                              bn=bn, **options)
    x = keras.layers.AveragePooling2D(8, 1, padding="valid", name="avg_pool")(x)
    score = conv_layer(
        x, 1, n_class, "score", bn=False, relu=False, padding="valid",
        norm="none", reg=True, orth=False, w_norm=w_norm, formulation=formulation,
    )
    return keras.Model(images, _logits(score), name=name)


def feature_model(model):
    """A model returning (logits, feature): the input of the `score` layer.

    The feature is fc6's output for the 9-layer nets and the pooled map for ResNets
    (the fixtures' `feature`).
    """
    score = model.get_layer("score")
    return keras.Model(model.inputs, [model.outputs[0], score.input], name=f"{model.name}_features")


#: The original's four networks, as its scripts define them: name -> (builder, settings).
#: The repository's settings files (`spherenet.py`, `baseline/baseline_cnn.py`,
#: `sphere_resnet/sphere_resnet_v1.py`, `sphere_resnet/baseline/baseline_resnet.py`)
#: build the same (tests/test_models.py checks it); this table is for code that needs
#: them by name (the self-check, the benchmarks).
ORIGINAL_NETWORKS = {
    "spherenet9": (build_cnn9, {"norm": "cosine", "reg": False, "orth": True}),
    "baseline_cnn": (build_cnn9, {"norm": "none", "reg": True, "orth": False}),
    "sphere_resnet32": (build_resnet32, {"norm": "linear", "reg": False, "orth": True}),
    "baseline_resnet32": (build_resnet32, {"norm": "none", "reg": True, "orth": False}),
}


def build_original(network, n_class=10, **overrides):
    """One of the original's four networks by name (`ORIGINAL_NETWORKS`), with its
    scripts' settings: logits [B, n_class] of float images 0..255, a model named after
    the network.

    `overrides` replace settings or pass other options of the builder, e.g. a variant
    of SphereNet-9 for the benchmarks: `build_original("spherenet9", norm="linear",
    name="spherenet9_linear")`.
    """
    if network not in ORIGINAL_NETWORKS:
        raise ValueError(
            f"Unknown network {network!r}. Allowed values are: {', '.join(map(repr, ORIGINAL_NETWORKS))}."
        )
    builder, settings = ORIGINAL_NETWORKS[network]
    return builder(n_class, **{"name": network, **settings, **overrides})
