"""SphereNet-9 with cosine SphereConv and the standard softmax loss, on CIFAR-100.

The default `spherenet.py` network (cosine SphereConv, softmax) trained on CIFAR-100's
100 fine labels with train_spherenet.py's settings (batch 128, Adam 1e-3, 64,000
iterations, flip augmentation): the paper "Deep Hyperspherical Learning" also
evaluates SphereNets on CIFAR-100, but the original repository ships no CIFAR-100 code,
setting or log, so no published figure is known for this exact setup and none is
expected here; compare against the baseline CNN-9 trained the same way
(`cd baseline && python train_baseline.py --dataset cifar100`).

Differs from the default `spherenet.py` in: dataset.

    ./dataset_setup.sh --dataset cifar100                  # once, needs internet
    python examples/spherenet_cos_cifar100.py             # train (n_class 100, data in cifar100/)
    python examples/spherenet_cos_cifar100.py --help
"""

dataset = 'cifar100'         # CIFAR-100: 100 fine labels (n_class follows)
norm = 'cosine'              # SphereConv of conv1_0..fc6: cosine, g(theta) = cos(theta)
w_norm = 'none'              # score layer: standard softmax
widths = (128, 192, 256)     # filters of the three stages (as spherenet.py)
fc6_bn = False               # BatchNorm after fc6: none (as spherenet.py)

if __name__ == '__main__':
    import _run

    _run.train(globals(), __file__)
