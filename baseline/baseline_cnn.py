"""Baseline CNN-9: the network of the original `baseline/baseline_cnn.py`.

The same nine layers as SphereNet-9 (`../spherenet.py`) but with plain
convolutions: every filter has weight decay (5e-4 * l2_loss) and none has the
orthogonality constraint.
"""

from spherenet_tf.models import build_cnn9


def build_baseline_cnn(n_class=10):
    """The baseline CNN-9 as a Keras functional model: float images 0..255 -> logits."""
    return build_cnn9(
        n_class, norm="none", w_norm="none", reg=True, orth=False, name="baseline_cnn"
    )
