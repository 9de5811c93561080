"""A training script like `train_spherenet.py` on a tiny SphereNet-9 (widths 8, 8, 16),
for the tests that run, kill and resume real training processes.

The loop, command line, log lines, checkpoints and distribution are those of every
training script (`spherenet_tf.training.main`); only the widths are small, so that a
subprocess run of a few iterations takes seconds on a CPU.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spherenet_tf import training  # noqa: E402
from spherenet_tf.models import build_cnn9  # noqa: E402

n_class = 10               # number of classes
batch_sz = 8               # training batch of one iteration
batch_test = 100           # batch size of the test-set evaluation
max_epoch = 12             # last iteration
lr = 1e-3                  # Adam learning rate
data_path = 'cifar10/'     # CIFAR-10 binary files or a tensorflow-datasets copy
model_file = 'models/'     # checkpoints, final.keras, settings.json and training.log
norm = 'cosine'            # SphereConv type
w_norm = 'none'            # score layer


def build_model(s):
    return build_cnn9(s.n_class, norm=s.norm, w_norm=s.w_norm, widths=(8, 8, 16), name="tiny9")


if __name__ == '__main__':
    training.main(globals(), build_model, __file__)
