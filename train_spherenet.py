"""Train SphereNet-9 on CIFAR-10: the original `train_spherenet.py`.

    python train_spherenet.py                       # the original's run (64001 iterations)
    python train_spherenet.py --norm linear         # any setting below, without editing
    python train_spherenet.py --loss ga_softmax --margin 1.5 --w_norm linear   # beyond the original
    python train_spherenet.py --help

Prints the original's lines (`====iteration_...` every 100 iterations,
`++++iteration_...: test acc=...` every 500) and writes them to model_file/training.log;
checkpoints model_file/16000, 32000, ... and model_file/final.keras.  A killed run
continues where it stopped when started again with the same command.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TF's C++ info lines out of the log

import spherenet  # noqa: E402
from spherenet_tf import training  # noqa: E402

# ---- settings (each can be overridden on the command line: --lr 1e-4) ----------
n_class = 10               # number of classes
batch_sz = 128             # training batch of one iteration (shared by all replicas)
batch_test = 100           # batch size of the test-set evaluation
max_epoch = 64000          # last iteration (iterations, not epochs): runs 0..max_epoch
lr = 1e-3                  # Adam learning rate; /10 from iteration 34000 and from 54000
data_path = 'cifar10/'     # CIFAR-10: the original's binary files or a tensorflow-datasets copy
model_file = 'models/'     # checkpoints, final.keras, settings.json and training.log
norm = spherenet.norm      # SphereConv type of conv1_0..fc6 (see spherenet.py)
w_norm = spherenet.w_norm  # score layer: 'none' = softmax, 'cosine' = weight-normalised
augmentation = 'flip'      # training augmentation: random left-right flip, as the original


def build_model(s):
    return spherenet.build_spherenet(s.n_class, norm=s.norm, w_norm=s.w_norm)


if __name__ == '__main__':
    training.main(globals(), build_model, __file__, description=__doc__.split("\n")[0])
