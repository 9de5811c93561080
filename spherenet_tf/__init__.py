"""Shared code of the SphereNet TF2/Keras port (layers, losses, models, data, training).

"Deep Hyperspherical Learning", Liu et al., NIPS 2017 (arXiv:1711.03189); a port of
the TF1 reference code wy1iu/SphereNet.
"""

__version__ = "1.0.0"

from .layers import SphereConv2D, batch_norm, conv_layer, sphere_conv_layers
from .losses import Loss2, loss2
from .regularizers import (
    L2Loss,
    OrthogonalityRegularizer,
    orthogonality_loss,
    orthogonality_losses,
    regularization_terms,
    weight_decay_losses,
)

# Beyond the original repository (imported here so that .keras files using them load).
from .ga_softmax import GASoftmaxScore
from .sphere_norm import SphereNorm2D

__all__ = [
    "__version__",
    "SphereConv2D",
    "batch_norm",
    "conv_layer",
    "orthogonality_losses",
    "regularization_terms",
    "sphere_conv_layers",
    "weight_decay_losses",
    "Loss2",
    "loss2",
    "L2Loss",
    "OrthogonalityRegularizer",
    "orthogonality_loss",
    "GASoftmaxScore",
    "SphereNorm2D",
]
