"""Generalised angular softmax (GA-Softmax) with an angular margin (beyond the original repo).

"Deep Hyperspherical Learning", Liu et al., NIPS 2017 (arXiv:1711.03189), section on
the learning objective: under SphereConv the natural classifier logit is
|x| g(theta_j), with theta_j the angle between the feature x and the class weight
w_j and g the SphereConv's angular function ('linear', 'cosine', 'sigmoid').  The
original repository provides these logits only as the score layer's `w_norm`
(`w_norm='cosine'` is the weight-normalised softmax); it has no margin.

With a margin m >= 1 the target class y gets the harder logit |x| psi(theta_y)
(as in L-Softmax / SphereFace, Liu et al. 2016 / 2017), the other classes keep
|x| g(theta_j):

    psi(theta) = g(m theta), made monotonically decreasing over [0, pi]:

* 'linear':  1 - 0.63662 m theta   (g(m theta) itself: decreasing for every theta)
* 'cosine':  (-1)^k cos(m theta) - 2k,  k = floor(m theta / pi)
  (SphereFace's piecewise extension; continuous, also for non-integer m)
* 'sigmoid': g(m theta - k pi) - 2k, the same extension: g(m theta) alone
  saturates at -C(k) beyond m theta = pi (flat to float precision from about
  m theta = 3 pi with k = 0.3), which would take the gradient away from badly
  classified samples; the extension is continuous because g(pi) = -1 = g(0) - 2.

m = 1 gives psi = g: the plain GA-softmax, and with g = 'cosine' the original's
weight-normalised softmax -- here the margin step is skipped altogether at m = 1,
so the loss is bit for bit the one computed from the score layer's logits.
Prediction and accuracy always use the margin-free logits |x| g(theta_j).

Two ways to use it:

* training scripts: `python train_spherenet.py --loss ga_softmax --margin 1.5
  --w_norm linear` (g is the score layer's `w_norm`; see `margin_forward`);
* Keras: the `GASoftmaxScore` layer returns the margin-free logits, or the margin
  logits when given the labels, for `Loss2()` (or any cross entropy on logits).
"""

import math

import keras
import numpy as np
from keras import ops

from . import formulas, portable_ops
from .layers import SphereConv2D, original_kernel_initializer, validate_option

#: The angular functions g of the GA-softmax logit |x| g(theta).
G_FUNCTIONS = ("linear", "cosine", "sigmoid")
#: Loss choices of the training scripts.
LOSSES = ("loss2", "ga_softmax")


