"""Reproduce the original README's results table: every row trained on your GPUs, compared.

    python reproduce.py                          # all eight rows, one run per GPU at a time
    python reproduce.py --rows cnn9,spherenet9_cosine --dry_run   # the plan of two rows
    python reproduce.py --list                   # the rows and their commands
    python reproduce.py --report                 # the comparison so far (any time)
    python reproduce.py -- --max_epoch 4000      # settings after `--` go to every run

Each row runs its script as you would by hand, `python <script> --model_file runs/<row>/`
(from the repository root), with its own training.log in runs/<row>/.  Started again,
finished rows are skipped and the others continue from their newest checkpoint.  At the
end: runs/report.md, the best and final test accuracy of each row beside the original's
logs (results/, sphere_resnet/results/; a row more than 0.5 points below the original's
best is marked), and runs/<row>/comparison.png.  docs/reproducing.md has the details.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # as the training scripts: no TF info lines

import compare_runs  # noqa: E402
from spherenet_tf.reproduce import Row, main  # noqa: E402

# ---- the rows: the original README's table (README.md, "Results") ------------------
ROWS = [
    # the baseline CNN-9 (plain convolutions, softmax): 90.86 best, 90.61 at 64k
    Row("cnn9", "Baseline CNN-9", "baseline/train_baseline.py",
        "results/baseline_training.log"),
    # SphereNet-9, cosine SphereConv, softmax (train_spherenet.py's defaults): 91.31 / 91.29
    Row("spherenet9_cosine", "SphereNet-9 cosine", "train_spherenet.py",
        "results/spherenet_cos_standard_training.log"),
    # SphereNet-9, linear SphereConv, softmax: 91.65 / 91.16
    Row("spherenet9_linear", "SphereNet-9 linear", "examples/spherenet_linear_standard.py",
        "results/spherenet_linear_standard_training.log"),
    # SphereNet-9, sigmoid SphereConv (k = 0.3), softmax: 91.81 / 91.40
    Row("spherenet9_sigmoid", "SphereNet-9 sigmoid", "examples/spherenet_sigmoid_standard.py",
        "results/spherenet_sigmoid_standard_training.log"),
    # SphereNet-9, learnable sigmoid SphereConv, softmax: 91.66 / 91.32
    Row("spherenet9_lr_sigmoid", "SphereNet-9 learnable sigmoid",
        "examples/spherenet_lr_sigmoid_standard.py",
        "results/spherenet_lr_sigmoid_standard_training.log"),
    # SphereNet-9, cosine SphereConv, weight-normalised softmax: 91.44 / 91.22
    Row("spherenet9_cosine_wnsoftmax", "SphereNet-9 cosine + weight-normalised softmax",
        "examples/spherenet_cos_wnsoftmax.py", "results/spherenet_cos_wnsoftmax_training.log"),
    # ResNet-32 on CIFAR-10+ (pad-and-crop augmentation): 93.09 / 92.99
    Row("resnet32", "ResNet-32 (CIFAR-10+)", "sphere_resnet/baseline/train_baseline.py",
        "sphere_resnet/results/baseline_resnet.log"),
    # SphereResNet-32, linear SphereConv, CIFAR-10+: 94.68 / 94.63
    Row("sphere_resnet32_linear", "SphereResNet-32 linear (CIFAR-10+)",
        "sphere_resnet/train_sphere_resnet.py", "sphere_resnet/results/linear_sphereconv_resnet.log"),
]

if __name__ == "__main__":
    sys.exit(main(ROWS, compare_runs, repo=os.path.dirname(os.path.abspath(__file__)),
                  description=__doc__.split("\n")[0]))
