"""ResNet-32 baseline for CIFAR-10+: the network of the original
`sphere_resnet/baseline/baseline_resnet.py`.

The same architecture as `../sphere_resnet_v1.py` with plain convolutions: every
filter has weight decay (5e-4 * l2_loss) and none has the orthogonality constraint.
"""

from spherenet_tf.models import build_resnet32


def build_baseline_resnet(n_class=10):
    """The baseline ResNet-32 as a Keras functional model: float images 0..255 -> logits."""
    return build_resnet32(n_class, norm="none", w_norm="none", reg=True, orth=False,
                          name="baseline_resnet32")
