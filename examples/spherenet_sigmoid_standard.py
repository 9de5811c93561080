"""SphereNet-9 with sigmoid SphereConv (k = 0.3) and the standard softmax loss.

Reproduces the original README row "SphereNet with sigmoid SphereConv and standard softmax loss: 91.81%"
and the original log `results/spherenet_sigmoid_standard_training.log`.
Expected best test accuracy: 91.81 % (iteration 36000; 91.40 % at 64000; 80 % first reached at iteration 4500).

Differs from the default `spherenet.py` in: norm.

    python examples/spherenet_sigmoid_standard.py             # train, with train_spherenet.py's settings and options
    python examples/spherenet_sigmoid_standard.py --help
    # or copy the four settings below over those in spherenet.py and run train_spherenet.py
"""

norm = 'sigmoid'             # SphereConv of conv1_0..fc6: sigmoid, k = 0.3
w_norm = 'none'              # score layer: standard softmax loss
widths = (128, 192, 256)     # filters of the three stages (as spherenet.py)
fc6_bn = False               # BatchNorm after fc6: none (as spherenet.py)

if __name__ == '__main__':
    import _run

    _run.train(globals(), __file__)
