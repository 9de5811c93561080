"""SphereNet-9 on CIFAR-10: the network of the original `spherenet.py`.

"Deep Hyperspherical Learning", Liu et al., NIPS 2017 (arXiv:1711.03189).  Nine
SphereConv layers (three stages of 128, 192 and 256 filters with BN and ReLU, a
4x4 `fc6`) and a plain 1x1 `score` layer; orthogonality constraint on every
SphereConv, weight decay on `score` and on the BN parameters.

As the original README says: to change the type of SphereConv, change `norm`
below; to use a weight-normalised softmax, change `w_norm`.  The training script
also accepts `--norm` / `--w_norm` without editing this file.
"""

from spherenet_tf import SphereConv2D  # noqa: F401  (`from spherenet import SphereConv2D`)
from spherenet_tf.models import build_cnn9

# SphereConv type of conv1_0 ... fc6:
#   'none'       plain convolution (the network becomes a standard CNN)
#   'linear'     linear SphereConv      g(theta) = 1 - 0.63662 theta
#   'cosine'     cosine SphereConv      g(theta) = cos(theta)        (default)
#   'sigmoid'    sigmoid SphereConv     k = 0.3
#   'lr_sigmoid' learnable sigmoid SphereConv (one k per filter)
norm = 'cosine'
# Score layer: 'none' = standard softmax loss; 'cosine' = weight-normalised softmax
# (|x| cos theta); 'linear' / 'sigmoid' = generalised angular softmax (|x| g(theta)).
w_norm = 'none'
# Filters of the three stages (the original's examples/ use 196 in stage 2).
widths = (128, 192, 256)
# BatchNorm after fc6 (the original's examples/ have it; spherenet.py does not).
fc6_bn = False
# Beyond the original (docs/beyond.md); the defaults are the original's.
# SphereNorm: cosine SphereConv with learnable rescaling towards the convolution.
sphere_norm = False
# BatchNorm after conv1_0 ... conv3_2 (set False e.g. with sphere_norm = True).
bn = True
# Decoupled operator h(|x|) g(theta) of conv1_0 ... fc6: 'none' (SphereConv), 'ball',
# 'tanh', 'linear', 'seg', 'log' (Liu et al., "Decoupled Networks", CVPR 2018).
magnitude = 'none'


def build_spherenet(n_class=10, norm=norm, w_norm=w_norm, widths=widths, fc6_bn=fc6_bn,
                    sphere_norm=sphere_norm, bn=bn, magnitude=magnitude):
    """SphereNet-9 as a Keras functional model: float images 0..255 -> logits [B, n_class]."""
    return build_cnn9(
        n_class, norm=norm, w_norm=w_norm, reg=False, orth=True,
        widths=widths, fc6_bn=fc6_bn, name="spherenet9",
        bn=bn, sphere_norm=sphere_norm, magnitude=magnitude,
    )