def validate_margin(where, margin):
    """`margin` as a float >= 1, or a ValueError saying what was received."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.floating, np.integer)) \
            or not math.isfinite(margin) or margin < 1:
        raise ValueError(
            f"{where}: the angular margin must be a number >= 1 (1 = no margin; SphereFace "
            f"uses 4, A-Softmax-style margins are typically 1.5 to 4). Received: margin={margin!r}."
        )
    return float(margin)


def psi(theta, g, margin):
    """The target-class function psi(theta) = g(m theta), monotonically decreasing on [0, pi].

    `theta` in radians (a tensor); `g` one of `G_FUNCTIONS`; `margin` >= 1.
    """
    g = validate_option("psi", "g", g, G_FUNCTIONS)
    margin = validate_margin("psi", margin)
    m_theta = margin * theta
    if g == "linear":
        return formulas.g_of_theta(m_theta, "linear")
    # The piece index k is constant (no gradient); within a piece psi is smooth.
    piece = ops.stop_gradient(ops.floor(m_theta / np.pi))
    if g == "sigmoid":
        return formulas.g_of_theta(m_theta - np.pi * piece, "sigmoid") - 2.0 * piece
    sign = 1.0 - 2.0 * ops.mod(piece, 2.0)  # (-1)^k
    return sign * ops.cos(m_theta) - 2.0 * piece


def margin_logits(logits, xnorm, cos, labels, g, margin):
    """The logits the GA-softmax loss is computed on.

    Args:
      logits: margin-free logits |x| g(theta_j), [B, n_class] (the model's output).
      xnorm: |x|, [B, 1] or [B].
      cos: cos(theta_j), [B, n_class].
      labels: integer class ids, [B].
      g, margin: the angular function and the margin m >= 1.

    Returns `logits` itself when m = 1 (psi = g), else `logits` with the target
    column replaced by |x| psi(theta_y).
    """
    margin = validate_margin("margin_logits", margin)
    if margin == 1.0:
        return logits
    logits = ops.convert_to_tensor(logits)
    n_class = logits.shape[-1]
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    onehot = ops.one_hot(labels, n_class, dtype="float32") > 0.5
    cos_y = ops.take_along_axis(ops.cast(cos, "float32"), labels[:, None], axis=1)[:, 0]
    xnorm = ops.reshape(ops.cast(xnorm, "float32"), (-1,))
    target = xnorm * psi(formulas.safe_acos(cos_y), g, margin)
    return ops.where(onehot, ops.cast(target[:, None], logits.dtype), logits)


def sphere_conv_cosines(layer, inputs):
    """(|x|, cos theta) of a SphereConv2D score layer on its input, flattened to
    [B] and [B, filters] (the layer must produce one position, e.g. 1x1 on [B,1,1,C])."""
    inputs = ops.cast(inputs, "float32")
    kernel = ops.cast(layer.kernel, "float32")
    conv = keras.layers.Conv2D.convolution_op(layer, inputs, kernel)
    xnorm = layer.patch_norm(inputs)
    wnorm = layer.filter_norm(kernel)
    cos = conv / xnorm / wnorm
    return ops.reshape(xnorm, (-1,)), ops.reshape(cos, (-1, layer.filters))


def margin_forward(model, margin, score_name="score"):
    """The training-loop hook of `--loss ga_softmax`: a function
    `(images, labels) -> (logits, margin_logits)` for `model`.

    `logits` is the model's own (margin-free) output, for accuracy and prediction;
    `margin_logits` those with the target logit |x| psi(theta_y), for the loss.  The
    classifier must be a SphereConv2D named `score_name` with a weight-normalised
    `w_norm` (its g), as in every model of this port.
    """
    margin = validate_margin("--margin", margin)
    try:
        score = model.get_layer(score_name)
    except ValueError:
        score = None
    if not isinstance(score, SphereConv2D):
        raise ValueError(
            f"--loss ga_softmax needs the model's classifier to be a SphereConv2D layer named "
            f"{score_name!r}; model {model.name!r} has none. Build the model with this port's "
            f"builders, or use the GASoftmaxScore layer."
        )
    if score.w_norm not in G_FUNCTIONS:
        raise ValueError(
            f"--loss ga_softmax needs a weight-normalised score layer: its logit is "
            f"|x| g(theta) with g the score's w_norm, one of {', '.join(G_FUNCTIONS)}. "
            f"Received: w_norm={score.w_norm!r}. Add e.g. --w_norm cosine."
        )
    g = score.w_norm
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    with_feature = keras.Model(inputs, [model.outputs[0], score.input],
                               name=f"{model.name}_ga_softmax")

    def forward(images, labels, training=True):
        logits, feature = with_feature(images, training=training)
        if margin == 1.0:
            return logits, logits
        xnorm, cos = sphere_conv_cosines(score, feature)
        return logits, margin_logits(logits, xnorm, cos, labels, g, margin)

    return forward


@keras.saving.register_keras_serializable(package="SphereNet")
class GASoftmaxScore(keras.layers.Layer):
    """Classifier layer of the generalised angular softmax, with an optional margin.

    `layer(features)` returns the margin-free logits |x| g(theta_j) (prediction,
    accuracy); `layer(features, labels)` returns the margin logits, with the target
    class's logit |x| psi(theta_y), psi(theta) = g(m theta) made decreasing on
    [0, pi] (see the module docstring).  Feed those to `Loss2()` or any cross
    entropy on logits.  With g = 'cosine' and m = 1 both are x.w_j / |w_j|, the
    weight-normalised softmax logits (the original's `w_norm='cosine'`).

    Reference: Liu et al., "Deep Hyperspherical Learning", NIPS 2017
    (arXiv:1711.03189), generalised angular softmax loss; margin as in SphereFace
    (Liu et al., CVPR 2017).  Same arithmetic as `SphereConv2D(w_norm=g)`: |x| and
    |w| carry the 1e-4 under the square root, no bias.

    Args:
      units: number of classes.
      g: 'linear', 'cosine' or 'sigmoid'.
      margin: m >= 1 (1 = no margin).
      kernel_initializer: default N(0, sqrt(2 / C)), the original's.
      kernel_regularizer: e.g. `L2Loss(5e-4)` (the original's score weight decay).

    Input shape: [batch, C] features (and [batch] integer labels).
    Output shape: [batch, units].

    Example:

    >>> features = keras.Input((2,)); labels = keras.Input((), dtype="int32")
    >>> head = GASoftmaxScore(10, g="cosine", margin=1.5)
    >>> train_model = keras.Model([features, labels], head(features, labels))
    >>> predict_model = keras.Model(features, head(features))
    """

    def __init__(self, units, g="cosine", margin=1.0, kernel_initializer=None,
                 kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        name = type(self).__name__
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"{name}: `units` must be a positive integer. Received: units={units!r}.")
        self.units = int(units)
        self.g = validate_option(name, "g", g, G_FUNCTIONS)
        self.margin = validate_margin(name, margin)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or original_kernel_initializer())
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.kernel = None

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} expects features of shape [batch, C] with C known. "
                f"Received: input_shape={tuple(input_shape)}. Flatten the features first."
            )
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], self.units),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
        )

    def angles(self, features):
        """(|x| [B, 1], cos theta [B, units], margin-free logits [B, units])."""
        x = ops.cast(features, "float32")
        w = ops.cast(self.kernel, "float32")
        dot = ops.matmul(x, w)
        xnorm = portable_ops.vector_norm(x, axis=-1, keepdims=True)
        wnorm = portable_ops.vector_norm(w, axis=0)
        logits = formulas.sphere_response(dot, xnorm, wnorm, norm="none", w_norm=self.g)
        return xnorm, dot / xnorm / wnorm, logits

    def call(self, features, labels=None):
        xnorm, cos, logits = self.angles(features)
        if labels is not None:
            logits = margin_logits(logits, xnorm, cos, labels, self.g, self.margin)
        return ops.cast(logits, self.compute_dtype)

    def compute_output_shape(self, features_shape, labels_shape=None):
        return (features_shape[0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units, "g": self.g, "margin": self.margin,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        })
        return config
