"""SphereNet-9 with linear SphereConv and the standard softmax loss.

Reproduces the original README row "SphereNet with linear SphereConv and standard softmax loss: 91.65%"
and the original log `results/spherenet_linear_standard_training.log`.
Expected best test accuracy: 91.65 % (iteration 41000; 91.16 % at 64000; 80 % first reached at iteration 3000).

Differs from the default `spherenet.py` in: norm.

    python examples/spherenet_linear_standard.py             # train, with train_spherenet.py's settings and options
    python examples/spherenet_linear_standard.py --help
    # or copy the four settings below over those in spherenet.py and run train_spherenet.py
"""

norm = 'linear'              # SphereConv of conv1_0..fc6: linear, g(theta) = 1 - 0.63662 theta
w_norm = 'none'              # score layer: standard softmax loss
widths = (128, 192, 256)     # filters of the three stages (as spherenet.py)
fc6_bn = False               # BatchNorm after fc6: none (as spherenet.py)

if __name__ == '__main__':
    import _run

    _run.train(globals(), __file__)
