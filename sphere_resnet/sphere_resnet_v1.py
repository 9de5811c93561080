"""SphereResNet-32 for CIFAR-10+: the network of the original `sphere_resnet/sphere_resnet_v1.py`.

"Deep Hyperspherical Learning", Liu et al., NIPS 2017 (arXiv:1711.03189), the
SphereResNet experiments.  `root` (3x3 SphereConv, 96 filters, BN, ReLU), then three
stages of five residual units (96, 192, 384 filters; stride 2 entering stages 2 and 3)
whose two 3x3 convolutions are linear SphereConvs with the orthogonality constraint;
shortcuts that change width are plain 1x1 convolutions with weight decay.  8x8 average
pool, then the plain 1x1 `score` layer.

Change `norm` / `w_norm` below as in `../spherenet.py`.
"""

from spherenet_tf.models import build_resnet32

# SphereConv type of `root` and of every unit's `first`/`second` convolution (the
# original's default is linear); values as in spherenet.py.
norm = 'linear'
# Score layer: 'none' = standard softmax loss, 'cosine' = weight-normalised softmax.
w_norm = 'none'


def build_sphere_resnet(n_class=10, norm=norm, w_norm=w_norm):
    """SphereResNet-32 as a Keras functional model: float images 0..255 -> logits [B, n_class]."""
    return build_resnet32(n_class, norm=norm, w_norm=w_norm, reg=False, orth=True,
                          name="sphere_resnet32")
