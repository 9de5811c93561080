"""Train the baseline CNN-9 on CIFAR-10: the original `baseline/train_baseline.py`.

    cd baseline && python train_baseline.py        # as in the original README
    python baseline/train_baseline.py --help       # from anywhere

Same schedule and log lines as `../train_spherenet.py` (without `orth=`: the baseline
has no orthogonality constraint).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TF's C++ info lines out of the log

from baseline_cnn import build_baseline_cnn  # noqa: E402
from spherenet_tf import training  # noqa: E402

# ---- settings (each can be overridden on the command line: --lr 1e-4) ----------
n_class = 10                    # number of classes
batch_sz = 128                  # training batch of one iteration (shared by all replicas)
batch_test = 100                # batch size of the test-set evaluation
max_epoch = 64000               # last iteration (iterations, not epochs): runs 0..max_epoch
lr = 1e-3                       # Adam learning rate; /10 from iteration 34000 and from 54000
data_path = '../cifar10/'       # CIFAR-10 (relative to this folder, as in the original)
model_file = 'baseline_models/' # checkpoints, final.keras, settings.json and training.log
augmentation = 'flip'           # training augmentation: random left-right flip, as the original


def build_model(s):
    return build_baseline_cnn(s.n_class)


if __name__ == '__main__':
    training.main(globals(), build_model, __file__, description=__doc__.split("\n")[0])
