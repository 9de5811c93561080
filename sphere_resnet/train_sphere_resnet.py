"""Train SphereResNet-32 on CIFAR-10+: the original `sphere_resnet/train_sphere_resnet.py`.

    cd sphere_resnet && python train_sphere_resnet.py   # as in the original README
    python sphere_resnet/train_sphere_resnet.py --help

CIFAR-10+ augmentation (4-pixel symmetric padding, random 32x32 crop, random flip); the
same schedule and log lines as `../train_spherenet.py`.  The original writes
`max_epoch = 64001` and loops `range(max_epoch)`; here, as in every script of the port,
`max_epoch` is the last iteration: the same 64001 iterations.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TF's C++ info lines out of the log

import sphere_resnet_v1  # noqa: E402
from spherenet_tf import training  # noqa: E402

# ---- settings (each can be overridden on the command line: --lr 1e-4) ----------
n_class = 10                     # number of classes
batch_sz = 128                   # training batch of one iteration (shared by all replicas)
batch_test = 100                 # batch size of the test-set evaluation
max_epoch = 64000                # last iteration (iterations, not epochs): runs 0..max_epoch
lr = 1e-3                        # Adam learning rate; /10 from iteration 34000 and from 54000
data_path = '../cifar10/'        # CIFAR-10 (relative to this folder, as in the original)
model_file = 'models/'           # checkpoints, final.keras, settings.json and training.log
norm = sphere_resnet_v1.norm     # SphereConv type (see sphere_resnet_v1.py)
w_norm = sphere_resnet_v1.w_norm # score layer: 'none' = softmax, 'cosine' = weight-normalised
augmentation = 'cifar10plus'     # CIFAR-10+: symmetric 4-pixel pad, random 32x32 crop, flip


def build_model(s):
    return sphere_resnet_v1.build_sphere_resnet(s.n_class, norm=s.norm, w_norm=s.w_norm)


if __name__ == '__main__':
    training.main(globals(), build_model, __file__, description=__doc__.split("\n")[0])
