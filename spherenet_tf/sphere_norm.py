"""SphereNorm: SphereConv with learnable rescaling factors (beyond the original repo).

"Deep Hyperspherical Learning", Liu et al., NIPS 2017 (arXiv:1711.03189) introduces
SphereNorm, "hyperspherical learning as a normalization method".  The original
repository ships no SphereNorm code; its README describes it in one sentence: "By
adding rescaling factors to SphereConv and make them learnable in order for the
SphereNorm to degrade to the original convolution, we present a new normalization
technique, SphereNorm. SphereNorm does not contradict with the BatchNorm, and can be
used either with or without BatchNorm."

The paper's own equations for SphereNorm could not be consulted when this was
written (no copy of the paper's body was reachable), so this module implements the
smallest form that meets that description, and says so (docs/beyond.md):

    y = |x|^alpha * |w|^beta * cos(theta)
      = (w . x) / |x|^(1 - alpha) / |w|^(1 - beta)

with |x| and |w| the SphereConv patch and filter norms (1e-4 under the square root,
as everywhere in SphereNet) and alpha, beta learnable per filter, kept in [0, 1]:

* alpha = beta = 0 (the initial value): the cosine SphereConv, outputs in [-1, 1]
  whatever the scale of the input -- the normalising effect;
* alpha = beta = 1: exactly the original convolution w . x (the division is by
  |x|^0 = |w|^0 = 1, so the result is bit for bit a plain convolution);
* in between, a learned compromise, per filter.

Because the output is bounded at initialisation, SphereNorm layers can be stacked
without BatchNorm; with BatchNorm after them they are simply convolutions with a
learnable normalisation.  `models.build_cnn9(sphere_norm=True, bn=...)` and
`models.build_resnet32(...)` use it either way.
"""

import keras
from keras import ops

from .layers import SphereConv2D

#: Initial value of both exponents: start as the cosine SphereConv.
SPHERE_NORM_INIT = 0.0


@keras.saving.register_keras_serializable(package="SphereNet")
class UnitInterval(keras.constraints.Constraint):
    """Clips a weight into [0, 1] after every optimizer step."""

    def __call__(self, w):
        return ops.clip(w, 0.0, 1.0)

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="SphereNet")
class SphereNorm2D(SphereConv2D):
    """SphereNorm: (w . x) / |x|^(1 - alpha) / |w|^(1 - beta), alpha and beta learnable.

    A cosine SphereConv (alpha = beta = 0, the initial value) that can learn, filter
    by filter, to become the original convolution (alpha = beta = 1).  See the
    module docstring for the definition and why it is this one.

    Reference: Liu et al., "Deep Hyperspherical Learning", NIPS 2017
    (arXiv:1711.03189), SphereNorm; form described in the README of wy1iu/SphereNet.

    Args:
      filters, kernel_size, strides, padding, orth, **kwargs: as `SphereConv2D`
        (weight decay, constraints, names ...).  `norm` may only be 'cosine' (the
        default), the angular function for which a fall-back to the convolution
        exists; `w_norm` and `magnitude` are not available.
      alpha_init, beta_init: initial exponents, in [0, 1] (default 0: SphereConv).
      trainable_exponents: learn alpha and beta (default True); False keeps them
        at their initial values (e.g. 1, 1 for a plain convolution).

    Weights: `kernel` [k, k, C_in, filters], `alpha` [filters], `beta` [filters].
    Exponents are clipped into [0, 1] by a constraint after each optimizer step.

    Example:

    >>> layer = SphereNorm2D(64, 3, orth=True)
    >>> y = layer(keras.random.normal((2, 32, 32, 3)))  # in [-1, 1] at initialisation
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", norm="cosine",
                 alpha_init=SPHERE_NORM_INIT, beta_init=SPHERE_NORM_INIT,
                 trainable_exponents=True, **kwargs):
        name = type(self).__name__
        if norm != "cosine":
            raise ValueError(
                f"{name} is built on the cosine SphereConv (the only angular function for "
                f"which rescaling by the norms gives back the convolution). Received: "
                f"norm={norm!r}. Use norm='cosine', or SphereConv2D for other angular functions."
            )
        for option, allowed in (("w_norm", "none"), ("magnitude", "none")):
            if kwargs.get(option, allowed) != allowed:
                raise ValueError(
                    f"{name} does not take `{option}` (it has its own rescaling). Received: "
                    f"{option}={kwargs[option]!r}. Use SphereConv2D for {option}."
                )
            kwargs.pop(option, None)
        kwargs.pop("rho", None)
        for arg, value in (("alpha_init", alpha_init), ("beta_init", beta_init)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"Invalid value for `{arg}` argument of {name}: expected a number in "
                    f"[0, 1] (0 = SphereConv, 1 = plain convolution). Received: {arg}={value!r}."
                )
        if not isinstance(trainable_exponents, bool):
            raise ValueError(
                f"Invalid value for `trainable_exponents` argument of {name}: expected True or "
                f"False. Received: trainable_exponents={trainable_exponents!r}."
            )
        super().__init__(filters, kernel_size, strides=strides, padding=padding, norm="cosine",
                         **kwargs)
        self.alpha_init = float(alpha_init)
        self.beta_init = float(beta_init)
        self.trainable_exponents = trainable_exponents
        self.alpha = None
        self.beta = None

    def build(self, input_shape):
        super().build(input_shape)
        for attr, init in (("alpha", self.alpha_init), ("beta", self.beta_init)):
            setattr(self, attr, self.add_weight(
                name=attr,
                shape=(self.filters,),
                initializer=keras.initializers.Constant(init),
                constraint=UnitInterval(),
                trainable=self.trainable_exponents,
                dtype=self.dtype,
            ))

    def convolution_op(self, inputs, kernel):
        # The plain convolution of keras.layers.Conv2D, not SphereConv2D's, in the compute
        # dtype (SphereConv2D turns autocasting off and casts in its own convolution_op).
        inputs = ops.cast(inputs, self.compute_dtype)
        kernel = ops.cast(kernel, self.compute_dtype)
        conv = keras.layers.Conv2D.convolution_op(self, inputs, kernel)
        xnorm = self.patch_norm(inputs)
        wnorm = self.filter_norm(kernel)
        alpha = ops.cast(self.alpha, "float32")
        beta = ops.cast(self.beta, "float32")
        out = sphere_norm_response(ops.cast(conv, "float32"), xnorm, wnorm, alpha, beta)
        return ops.cast(out, conv.dtype)

    def _saved_variables(self):
        return super()._saved_variables() + [self.alpha, self.beta]

    def get_config(self):
        config = super().get_config()
        for key in ("w_norm", "magnitude", "rho"):
            config.pop(key, None)
        config.update({"alpha_init": self.alpha_init, "beta_init": self.beta_init,
                       "trainable_exponents": self.trainable_exponents})
        return config


def sphere_norm_response(conv, xnorm, wnorm, alpha, beta):
    """conv / xnorm^(1 - alpha) / wnorm^(1 - beta), divided in SphereConv's order.

    At alpha = beta = 1 both powers are exactly 1 (x^0 = 1), so this returns `conv`
    unchanged; at alpha = beta = 0 it is the cosine SphereConv conv / xnorm / wnorm.
    """
    return conv / ops.power(xnorm, 1.0 - alpha) / ops.power(wnorm, 1.0 - beta)
